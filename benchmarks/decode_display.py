"""Decode + display-ready time of a full-size JPEG 2000 phantom view vs bare pydicom.

Prints one figure per line. The ratio compares, in the same run and on the same file:
  ours     = mammotriage.dicom.read_image (parse, validate, decode) + 8-bit display
             table built and applied (the image as the viewer shows it)
  baseline = pydicom.dcmread(path).pixel_array (decode only, pydicom's default plugin)
Target: ratio <= 1.15.

Usage: python benchmarks/decode_display.py [--repeats N]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import pydicom

from mammotriage.dicom import read_image
from mammotriage.dicom.voi import render_8bit
from mammotriage.phantom import generate_exam


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        exam = generate_exam(11, rows=4096, columns=3328, bits_stored=14, transfer_syntax="jpeg2000")
        paths = exam.save(Path(tmp))
        path = paths["LCC"]
        print(f"file_mb {path.stat().st_size / 1e6:.1f}")

        def baseline() -> None:
            pydicom.dcmread(path).pixel_array  # noqa: B018

        def ours() -> None:
            image = read_image(path)
            render_8bit(image.meta, image.pixels)

        baseline()
        ours()  # warm caches (plugin imports, file cache)
        base_t, our_t = [], []
        for _ in range(args.repeats):  # interleave so drift hits both equally
            t0 = time.perf_counter()
            baseline()
            base_t.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            ours()
            our_t.append(time.perf_counter() - t0)
        b, o = statistics.median(base_t), statistics.median(our_t)
        print(f"baseline_pydicom_pixel_array_s {b:.3f}")
        print(f"ours_decode_display_ready_s {o:.3f}")
        print(f"ratio_ours_to_pydicom {o / b:.3f}")


if __name__ == "__main__":
    main()
