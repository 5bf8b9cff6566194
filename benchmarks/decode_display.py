"""Decode + display-ready time of a full-size JPEG 2000 phantom view vs bare pydicom.

Prints one figure per line. The ratio compares, in the same run and on the same file:
  ours     = mammotriage.dicom.read_image (parse, validate, decode) + 8-bit display
             table built and applied (the image as the viewer shows it)
  baseline = pydicom.dcmread(path).pixel_array (decode only, pydicom's default plugin)
Target: ratio <= 1.15.
Also, on the same file: the progressive decoder (``dicom.progressive``, openjpeg through
glymur with all cores' threads) at full resolution and its preview (1/8, what a pane
paints first), each with the same 8-bit rendering.

Usage: python benchmarks/decode_display.py [--repeats N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import pydicom

from mammotriage.dicom import read_image
from mammotriage.dicom.progressive import read_image_progressive
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

        def progressive(reduce: int) -> None:
            image, _r = read_image_progressive(path, reduce, os.cpu_count())
            render_8bit(image.meta, image.pixels)

        runs = {"baseline": baseline, "ours": ours, "full": lambda: progressive(0),
                "preview": lambda: progressive(3)}
        for run in runs.values():
            run()  # warm caches (plugin imports, file cache)
        times: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(args.repeats):  # interleave so drift hits all equally
            for name, run in runs.items():
                t0 = time.perf_counter()
                run()
                times[name].append(time.perf_counter() - t0)
        b, o = statistics.median(times["baseline"]), statistics.median(times["ours"])
        full, preview = statistics.median(times["full"]), statistics.median(times["preview"])
        print(f"baseline_pydicom_pixel_array_s {b:.3f}")
        print(f"ours_decode_display_ready_s {o:.3f}")
        print(f"ratio_ours_to_pydicom {o / b:.3f}")
        print(f"progressive_full_display_ready_s {full:.3f}")
        print(f"ratio_progressive_full_to_pydicom {full / b:.3f}")
        print(f"progressive_preview_display_ready_s {preview:.3f}")
        print(f"ratio_progressive_preview_to_pydicom {preview / b:.3f}")


if __name__ == "__main__":
    main()
