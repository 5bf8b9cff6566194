"""Per-view inference time of the Mammo Triage detector on this CPU vs stock MONAI RetinaNet.

Prints one figure per line (``name value``):
  ours     = network + box decoding + NMS + suspicion map on the shipped input canvas
             (EfficientNet-Lite0 + 64-channel FPN RetinaNet), one view per call
  baseline = MONAI's stock RetinaNet-ResNet50/FPN-256 (retinanet_resnet50_fpn_detector,
             random weights, 1 channel, 2-D) on the same canvas, same threads, same run
Targets: ours_p50_s <= 0.5, ratio (ours/baseline) <= 0.2, ours_p99_s <= 1.2 x ours_p50_s.
Preprocessing (crop/flip/resize) is timed separately (preprocess_ms).

Full-size view (4096 x 3328 stored pixels, the second look when the package has one):
  full_view_total_s = display -> stage one -> stage two -> calcification path -> marks
  (target <= 1.5 s on 2 threads), with stage_two_s and calc_path_s as separate lines.

Usage: python benchmarks/model_inference.py [--repeats N] [--threads T] [--model DIR]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np


def _times(fn, repeats: int, warmup: int = 2) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.array(values), q))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--baseline-repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--model", default=None, help="model package (default: shipped, else untrained)")
    args = parser.parse_args()

    import torch

    from mammotriage.model.infer import Engine, set_deterministic
    from mammotriage.model.network import stock_resnet50_detector
    from mammotriage.model.package import ModelPackageError
    from mammotriage.model.preprocess import preprocess_display
    from mammotriage.phantom import generate_exam

    set_deterministic(args.threads)
    try:
        engine = Engine.from_package(args.model, device="cpu", threads=args.threads, batch_size=1)
        print(f"model_version {engine.version}")
    except ModelPackageError:
        engine = Engine.untrained(device="cpu", threads=args.threads, batch_size=1)
        print("model_version untrained")
    exam = generate_exam(5, rows=2048, columns=1664, normal=False)
    from mammotriage.dicom.read import parse_metadata
    from mammotriage.model.preprocess import display_from_mammo

    img = exam.images[2]
    display = display_from_mammo(parse_metadata(img.dataset), img.pixels)
    canvas = preprocess_display(display, engine.params)
    rows, cols = canvas.image.shape
    print(f"input_rows {rows}")
    print(f"input_columns {cols}")
    print(f"threads {torch.get_num_threads()}")

    pre = _times(lambda: preprocess_display(display, engine.params), 5, warmup=1)
    print(f"preprocess_ms {1000 * statistics.median(pre):.1f}")

    ours = _times(lambda: engine.predict_canvases([canvas]), args.repeats)
    stock = stock_resnet50_detector(len(engine.config.classes))
    stock.eval()
    x = torch.from_numpy(canvas.image.astype(np.float32)[None, None] / 255.0)

    def baseline() -> None:
        with torch.no_grad():
            stock(x)

    base = _times(baseline, args.baseline_repeats, warmup=1)
    p50, p99 = statistics.median(ours), _pct(ours, 99)
    b50 = statistics.median(base)
    print(f"ours_p50_s {p50:.3f}")
    print(f"ours_p99_s {p99:.3f}")
    print(f"ours_p99_over_p50 {p99 / p50:.2f}")
    print(f"baseline_resnet50_fpn256_p50_s {b50:.3f}")
    print(f"ratio {p50 / b50:.3f}")
    ours_params = sum(p.numel() for p in engine.detector.network.parameters())
    base_params = sum(p.numel() for p in stock.network.parameters())
    print(f"ours_params_m {ours_params / 1e6:.2f}")
    print(f"baseline_params_m {base_params / 1e6:.2f}")
    # four views of an exam in one batch
    engine.batch_size = 4
    four = _times(lambda: engine.predict_canvases([canvas] * 4), 3, warmup=1)
    print(f"ours_exam_4views_batched_s {statistics.median(four):.3f}")
    engine.batch_size = 1
    full_view(engine, b50)


def full_view(engine, baseline_s: float) -> None:
    """One full-size view end to end, and the second look's parts on their own."""
    from mammotriage.dicom.read import parse_metadata
    from mammotriage.model.preprocess import display_from_mammo
    from mammotriage.model.twostage import ViewCandidates, ViewGeometry
    from mammotriage.phantom import generate_exam

    exam = generate_exam(5, rows=4096, columns=3328, normal=False)
    metas = [parse_metadata(im.dataset) for im in exam.images]
    displays = [display_from_mammo(m, im.pixels) for m, im in zip(metas, exam.images, strict=True)]
    spacing = metas[0].spacing.row_mm if metas[0].spacing is not None else None
    print(f"full_view_rows {displays[0].shape[0]}")
    print(f"full_view_columns {displays[0].shape[1]}")
    # views 0 and 1 are the two breasts' same projection in the phantom's order; take the
    # partner from the metadata as the engine does
    total = _times(lambda: engine.predict_displays(displays[:2], spacings=[spacing] * 2, partners=[1, 0]),
                   3, warmup=1)
    print(f"full_view_total_s {statistics.median(total) / 2:.3f}")
    print(f"full_view_ratio_to_baseline {statistics.median(total) / 2 / baseline_s:.3f}")
    sl = engine.second_look
    if sl is None:
        print("second_look absent")
        return
    g = [ViewGeometry.of(d, spacing or 0.2) for d in displays[:2]]
    saved, engine.second_look = engine.second_look, None
    stage_one = engine.predict_displays(displays[:2])
    engine.second_look = saved
    cands = [ViewCandidates(np.array([f.box for f in r.findings]).reshape(-1, 4),
                            np.array([f.score for f in r.findings]), [f.kind for f in r.findings])
             for r in stage_one]
    geo = _times(lambda: ViewGeometry.of(displays[0], spacing or 0.2), 3, warmup=1)
    print(f"breast_geometry_s {statistics.median(geo):.3f}")
    st2 = _times(lambda: sl.rescore(cands[0], g[0], g[1], cands[1]), 5, warmup=1)
    print(f"stage_two_s {statistics.median(st2):.3f}")
    print(f"stage_two_candidates {len(cands[0].scores)}")
    calc = _times(lambda: sl.calc_findings(displays[0], spacing or 0.2, g[0].mask), 3, warmup=1)
    print(f"calc_path_s {statistics.median(calc):.3f}")
    print(f"calc_max_specks {sl.calc_params.max_specks}")
    print(f"calc_max_clusters_per_scale {sl.calc_params.max_clusters}")


if __name__ == "__main__":
    main()
