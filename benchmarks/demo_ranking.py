"""Exam ranking on demo phantom sets never used in training (seeds 1..N of ``mammotriage demo``).

Prints one figure per line: per seed the exam AUC (malignant vs normal exams) and the
number of normal exams the worklist would call "suspicious"; then the pooled figures.
Goal (detector v1): exam AUC >= 0.95 on every seed, no normal exam "suspicious".

Usage: python benchmarks/demo_ranking.py [--seeds 10] [--exams 8] [--model DIR] [--threads 2]
"""

from __future__ import annotations

import argparse

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--exams", type=int, default=8)
    parser.add_argument("--model", default=None)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    from mammotriage.dicom.image import MammoImage
    from mammotriage.dicom.read import parse_metadata
    from mammotriage.model.evaluate import roc_auc
    from mammotriage.model.infer import Engine
    from mammotriage.model.scoring import breast_scores, category_from, exam_score
    from mammotriage.phantom import generate_exam

    engine = Engine.from_package(args.model, device="cpu", threads=args.threads)
    print(f"model_version {engine.version}")
    all_s, all_y, all_sus_normal = [], [], 0
    for seed in range(1, args.seeds + 1):
        scores, labels, sus_normal = [], [], 0
        for number in range(1, args.exams + 1):
            # the demo set's own rule: every third exam is normal (mammotriage.phantom.write_demo_set)
            exam = generate_exam(seed, exam_number=number, normal=number % 3 == 0, rows=1024, columns=832)
            images = [MammoImage(im.pixels, parse_metadata(im.dataset)) for im in exam.images]
            results = engine.predict_images(images, max_map_side=64)
            breasts = breast_scores((im.meta.laterality.value, im.meta.view.value, r.score)
                                    for im, r in zip(images, results, strict=True))
            s = exam_score(breasts, [r.score for r in results])
            malignant = bool(exam.lesions)
            scores.append(s)
            labels.append(int(malignant))
            if not malignant and category_from(s, engine.thresholds) == "suspicious":
                sus_normal += 1
        auc = roc_auc(labels, scores)
        print(f"seed_{seed}_exam_auc {auc:.3f}")
        print(f"seed_{seed}_normal_exams_suspicious {sus_normal}")
        all_s += scores
        all_y += labels
        all_sus_normal += sus_normal
    print(f"pooled_exam_auc {roc_auc(all_y, all_s):.3f}")
    print(f"normal_exams {int(len(all_y) - sum(all_y))}")
    print(f"normal_exams_suspicious {all_sus_normal}")
    ranks = np.argsort(-np.array(all_s))
    print(f"malignant_exams {int(sum(all_y))}")
    print(f"top_decile_malignant_fraction {np.mean(np.array(all_y)[ranks[: max(1, len(ranks) // 10)]]):.3f}")


if __name__ == "__main__":
    main()
