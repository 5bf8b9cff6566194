"""Retraining refits the second look: the calcification trees on the vendor's examples plus
the site's, their prior shift, and stage two on the new network's candidates.

A tiny vendor (a mini-MIAS-format folder of eight 1000 x 800 synthetic films, two with a
simulated calcification cluster labelled CALC) and a tiny site (four such films as real
MG DICOM files in a real archive, two with a cluster a reader marks through
``CorrectionLog``); the parent is a random network with cluster trees fitted on the
vendor's examples as ``train --second-look`` fits them. Everything runs in seconds.
"""

from __future__ import annotations

import csv
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

ROWS, COLS = 1000, 800  # 0.2 mm: a 200 mm field of view, the least a DICOM film exam may have
CLUSTER_AT = (230.0, 500.0)  # (x, y): inside the breast, far from its edge


def _film(seed: int, cluster: bool) -> tuple[np.ndarray, tuple[float, float, float] | None]:
    """A smooth noisy half-disc 'breast' (chest wall left) with grains, and a simulated cluster."""
    from scipy import ndimage

    from mammotriage.model.calc import insert_cluster

    rng = np.random.default_rng([seed, 5])
    yy, xx = np.mgrid[0:ROWS, 0:COLS]
    inside = ((yy - ROWS / 2) / (ROWS * 0.45)) ** 2 + (xx / (COLS * 0.9)) ** 2 <= 1
    tex = ndimage.gaussian_filter(rng.normal(0, 1, (ROWS, COLS)), 12) * 40
    # sparse bright grains: the speck clusters that are not calcifications (hard negatives)
    grains = (rng.random((ROWS, COLS)) < 0.0006) * 60.0
    img = np.clip(np.where(inside, 120 + tex + grains + rng.normal(0, 2, (ROWS, COLS)), 0), 0, 255).astype(np.uint8)
    if not cluster:
        return img, None
    return insert_cluster(img, 0.2, CLUSTER_AT, rng, contrast_per_mm=150.0)


def _mias_folder(folder: Path, first: int, n: int, with_cluster: set[int]) -> Path:
    """``n`` films ``mdb{first}..`` (two per patient) in the mini-MIAS format."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for k in range(first, first + n):
        img, circle = _film(k, k in with_cluster)
        name = f"mdb{k:03d}"
        Image.fromarray(img).save(folder / f"{name}.png")
        base = {"image": name, "patient": f"p{(k + 1) // 2:03d}", "background": "F", "severity": "",
                "x": "", "y_top_left": "", "radius": ""}
        if circle is None:
            rows.append({**base, "cls": "NORM"})
        else:
            rows.append({**base, "cls": "CALC", "severity": "B", "x": f"{circle[0]:.1f}",
                         "y_top_left": f"{circle[1]:.1f}", "radius": f"{circle[2]:.1f}"})
    with open(folder / "labels.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return folder


def _parent(out: Path, vendor: Path, tmp: Path, source_path: str | None = None) -> Path:
    """A random network + cluster trees (and a stage two) fitted on the vendor's examples."""
    import torch

    from mammotriage.model.calc import fit_trees
    from mammotriage.model.crossval import calc_example_cache, fit_second_look
    from mammotriage.model.data import hash_mias_folder, read_mias
    from mammotriage.model.network import NetworkConfig, build_detector
    from mammotriage.model.package import save_package
    from mammotriage.model.preprocess import PreprocessParams
    from mammotriage.model.twostage import STAGE2_FEATURES

    samples = read_mias(vendor)
    cache = calc_example_cache(samples, [], tmp / "vendor-examples.npz")
    rng = np.random.default_rng(3)
    X2 = rng.normal(size=(120, len(STAGE2_FEATURES)))
    sl = fit_second_look(cache, list(range(len(samples))), [], trees={"n_estimators": 20})
    sl.stage2 = fit_trees(X2, (X2[:, 0] > 0).astype(int), n_estimators=10)
    config = NetworkConfig(base_anchor_sizes=(8, 16), detections_per_img=20)
    pp = PreprocessParams(canvas_rows=128, canvas_columns=96)
    torch.manual_seed(0)
    det = build_detector(config, train_components=False)
    source = {"type": "mias", "path": source_path or str(vendor), "sha256": hash_mias_folder(vendor),
              "images": len(samples)}
    return save_package(out, det, config, pp, version="0.0.5", description="tiny parent with a second look",
                        training={"summary": "tiny vendor", "sources": [source]},
                        hyper_parameters={"second_look": {**sl.to_json(), "trees": {"n_estimators": 20}}},
                        seed=0, eval_metrics={}, operating_points={}, second_look=sl)


@dataclass
class Site:
    root: Path
    archive: Path
    training: str
    vendor: Path
    parent: Path
    site_films: Path


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Site:
    from loop_real import import_set
    from retrain_sim import record_ground_truth

    from mammotriage.model.data import read_mias
    from mammotriage.store.datasets import create_snapshot

    root = tmp_path_factory.mktemp("second-look-site")
    vendor = _mias_folder(root / "vendor", 1, 8, {1, 5})
    films = _mias_folder(root / "site-films", 101, 4, {101, 103})
    archive = root / "home" / "archive.sqlite"
    archive.parent.mkdir(parents=True)
    by_group: dict[str, list] = defaultdict(list)
    for s in read_mias(films):
        by_group[s.group].append(s)
    exams = import_set(archive, root / "dicom", by_group, sorted(by_group), 1)
    record_ground_truth(archive, exams, reader="site_reader")
    snap = create_snapshot(archive, role="training", name="site-clusters")
    parent = _parent(root / "parent", vendor, root)
    return Site(root, archive, snap.sha256, vendor, parent, films)


def _params():
    from mammotriage.learning.retrain import RetrainParams

    return RetrainParams(max_iterations=2, threads=1, patch_rows=128, warmup_iters=1, seed=3, replay_fraction=0.5)


def _trees(folder: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    from mammotriage.model.package import read_metadata

    arrays = load_file(str(folder / read_metadata(folder)["weights_file"]))
    return {k: v for k, v in arrays.items() if k.startswith("second_look.")}


def test_retrain_refits_the_calcification_trees_on_vendor_and_site_clusters(site, tmp_path):
    from mammotriage.learning.retrain import retrain
    from mammotriage.model.calc import prior_shift
    from mammotriage.model.data import read_mias
    from mammotriage.model.infer import Engine
    from mammotriage.model.package import read_metadata
    from mammotriage.model.twostage import hits

    stages: list[str] = []
    res = retrain(site.training, archive_file=site.archive, parent=site.parent, params=_params(),
                  out_dir=tmp_path / "cand", register=False,
                  progress=lambda stage, done, total, note: stages.append(stage))
    assert "second_look" in stages and stages.index("second_look") > stages.index("train")
    parent_meta = read_metadata(site.parent)
    meta = res.metadata
    sl = meta["fine_tuning"]["second_look"]
    assert sl["action"] == "refitted" and sl["from"] == "0.0.5"
    # the vendor's eight films (two labelled clusters, six normal films with two simulated
    # clusters each) and the site's four (two marked by the reader, two normal)
    assert sl["vendor"]["images"] == 8 and sl["vendor"]["labelled_clusters"] == 2
    assert sl["vendor"]["synthetic_clusters"] == 12
    assert sl["site"]["images"] == 4 and sl["site"]["labelled_clusters"] == 2
    assert sl["site"]["synthetic_clusters"] == 4 and sl["phantoms"]["images"] == 0
    assert sl["site"]["labelled_cluster_hits"] >= 1, "the marked site clusters gave the trees no positive row"
    assert sl["vendor"]["labelled_cluster_hits"] >= 1 and sl["seconds"] >= 0
    # the tree settings came from the parent's metadata
    assert sl["trees"]["n_estimators"] == 20 and meta["hyper_parameters"]["second_look"]["trees"]["n_estimators"] == 20
    # the offset is recomputed from the combined real images' cluster rate
    v, s = sl["vendor"], sl["site"]
    rate = (v["labelled_cluster_hits"] + s["labelled_cluster_hits"] + 1.0) / (v["candidates"] + s["candidates"] + 2.0)
    assert sl["real_cluster_rate"] == pytest.approx(rate, abs=1e-5)
    assert sl["calc_offset"] == pytest.approx(prior_shift(sl["train_cluster_rate"], rate), abs=1e-3)
    assert meta["second_look"]["calc_offset"] == pytest.approx(sl["calc_offset"], abs=1e-12)
    assert sl["parent_calc_offset"] == parent_meta["second_look"]["calc_offset"]
    assert abs(sl["calc_offset"] - sl["parent_calc_offset"]) > 1e-6
    # the trees themselves differ from the parent's (same keys, other values)
    cand, par = _trees(res.path), _trees(site.parent)
    calc_keys = sorted(k for k in par if k.startswith("second_look.calc."))
    assert calc_keys == sorted(k for k in cand if k.startswith("second_look.calc."))
    assert any(cand[k].shape != par[k].shape or not np.array_equal(cand[k], par[k]) for k in calc_keys)
    assert len(cand["second_look.calc.roots"]) == 20
    # stage two: refitted on the new network's candidates, or kept when it proposed none
    st2 = sl["stage_two"]
    assert meta["second_look"]["has_stage2"]
    if st2["action"] == "refitted":
        assert st2["rows"] > 0 and st2["images"] == 12
    else:
        assert st2["action"] == "carried" and "no candidate" in st2["reason"]
    card = (res.path / "docs" / "README.md").read_text()
    assert "Second look: refitted" in card and "Calcification trees refitted on 8 vendor images" in card
    # the whole candidate runs, and its second look marks the site's clusters as calcifications
    engine = Engine.from_package(res.path, device="cpu", threads=1)
    assert engine.second_look is not None and engine.second_look.calc_offset == pytest.approx(sl["calc_offset"])
    films = [x for x in read_mias(site.site_films) if x.kinds]
    results = engine.predict_displays([x.load() for x in films], spacings=[0.2] * len(films))
    for x, r in zip(films, results, strict=True):
        calc = np.array([f.box for f in r.findings if f.kind == "calcification"]).reshape(-1, 4)
        assert hits(calc, x.circles).any(), f"{x.key}: the site's cluster is not marked as a calcification"
    # again: the vendor's examples come from the cache, and the package is the same bit for bit
    again = retrain(site.training, archive_file=site.archive, parent=site.parent, params=_params(),
                    out_dir=tmp_path / "cand-again", register=False)
    assert again.metadata["fine_tuning"]["second_look"]["vendor_examples_cached"]
    assert not sl["vendor_examples_cached"]
    assert again.weights_sha256 == res.weights_sha256 and again.version == res.version


def test_retrain_without_the_vendor_data_carries_the_second_look_and_says_why(site, tmp_path):
    from mammotriage.learning.retrain import retrain
    from mammotriage.model.package import read_metadata

    parent = _parent(tmp_path / "parent-elsewhere", site.vendor, tmp_path, source_path=str(tmp_path / "gone"))
    # the recorded folder is gone; the shared mini-MIAS (if present) has another hash
    res = retrain(site.training, archive_file=site.archive, parent=parent, params=_params(),
                  out_dir=tmp_path / "cand", register=False)
    sl = res.metadata["fine_tuning"]["second_look"]
    assert not res.metadata["fine_tuning"]["replay"]["available"]
    assert sl["action"] == "carried" and sl["from"] == "0.0.5"
    assert "unavailable" in sl["reason"] and "mias" in sl["reason"]
    assert res.metadata["second_look"] == read_metadata(parent)["second_look"]
    # the tree settings travel with the carried trees (a later refit uses the vendor's own)
    assert res.metadata["hyper_parameters"]["second_look"]["trees"] == {"n_estimators": 20}
    cand, par = _trees(res.path), _trees(parent)
    assert sorted(cand) == sorted(par) and par
    for k in par:
        np.testing.assert_array_equal(cand[k], par[k])
    assert "Second look: carried" in (res.path / "docs" / "README.md").read_text()
