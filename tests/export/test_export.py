"""Export of a snapshot: layout, manifest, MONAI and COCO readers, SR validity, atomicity."""

from __future__ import annotations

import hashlib
import json
import subprocess
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest

from mammotriage.export import ExportError, export_snapshot
from mammotriage.store.events import KINDS, CorrectionLog
from mtsupport import require_tool


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def test_layout_and_manifest_hashes_every_file(exported: Path, labelled) -> None:
    manifest = json.loads((exported / "manifest.json").read_text())
    listed = {f["path"]: f for f in manifest["files"]}
    on_disk = {p.relative_to(exported).as_posix() for p in _files(exported)} - {"manifest.json"}
    assert set(listed) == on_disk
    for rel, entry in listed.items():
        data = (exported / rel).read_bytes()
        assert entry["sha256"] == hashlib.sha256(data).hexdigest(), rel
        assert entry["size"] == len(data)
    assert {"README.md", "datalist.json", "coco.json", "labels.json"} <= on_disk
    snapshot = labelled.snapshot
    assert manifest["snapshot"]["sha256"] == snapshot["sha256"]
    assert manifest["counts"]["images"] == len(snapshot["images"]) == 12
    assert manifest["counts"]["reviewed_images"] == 8 and manifest["counts"]["srs"] == 8
    assert manifest["deidentification"]["method_code"]["value"] == "113100"
    # the audit chain the labels came from, as pinned by the snapshot
    assert manifest["audit_head"] == snapshot["audit_head"]
    with CorrectionLog(labelled.archive) as log:
        assert manifest["audit_head"]["count"] == len(log.events()) > 0
        assert manifest["audit_head"]["mac"] == log.signed_head().mac
    assert len(list(exported.glob("images/*/*.dcm"))) == 12
    assert len(list(exported.glob("sr/*/*.sr.dcm"))) == 8
    readme = (exported / "README.md").read_text()
    for needle in ("xyxy", "first spatial axis = column", "manifest.json", "113100", "datalist.json",
                   "coco.json", "is_segmentation=False"):
        assert needle in readme


def test_datalist_loads_with_monai_and_boxes_match_monai_axes(exported: Path, labelled) -> None:
    monai_data = pytest.importorskip("monai.data")
    items = monai_data.load_decathlon_datalist(exported / "datalist.json",
                                               is_segmentation=False, data_list_key="training")
    assert len(items) == 8
    consensus = {img["sop_uid"]: img["consensus"] for img in labelled.snapshot["images"]}
    assert sum(len(i["box"]) for i in items) == sum(len(c) for c in consensus.values())
    for item in items:
        assert Path(item["image"]).is_file()
        assert len(item["box"]) == len(item["label"])
        for box, label in zip(item["box"], item["label"], strict=True):
            x0, y0, x1, y1 = box
            assert 0 <= x0 < x1 <= item["columns"] and 0 <= y0 < y1 <= item["rows"]
            assert 0 <= label < len(KINDS)
    data = json.loads((exported / "datalist.json").read_text())
    assert data["box_mode"] == "xyxy" and data["numTraining"] == 8
    assert len(data["unreviewed"]) == 4 and all(u["ai_box"] for u in data["unreviewed"])

    # The documented axis order: MONAI's PydicomReader gives (Columns, Rows), so a box
    # [x0, y0, x1, y1] with x = column indexes the array's first axis.
    from monai.transforms import LoadImage

    item = next(i for i in items if i["box"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        image = np.asarray(LoadImage(image_only=True, reader="PydicomReader")(item["image"]))
    stored = pydicom.dcmread(item["image"]).pixel_array
    assert image.shape[-2:] == (item["columns"], item["rows"]) == stored.shape[::-1]
    x0, y0, x1, y1 = (int(v) for v in item["box"][0])
    assert np.array_equal(image[..., x0:x1, y0:y1].reshape(x1 - x0, y1 - y0), stored[y0:y1, x0:x1].T)


def _check_coco_schema(coco: dict) -> None:
    assert set(coco) >= {"images", "annotations", "categories"}
    image_ids = {im["id"] for im in coco["images"]}
    assert len(image_ids) == len(coco["images"])
    for im in coco["images"]:
        assert isinstance(im["id"], int) and isinstance(im["file_name"], str)
        assert isinstance(im["width"], int) and isinstance(im["height"], int)
    cat_ids = {c["id"] for c in coco["categories"]}
    assert [c["name"] for c in coco["categories"]] == list(KINDS)
    ann_ids = set()
    sizes = {im["id"]: (im["width"], im["height"]) for im in coco["images"]}
    for ann in coco["annotations"]:
        assert ann["id"] not in ann_ids
        ann_ids.add(ann["id"])
        assert ann["image_id"] in image_ids and ann["category_id"] in cat_ids
        x, y, w, h = ann["bbox"]
        width, height = sizes[ann["image_id"]]
        assert w > 0 and h > 0 and x >= 0 and y >= 0 and x + w <= width and y + h <= height
        assert ann["area"] == pytest.approx(w * h, abs=0.01) and ann["iscrowd"] == 0
        assert all(len(poly) >= 6 and len(poly) % 2 == 0 for poly in ann["segmentation"])


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # pycocotools on numpy 2
def test_coco_loads_and_agrees_with_datalist(exported: Path) -> None:
    path = exported / "coco.json"
    coco = json.loads(path.read_text())
    _check_coco_schema(coco)
    datalist = json.loads((exported / "datalist.json").read_text())["training"]
    by_file = {im["file_name"]: im["id"] for im in coco["images"]}
    assert set(by_file) == {i["image"] for i in datalist}
    for item in datalist:
        anns = [a for a in coco["annotations"] if a["image_id"] == by_file[item["image"]]]
        got = sorted((round(a["bbox"][0], 3), round(a["bbox"][1], 3), round(a["bbox"][0] + a["bbox"][2], 3),
                      round(a["bbox"][1] + a["bbox"][3], 3), a["category_id"] - 1) for a in anns)
        want = sorted((*(round(v, 3) for v in box), label) for box, label in zip(item["box"], item["label"],
                                                                                 strict=True))
        assert len(got) == len(want)
        assert np.allclose(np.array(got, dtype=float).reshape(-1, 5), np.array(want, dtype=float).reshape(-1, 5),
                           atol=2e-3)
    try:
        from pycocotools.coco import COCO
    except ImportError:
        return
    api = COCO(str(path))
    assert len(api.getImgIds()) == len(coco["images"]) == 8
    assert len(api.getAnnIds()) == len(coco["annotations"]) > 0
    ann = api.loadAnns(api.getAnnIds())[0]
    assert api.annToMask(ann).sum() > 0  # the outline polygon rasterises


def test_each_sr_passes_dciodvfy_and_references_the_deidentified_image(exported: Path) -> None:
    exe = require_tool("dciodvfy")
    datalist = json.loads((exported / "datalist.json").read_text())["training"]
    assert len(datalist) == 8
    for item in datalist:
        sr_path = exported / item["sr"]
        result = subprocess.run([exe, "-new", str(sr_path)], capture_output=True, text=True, timeout=60)
        errors = [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")]
        assert errors == [], f"{item['sr']}:\n" + "\n".join(errors)
        sr = pydicom.dcmread(sr_path)
        image = pydicom.dcmread(exported / item["image"], stop_before_pixels=True)
        assert sr.StudyInstanceUID == image.StudyInstanceUID == item["study"]
        assert sr.PatientID == image.PatientID == item["patient"]
        (evidence,) = sr.CurrentRequestedProcedureEvidenceSequence
        refs = [r.ReferencedSOPInstanceUID for s in evidence.ReferencedSeriesSequence
                for r in s.ReferencedSOPSequence]
        assert refs == [image.SOPInstanceUID] == [item["sop"]]
        assert sr.ContentTemplateSequence[0].TemplateIdentifier == "1500"
        groups = [c for c in sr.ContentSequence if c.ValueType == "CONTAINER"
                  for c in c.get("ContentSequence", []) if c.ValueType == "CONTAINER"]
        regions = [c for g in groups for c in g.ContentSequence if c.ValueType == "SCOORD"]
        assert len(regions) == len(item["box"])
        for region in regions:
            assert region.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == item["sop"]
    image_path = exported / datalist[0]["image"]
    result = subprocess.run([exe, "-new", str(image_path)], capture_output=True, text=True, timeout=60)
    assert [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")] == []


def test_labels_json_keeps_readers_original_and_final(exported: Path, labelled) -> None:
    labels = json.loads((exported / "labels.json").read_text())
    assert labels["readers"] == ["reader-1", "reader-2", "reader-3"]
    assert labels["consensus"]["rule"] == "union"
    text = (exported / "labels.json").read_text()
    assert "dr_a" not in text and "dr_b" not in text and "dr_c" not in text
    reviewed = [img for img in labels["images"] if img["reviewed"]]
    assert len(reviewed) == 8
    for img in reviewed:
        assert img["original"] and img["original"][0]["model_version"] == "v1"
        for mark in img["original"][0]["marks"]:
            assert mark["label_id"].startswith(f"ai:v1:{img['sop']}:")
        assert set(img["readers"]) <= {"reader-1", "reader-2", "reader-3"}
    statuses = {lab["status"] for img in reviewed for labs in img["readers"].values() for lab in labs}
    assert {"accepted", "rejected", "added", "unreviewed"} <= statuses
    pair = next(p for p in labels["agreement"]["pairs"] if p["readers"] == ["reader-1", "reader-2"])
    assert pair["birads_kappa"]["n"] == 2


def test_existing_output_is_never_overwritten(exported: Path, labelled) -> None:
    before = {p: p.stat().st_mtime_ns for p in _files(exported)}
    with pytest.raises(ExportError, match="already exists"):
        export_snapshot(labelled.snapshot, exported, archive_file=labelled.archive)
    assert {p: p.stat().st_mtime_ns for p in _files(exported)} == before


def test_a_crash_mid_export_leaves_only_a_partial_folder(labelled, tmp_path: Path) -> None:
    out = tmp_path / "crashed"

    def progress(done: int, total: int, note: str) -> None:
        if done == 5:
            raise RuntimeError("simulated crash")

    with pytest.raises(RuntimeError, match="simulated crash"):
        export_snapshot(labelled.snapshot, out, archive_file=labelled.archive, progress=progress)
    assert not out.exists()
    (partial,) = list(tmp_path.iterdir())
    assert partial.name.startswith("crashed.partial-")
    assert not (partial / "manifest.json").exists()
    assert len(list(partial.rglob("*.dcm"))) >= 5


def test_images_that_cannot_be_trusted_are_excluded(tmp_path: Path) -> None:
    """Burned In Annotation YES or absent, and a source changed after the snapshot."""
    from mammotriage.phantom import generate_exam
    from mammotriage.store import Archive
    from mammotriage.store.datasets import create_snapshot
    from mammotriage.store.events import CorrectionLog

    exam = generate_exam(5, exam_number=1, normal=True, rows=256, columns=208)
    exam.images[1].dataset.BurnedInAnnotation = "YES"
    del exam.images[2].dataset.BurnedInAnnotation
    paths = exam.save(tmp_path / "src")
    archive_file = tmp_path / "home" / "archive.sqlite"
    with Archive(archive_file) as archive:
        archive.import_paths([tmp_path / "src"])
        (record,) = archive.exams()
    with CorrectionLog(archive_file) as log:
        log.append(reader="dr_a", exam_key=record.exam_key, action="birads", payload={"birads": 1})
    snap = create_snapshot(archive_file)
    changed = paths["LMLO"]
    ds = pydicom.dcmread(changed)
    ds.InstitutionName = "Changed after the snapshot"
    ds.save_as(changed)

    out = tmp_path / "out"
    report = export_snapshot(snap.sha256, out, archive_file=archive_file)
    reasons = {f"{e['laterality']}{e['view']}": e["reason"] for e in report.excluded}
    assert set(reasons) == {"LCC", "RMLO", "LMLO"}
    assert "Burned In Annotation is YES" in reasons["LCC"]
    assert "Burned In Annotation is absent" in reasons["RMLO"]
    assert "changed since the snapshot" in reasons["LMLO"]
    assert report.images == 1 and len(list(out.glob("images/*/*.dcm"))) == 1
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["excluded"] == report.excluded
    datalist = json.loads((out / "datalist.json").read_text())
    assert [i["box"] for i in datalist["training"]] == [[]]  # reviewed, no finding
    assert "Burned In Annotation is YES" in (out / "README.md").read_text()
