"""Patient-level k-fold cross-validation on a mini-MIAS folder (plus optional phantoms that
are added to every training fold, never to a validation fold)."""

from __future__ import annotations

import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from mammotriage.model.data import Sample, patient_folds
from mammotriage.model.evaluate import evaluate_predictions, predict_samples, roc_auc
from mammotriage.model.network import DEFAULT_CONFIG, NetworkConfig
from mammotriage.model.preprocess import DEFAULT_PARAMS, PreprocessParams
from mammotriage.model.train import TrainParams, prepare, train


def _records_json(records: list[dict]) -> list[dict]:
    out = []
    for r in records:
        out.append({k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in r.items()})
    return out


def _records_from_json(items: list[dict]) -> list[dict]:
    out = []
    for r in items:
        r = dict(r)
        for k in ("circles", "boxes", "scores"):
            r[k] = np.asarray(r[k], dtype=np.float64)
        r["circles"] = r["circles"].reshape(-1, 3)
        r["boxes"] = r["boxes"].reshape(-1, 4)
        out.append(r)
    return out


def cross_validate(samples: list[Sample], k: int, out_dir: str | Path, hp: TrainParams,
                   extra_train: list[Sample] | None = None, config: NetworkConfig = DEFAULT_CONFIG,
                   pp: PreprocessParams = DEFAULT_PARAMS, folds: list[int] | None = None,
                   fold_seed: int = 0, stop_at: int | None = None) -> dict:
    """Train k models, each validated on the patients it never saw; pooled metrics.

    Each fold's held-out predictions go to ``out_dir/fold{i}/records.json`` (a finished
    fold is not trained again when re-run), the pooled metrics to ``out_dir/cv.json``.
    ``stop_at`` ends every fold's training after that many iterations (a fixed, cheaper
    budget on the same learning-rate schedule).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fold_of = patient_folds(samples, k, seed=fold_seed)
    extra_train = extra_train or []
    print(f"preparing {len(samples)} + {len(extra_train)} images", file=sys.stderr, flush=True)
    prepared = prepare(samples, pp)
    prepared_extra = prepare(extra_train, pp)
    all_records: list[dict] = []
    per_fold = []
    for f in range(k) if folds is None else folds:
        fold_dir = out_dir / f"fold{f}"
        rec_path = fold_dir / "records.json"
        val = [s for s, g in zip(samples, fold_of, strict=True) if g == f]
        if rec_path.exists():
            saved = json.loads(rec_path.read_text())
            records = _records_from_json(saved["records"])
            info = saved["info"]
        else:
            tr = [p for p, g in zip(prepared, fold_of, strict=True) if g != f] + prepared_extra
            t0 = time.monotonic()
            result = train([], fold_dir, replace(hp, seed=hp.seed + f), config, pp,
                           prepared=tr, progress=False, stop_at=stop_at)
            from mammotriage.model.infer import Engine

            engine = Engine(result.detector, config, pp, threads=hp.threads)
            records = predict_samples(engine, val)
            info = {"fold": f, "train_images": len(tr), "val_images": len(val),
                    "iterations": result.iterations, "total_iterations": result.total_iterations,
                    "finished": result.finished, "train_seconds": round(result.seconds, 1),
                    "seconds": round(time.monotonic() - t0, 1),
                    "images_per_second": round(result.images_per_second, 3)}
            fold_dir.mkdir(parents=True, exist_ok=True)
            rec_path.write_text(json.dumps({"info": info, "records": _records_json(records)}))
            # Keep the fold's network (second-stage training, test-time augmentation and
            # re-scoring need the model that never saw this fold); drop the optimiser state.
            import torch

            torch.save(result.detector.network.state_dict(), fold_dir / "network.pt")
            (fold_dir / "checkpoint.pt").unlink(missing_ok=True)
        m = evaluate_predictions(records)
        info = {**info, **m.to_json()}
        print(f"fold {f}: {json.dumps(info)}", file=sys.stderr, flush=True)
        per_fold.append(info)
        all_records.extend(records)
    pooled = evaluate_predictions(all_records)
    aucs = [p["image_auc"] for p in per_fold if p.get("image_auc") is not None]
    summary = {"k": k, "pooled": pooled.to_json(), "per_fold": per_fold,
               "fold_auc_mean": float(np.mean(aucs)) if aucs else None,
               "fold_auc_std": float(np.std(aucs)) if aucs else None,
               "hp": hp.to_json(), "config": config.to_json(), "preprocess": pp.to_json(),
               "n_extra_train": len(extra_train)}
    (out_dir / "cv.json").write_text(json.dumps(summary, indent=1))
    return {"summary": summary, "pooled": pooled, "records": all_records}


def pooled_auc(records: list[dict]) -> float:
    return roc_auc([int(r["abnormal"]) for r in records], [r["image_score"] for r in records])
