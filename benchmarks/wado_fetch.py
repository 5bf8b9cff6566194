"""WADO-RS fetch + decode of a full-size view from the site archive vs decoding the local file.

Prints one figure per line. A real Orthanc (Debian's orthanc + orthanc-dicomweb) is
started on 127.0.0.1 in a temporary folder; the full-size phantom view (4096 x 3328,
14 bits, JPEG 2000 lossless by default) is stored into it with STOW-RS. Then, in the
same run and interleaved:
  local = mammotriage.dicom.read_image(the local file)  (parse, validate, decode)
  wado  = DicomWebArchive.fetch_instance with a cold cache (WADO-RS as stored, the body
          checked and written atomically into the cache with its sha256) + read_image
          of the cached file
  hit   = fetch_instance on a warm cache (sha256 check of the entry) + read_image
The ratio is wado / local (target: close to 1; the transfer is loopback here, so a site
network adds its own time: file_mb / link speed).

With ``--tls`` the archive is set up as ``site init`` does it: HTTPS through the TLS relay
(net.tls_relay) with a generated site CA, which the client verifies.

Usage: python benchmarks/wado_fetch.py [--repeats N] [--transfer-syntax explicit|jpeg2000] [--tls]
"""

from __future__ import annotations

import argparse
import shutil
import socket
import statistics
import tempfile
import time
from pathlib import Path

import pydicom

from mammotriage.dicom import read_image
from mammotriage.net.dicomweb import DicomWebArchive
from mammotriage.net.orthanc import OrthancServer
from mammotriage.phantom import generate_exam


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--transfer-syntax", default="jpeg2000", choices=("explicit", "jpeg2000"))
    parser.add_argument("--tls", action="store_true", help="HTTPS with a site CA, as 'site init' sets it up")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        exam = generate_exam(11, rows=4096, columns=3328, bits_stored=14, transfer_syntax=args.transfer_syntax)
        path = exam.save(root / "exam")["LCC"]
        ds = pydicom.dcmread(path)
        print(f"view {ds.Rows}x{ds.Columns}")
        print(f"transfer_syntax {ds.file_meta.TransferSyntaxUID.name.replace(' ', '_')}")
        print(f"file_mb {path.stat().st_size / 1e6:.1f}")

        http_port = _free_port()
        dicom_port = _free_port()
        tls = {}
        if args.tls:
            from mammotriage.net.tls import SiteTls

            material = SiteTls(root / "tls")
            material.generate()
            tls = {"tls_pem": material.server_pem, "tls_ca": material.ca_cert}
        print(f"https {'yes' if args.tls else 'no'}")
        server = OrthancServer(root / "site", http_port, dicom_port, **tls)
        server.write_config()
        server.start()
        try:
            cache_dir = root / "cache"
            with DicomWebArchive.for_server(server, cache_dir, 1024 * 1024 * 1024) as archive:
                stored = archive.store([ds])
                if stored.failed:
                    raise SystemExit(f"STOW-RS refused the view: {stored.failed}")
                uids = (str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID))

                def local() -> None:
                    read_image(path)

                def wado() -> None:
                    archive.cache.discard(uids[2])  # a cold cache every time
                    read_image(archive.fetch_instance(*uids))

                def hit() -> None:
                    read_image(archive.fetch_instance(*uids))

                runs = {"local": local, "wado": wado, "hit": hit}
                for run in runs.values():
                    run()  # warm: plugin imports, Orthanc's storage cache, the file cache
                times: dict[str, list[float]] = {name: [] for name in runs}
                for _ in range(args.repeats):  # interleaved so drift hits all equally
                    for name, run in runs.items():
                        t0 = time.perf_counter()
                        run()
                        times[name].append(time.perf_counter() - t0)
        finally:
            server.stop()
            shutil.rmtree(root / "site", ignore_errors=True)
        lo, wa, hi = (statistics.median(times[n]) for n in ("local", "wado", "hit"))
        print(f"local_decode_s {lo:.3f}")
        print(f"wado_fetch_decode_s {wa:.3f}")
        print(f"cache_hit_decode_s {hi:.3f}")
        print(f"ratio_wado_fetch_decode_to_local_decode {wa / lo:.3f}")
        print(f"ratio_cache_hit_decode_to_local_decode {hi / lo:.3f}")


if __name__ == "__main__":
    main()
