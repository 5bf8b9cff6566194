"""Received instances: stored as received, imported, deduplicated, rejected with reasons."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from netsupport import make_sr
from pydicom.uid import generate_uid

from mammotriage.net.receive import ReceivedStore, ReceiveOutcome, Status
from mammotriage.store.archive import Archive
from mtsupport import make_mg_dataset


@pytest.fixture
def store(tmp_path: Path):
    archive = Archive(tmp_path / "archive.sqlite")
    yield ReceivedStore(tmp_path / "received", archive)
    archive.close()


def _bytes(ds) -> bytes:
    import io

    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def test_imported_file_lies_under_study_and_sop_uid_with_the_exact_bytes(store: ReceivedStore, phantom_exams) -> None:
    study, files = phantom_exams["jpeg2000"]
    data = files[0].read_bytes()
    sop = str(pydicom.dcmread(files[0], stop_before_pixels=True).SOPInstanceUID)
    result = store.receive(data, sop_instance_uid=sop, calling_ae_title="MOD")
    assert result.outcome is ReceiveOutcome.IMPORTED and result.ok
    assert result.status == Status.SUCCESS
    assert result.study_uid == study and result.sop_uid == sop
    assert Path(result.path) == store.root / study / f"{sop}.dcm"
    assert Path(result.path).read_bytes() == data
    image = store.archive.image(sop)
    assert image is not None and image.path == result.path
    assert image.transfer_syntax == "1.2.840.10008.1.2.4.90"
    assert list(store.incoming.iterdir()) == []


def test_resend_is_a_duplicate_and_keeps_one_copy(store: ReceivedStore, phantom_exams) -> None:
    _, files = phantom_exams["rle"]
    data = files[1].read_bytes()
    first = store.receive(data)
    second = store.receive(data)
    assert first.outcome is ReceiveOutcome.IMPORTED
    assert second.outcome is ReceiveOutcome.DUPLICATE and second.ok
    assert second.path == first.path
    assert store.archive.count() == 1


def test_instance_already_imported_from_a_folder_is_not_copied_again(store: ReceivedStore, phantom_exams) -> None:
    _, files = phantom_exams["explicit"]
    store.archive.import_paths([files[2]])
    result = store.receive(files[2].read_bytes())
    assert result.outcome is ReceiveOutcome.DUPLICATE
    assert result.path == str(files[2].resolve())
    assert not any(store.root.glob("*/*.dcm"))


def test_garbage_is_rejected_logged_and_kept_for_inspection(store: ReceivedStore) -> None:
    data = b"this is not a DICOM stream" * 10
    result = store.receive(data, sop_instance_uid="1.2.3", calling_ae_title="BAD")
    assert result.outcome is ReceiveOutcome.REJECTED and not result.ok
    assert result.status == Status.CANNOT_UNDERSTAND
    assert result.code == "not-dicom"
    kept = Path(result.path)
    assert kept.parent == store.rejected_dir and kept.read_bytes() == data
    log = store.archive.rejections()
    assert [(r.path, r.code) for r in log] == [(result.path, "not-dicom")]
    assert store.archive.count() == 0


@pytest.mark.filterwarnings("ignore:Expected explicit VR")
def test_garbage_data_set_behind_valid_file_meta_gets_a_failure_status(store: ReceivedStore) -> None:
    ds = make_mg_dataset()
    head = _bytes(ds)
    # Preamble, DICM, then (0002,0000) UL: the file meta group length (PS3.10 7.1).
    meta_end = 132 + 12 + int.from_bytes(head[140:144], "little")
    data = head[:meta_end] + bytes(range(256)) * 4
    result = store.receive(data)
    assert result.outcome is ReceiveOutcome.REJECTED
    assert 0xC000 <= result.status <= 0xCFFF
    assert result.reason and store.archive.rejections()[-1].reason == result.reason


def test_structured_report_is_not_accepted(store: ReceivedStore, tmp_path: Path) -> None:
    sr = make_sr(tmp_path / "sr.dcm")
    result = store.receive(sr.read_bytes())
    assert result.status == Status.NOT_ACCEPTED
    assert result.code == "not-an-image"
    assert "not an image" in result.reason
    assert store.archive.rejections()[0].reason == result.reason


def test_same_sop_uid_with_other_content_is_a_conflict(store: ReceivedStore) -> None:
    study = generate_uid()
    ds = make_mg_dataset(study_uid=study)
    first = store.receive(_bytes(ds))
    ds.PatientName = "OTHER^NAME"
    second = store.receive(_bytes(ds))
    assert first.outcome is ReceiveOutcome.IMPORTED
    assert second.status == Status.CONFLICT and second.code == "sop-uid-conflict"
    assert Path(first.path).read_bytes() != Path(second.path).read_bytes()
    assert Path(second.path).parent == store.rejected_dir
    assert str(pydicom.dcmread(first.path).PatientName) == "TEST^PATIENT"  # untouched


def test_study_conflict_after_placement_moves_the_file_out(store: ReceivedStore) -> None:
    study = generate_uid()
    store.receive(_bytes(make_mg_dataset(study_uid=study, patient_id="A")))
    result = store.receive(_bytes(make_mg_dataset(study_uid=study, patient_id="B")))
    assert result.status == Status.CONFLICT and result.code == "study-conflict"
    assert Path(result.path).parent == store.rejected_dir
    assert len(list((store.root / study).iterdir())) == 1


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI", "ignore:The value length")
@pytest.mark.parametrize(
    ("uid", "code"),
    [("../../etc/evil", "bad-uid"), ("1.2.abc", "bad-uid"), ("1." + "2" * 70, "bad-uid")],
)
def test_uids_are_checked_before_they_become_paths(store: ReceivedStore, uid: str, code: str) -> None:
    ds = make_mg_dataset()
    ds.StudyInstanceUID = uid
    result = store.receive(_bytes(ds))
    assert result.status == Status.BAD_UIDS and result.code == code
    assert Path(result.path).parent == store.rejected_dir
    assert not (store.root.parent / "etc").exists()
    assert store.archive.rejections()[-1].code == code


def test_sop_uid_must_match_the_request(store: ReceivedStore) -> None:
    result = store.receive(_bytes(make_mg_dataset()), sop_instance_uid="1.2.3.4")
    assert result.status == Status.BAD_UIDS and result.code == "uid-mismatch"


def test_disk_failure_asks_the_sender_to_retry(store: ReceivedStore, monkeypatch: pytest.MonkeyPatch) -> None:
    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(store, "_write_temp", full)
    result = store.receive(b"whatever", sop_instance_uid="1.2")
    assert result.outcome is ReceiveOutcome.FAILED
    assert result.status == Status.OUT_OF_RESOURCES
    assert "No space left" in result.reason


def test_partial_files_from_a_crash_are_cleaned(tmp_path: Path) -> None:
    incoming = tmp_path / "received" / ".incoming"
    incoming.mkdir(parents=True)
    (incoming / "dead.part").write_bytes(b"partial")
    with Archive(tmp_path / "a.sqlite") as archive:
        ReceivedStore(tmp_path / "received", archive)
    assert list(incoming.iterdir()) == []
