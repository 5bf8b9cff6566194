"""Training throughput of the Mammo Triage detector on this CPU (images/s).

Trains a few iterations of the real training step (patch sampling + augmentation,
RetinaNet losses, backward, AdamW) on phantom images at the shipped canvas size and
prints one figure per line.  The first iterations are warm-up and not counted.

Usage: python benchmarks/model_train.py [--iterations N] [--threads T]
"""

from __future__ import annotations

import argparse
import tempfile


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    from mammotriage.model.data import phantom_samples
    from mammotriage.model.preprocess import PreprocessParams
    from mammotriage.model.train import TrainParams, prepare, train

    pp = PreprocessParams()
    samples = phantom_samples(2, seed=77)
    prepared = prepare(samples, pp)
    hp = TrainParams(threads=args.threads, checkpoint_every=10**9)
    with tempfile.TemporaryDirectory() as tmp:
        warm = train([], tmp + "/w", hp, pp=pp, prepared=prepared, progress=False, log_every=0,
                     stop_at=args.warmup)
        r = train([], tmp + "/w", hp, pp=pp, prepared=prepared, progress=False, log_every=0,
                  stop_at=args.warmup + args.iterations)
    del warm
    print(f"patch_rows {hp.patch_rows}")
    print(f"patch_columns {pp.canvas_columns}")
    print(f"batch_size {hp.batch_size}")
    print(f"threads {args.threads}")
    print(f"train_iterations {r.iterations - args.warmup}")
    print(f"train_images_per_s {r.images_per_second:.3f}")


if __name__ == "__main__":
    main()
