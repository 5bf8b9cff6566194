"""net.dicomweb against a misbehaving server: every bad answer is a DicomWebError, never a crash.

The server is a real HTTP server on 127.0.0.1 (Python's http.server in a thread) that
answers each instance URL in its own bad way: 500, a body that is not DICOM, HTML, a
body larger than the limit (declared or chunked), no answer in time, another instance.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from io import BytesIO
from pathlib import Path

import pytest
from netsupport import LOOPBACK, free_port

from mammotriage.net.dicomweb import (
    DicomWebArchive,
    DicomWebError,
    InstanceCache,
    StableStudyWatcher,
)
from mtsupport import make_mg_dataset

STUDY, SERIES = "1.1", "1.2"
LIMIT = 64 * 1024
BOUNDARY = "mtboundary"


def dicom_bytes(sop_uid: str) -> bytes:
    ds = make_mg_dataset(study_uid=STUDY)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.SeriesInstanceUID = SERIES
    out = BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def multipart(data: bytes) -> bytes:
    return (f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode() + data
            + f"\r\n--{BOUNDARY}--\r\n".encode())


#: The Accept-Encoding of each instance request, by SOP Instance UID.
ENCODINGS: dict[str, str | None] = {}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:
        pass

    def reply(self, code: int, body: bytes, content_type: str, length: int | None = None) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        self.end_headers()
        with contextlib.suppress(OSError):  # the client gave up first (the slow answer)
            self.wfile.write(body)

    def do_GET(self) -> None:
        path = self.path.split("?")[0]
        instance = path.rsplit("/", 1)[-1]
        ENCODINGS[instance] = self.headers.get("Accept-Encoding")
        related = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'
        if path == "/dicom-web/studies":
            self.reply(200, b"<html>not json</html>", "application/dicom+json")
        elif path == f"/dicom-web/studies/{STUDY}/instances":
            records = [{"0020000D": {"vr": "UI", "Value": [STUDY]}, "0020000E": {"vr": "UI", "Value": [SERIES]},
                        "00080018": {"vr": "UI", "Value": [sop]}} for sop in ("1.6000", "1.500")]
            records.append({"00080018": {"vr": "UI", "Value": ["not/a/uid"]}})  # skipped, not fatal
            self.reply(200, json.dumps(records).encode(), "application/dicom+json")
        elif path == "/changes":
            self.reply(200, b"{broken", "application/json")
        elif instance == "1.500":
            self.reply(500, b"internal error", "text/plain")
        elif instance == "1.1000":
            self.reply(200, multipart(b"\x00garbage, not a DICOM file" * 10), related)
        elif instance == "1.2000":
            self.reply(200, b"<html>login</html>", "text/html")
        elif instance == "1.3000":  # chunked, no Content-Length, larger than the limit
            self.send_response(200)
            self.send_header("Content-Type", related)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            chunk = b"\0" * 16384
            with contextlib.suppress(OSError):  # the client hangs up at its limit
                for _ in range(64):
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                self.wfile.write(b"0\r\n\r\n")
        elif instance == "1.3001":
            self.reply(200, b"", related, length=10 * 1024 * 1024 * 1024)
        elif instance == "1.4000":
            time.sleep(3)
            self.reply(200, multipart(dicom_bytes("1.4000")), related)
        elif instance == "1.5000":
            self.reply(200, multipart(dicom_bytes("1.5999")), related)
        elif instance == "1.6000":
            self.reply(200, multipart(dicom_bytes("1.6000")), related)
        else:
            self.reply(404, b"unknown", "text/plain")

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        self.reply(500, b"cannot store", "text/plain")


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    server = ThreadingHTTPServer((LOOPBACK, free_port()), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{LOOPBACK}:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def archive(url: str, tmp_path: Path) -> Iterator[DicomWebArchive]:
    cache = InstanceCache(tmp_path / "cache", 10 * LIMIT)
    with DicomWebArchive(url, ("user", "pw"), cache, timeout_s=0.5, max_instance_bytes=LIMIT) as client:
        yield client


@pytest.mark.parametrize("sop, code, words", [
    ("1.500", "http", "HTTP 500"),
    ("1.404", "http", "HTTP 404"),
    ("1.1000", "not-dicom", "not a DICOM instance"),
    ("1.2000", "not-dicom", "text/html"),
    ("1.3000", "too-large", "limit"),
    ("1.3001", "too-large", "limit"),
    ("1.4000", "timeout", "in time"),
    ("1.5000", "bad-response", "1.5999"),
])
def test_bad_instance_answers_are_clear_errors(archive: DicomWebArchive, sop: str, code: str, words: str) -> None:
    with pytest.raises(DicomWebError) as caught:
        archive.fetch_instance(STUDY, SERIES, sop)
    error = caught.value
    assert error.code == code and words in str(error)
    assert f"instance {sop} of study {STUDY}" in str(error)
    assert sop not in archive.cache and len(archive.cache) == 0


def test_one_bad_instance_does_not_stop_the_study(archive: DicomWebArchive) -> None:
    result = archive.fetch_study(STUDY)
    assert list(result.paths) == ["1.6000"] and result.paths["1.6000"].is_file()
    assert [e.what for e in result.errors] == [f"instance 1.500 of study {STUDY}"]
    # images are asked for without gzip: Orthanc compresses answers on the fly by default,
    # which made a 27 MB uncompressed view take 12 times longer to fetch
    assert ENCODINGS["1.6000"] == "identity"


def test_qido_and_stow_failures(archive: DicomWebArchive) -> None:
    with pytest.raises(DicomWebError) as caught:
        archive.find_studies()
    assert caught.value.code == "bad-response" and "QIDO-RS studies" in str(caught.value)
    archive.qido_page = 2  # the server ignores the offset: the same page comes again
    with pytest.raises(DicomWebError, match="same page again"):
        archive.find_instances(STUDY)
    ds = make_mg_dataset(study_uid=STUDY)
    with pytest.raises(DicomWebError) as stow:
        archive.store([ds])
    assert stow.value.code == "http" and str(ds.SOPInstanceUID) in str(stow.value)


def test_unreachable_archive(tmp_path: Path) -> None:
    cache = InstanceCache(tmp_path / "cache", LIMIT)
    with DicomWebArchive(f"http://{LOOPBACK}:{free_port()}", None, cache, timeout_s=2) as archive:
        with pytest.raises(DicomWebError) as caught:
            archive.fetch_instance(STUDY, SERIES, "1.6000")
        assert caught.value.code == "unreachable" and "1.6000" in str(caught.value)
        with pytest.raises(DicomWebError) as qido:
            archive.find_instances(STUDY)
        assert qido.value.code == "unreachable"


def test_watcher_survives_a_broken_feed(archive: DicomWebArchive, tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    state.write_text("not json")  # unreadable state: start from 0, with a warning
    watcher = StableStudyWatcher(archive, state_file=state)
    assert watcher.since == 0
    with pytest.raises(DicomWebError, match="changes feed"):
        watcher.poll()
    errors: list[DicomWebError] = []
    stop = threading.Event()

    def on_error(error: DicomWebError) -> None:
        errors.append(error)
        if len(errors) >= 2:
            stop.set()

    assert list(watcher.follow(stop, interval_s=0.01, on_error=on_error)) == []
    assert len(errors) == 2 and all(e.code == "bad-response" for e in errors)
    watcher.close()


def test_cache_refuses_bad_sizes_and_uids(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="positive"):
        InstanceCache(tmp_path / "c", 0)
    cache = InstanceCache(tmp_path / "c", 100)
    with pytest.raises(ValueError, match="do not fit"):
        cache.put("1.2.3", b"x" * 101)
    with pytest.raises(DicomWebError, match="not a valid UID"):
        cache.put("../escape", b"x")
    (tmp_path / "c" / ".1.2.3.tmpleft").write_bytes(b"half")  # left by a crash: removed
    (tmp_path / "c" / "notes.txt").write_text("not ours")  # left alone
    cache.put("1.2.3", b"y" * 10)
    reopened = InstanceCache(tmp_path / "c", 100)
    assert reopened.uids() == ["1.2.3"] and not (tmp_path / "c" / ".1.2.3.tmpleft").exists()
    assert (tmp_path / "c" / "notes.txt").exists()
    assert reopened.discard("1.2.3") is True and reopened.discard("1.2.3") is False
    assert len(reopened) == 0 and not list((tmp_path / "c").glob("*.dcm"))
    # the cache folder is gone and a file stands in its place: a clear error, no OSError
    broken = InstanceCache(tmp_path / "gone", 100)
    (tmp_path / "gone").rmdir()
    (tmp_path / "gone").write_text("a file")
    with pytest.raises(DicomWebError) as caught:
        broken.put("1.2.4", b"z")
    assert caught.value.code == "cache" and "1.2.4" in str(caught.value)
