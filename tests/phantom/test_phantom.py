"""Tests of the synthetic screening-exam phantom (mammotriage.phantom)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, RLELossless

from mammotriage.dicom import read_metadata
from mammotriage.dicom.hanging import display_orientation
from mammotriage.phantom import (
    GROUND_TRUTH_NAME,
    ImageOptions,
    PhantomExam,
    anatomy,
    generate_exam,
    write_demo_set,
)
from mammotriage.phantom.writer import chest_wall_on_right
from mtsupport import require_tool

#: Seeds whose exams hold lesions of every kind between them (checked below).
LESION_SEEDS = range(12)
#: Width of the band of pixels around a box taken as the lesion's surroundings.
RING = 3


def _tissue_bright(exam: PhantomExam, pixels: np.ndarray) -> np.ndarray:
    """Stored values turned so that tissue is bright (MONOCHROME2 sense), as float."""
    values = pixels.astype(np.float64)
    if exam.options.photometric == "MONOCHROME1":
        values = exam.options.max_value - values
    return values


def _ring(shape: tuple[int, int], box: tuple[int, int, int, int], width: int) -> np.ndarray:
    """Mask of the pixels within ``width`` of a half-open box, outside the box."""
    x0, y0, x1, y1 = box
    mask = np.zeros(shape, dtype=bool)
    mask[max(0, y0 - width) : y1 + width, max(0, x0 - width) : x1 + width] = True
    mask[y0:y1, x0:x1] = False
    return mask


def _dciodvfy_errors(path: Path) -> list[str]:
    """Lines of ``dciodvfy`` output that report an error (skips if it is missing)."""
    exe = require_tool("dciodvfy")
    done = subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=60, check=False)
    lines = (done.stdout + done.stderr).splitlines()
    return [line for line in lines if line.startswith("Error")]


@pytest.fixture(scope="module")
def exam() -> PhantomExam:
    """A small exam with lesions, uncompressed MONOCHROME2, standard layout."""
    return generate_exam(3, normal=False)


@pytest.fixture(scope="module")
def lesion_exams() -> list[PhantomExam]:
    """Small exams that all hold lesions."""
    return [generate_exam(seed, normal=False) for seed in LESION_SEEDS]


# --- determinism -----------------------------------------------------------------------


def test_same_seed_gives_identical_exam(exam: PhantomExam) -> None:
    again = generate_exam(3, normal=False)
    assert again.study_uid == exam.study_uid
    assert again.lesions == exam.lesions
    for a, b in zip(exam.images, again.images, strict=True):
        assert a.sop_uid == b.sop_uid
        assert a.pixels.tobytes() == b.pixels.tobytes()
        assert a.dataset.PixelData == b.dataset.PixelData
        assert a.dataset.StudyDate == b.dataset.StudyDate


def test_different_seed_gives_different_exam(exam: PhantomExam) -> None:
    other = generate_exam(4, normal=False)
    assert other.study_uid != exam.study_uid
    assert other.patient_id != exam.patient_id
    for a, b in zip(exam.images, other.images, strict=True):
        assert a.sop_uid != b.sop_uid
        assert not np.array_equal(a.pixels, b.pixels)


def test_exam_number_changes_the_exam() -> None:
    first, second = generate_exam(5, exam_number=1), generate_exam(5, exam_number=2)
    assert first.study_uid != second.study_uid
    assert not np.array_equal(first.images[0].pixels, second.images[0].pixels)


def test_uids_are_unique_and_valid(exam: PhantomExam) -> None:
    uids = [exam.study_uid, str(exam.images[0].dataset.SeriesInstanceUID)]
    uids += [image.sop_uid for image in exam.images]
    assert len(set(uids)) == len(uids)
    for uid in uids:
        assert uid.startswith("2.25.") and len(uid) <= 64
        assert pydicom.uid.UID(uid).is_valid


# --- DICOM validity --------------------------------------------------------------------

VARIANTS = {
    "explicit": {},
    "rle": {"transfer_syntax": "rle"},
    "jpeg2000": {"transfer_syntax": "jpeg2000", "bits_stored": 16},
    "monochrome1": {"photometric": "MONOCHROME1", "bits_stored": 14},
    "mirrored": {"stored_layout": "mirrored", "transfer_syntax": RLELossless},
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_written_files_pass_dciodvfy(tmp_path: Path, variant: str) -> None:
    exam = generate_exam(8, normal=False, **VARIANTS[variant])
    paths = exam.save(tmp_path)
    assert sorted(paths) == ["LCC", "LMLO", "RCC", "RMLO"]
    for label, path in paths.items():
        assert _dciodvfy_errors(path) == [], label
        ds = pydicom.dcmread(path)
        assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.1.2"
        assert ds.file_meta.TransferSyntaxUID == exam.options.transfer_syntax_uid
        assert ds.file_meta.ImplementationClassUID
        assert ds.Modality == "MG"
        assert ds.PresentationIntentType == "FOR PRESENTATION"
        assert ds.ImageLaterality == label[0]
        assert ds.ViewPosition == label[1:]
        assert ds.ViewCodeSequence[0].CodingSchemeDesignator == "SCT"
        assert (
            ds.ViewCodeSequence[0].CodeValue == {"CC": "399162004", "MLO": "399368009"}[label[1:]]
        )
        assert ds.AnatomicRegionSequence[0].CodeValue == "76752008"
        assert ds.BitsStored == exam.options.bits_stored and ds.BitsAllocated == 16
        assert ds.PresentationLUTShape == (
            "INVERSE" if exam.options.photometric == "MONOCHROME1" else "IDENTITY"
        )
        assert list(ds.WindowCenterWidthExplanation) == ["NORMAL", "DENSE"]
        assert str(ds.PatientName).startswith("PHANTOM^EXAM")


@pytest.mark.parametrize("syntax", ["rle", "jpeg2000", RLELossless, JPEG2000Lossless])
def test_lossless_round_trip(tmp_path: Path, exam: PhantomExam, syntax: str) -> None:
    compressed = generate_exam(3, normal=False, transfer_syntax=syntax)
    assert compressed.study_uid == exam.study_uid  # same content, other encoding
    paths = compressed.save(tmp_path)
    for plain, packed in zip(exam.images, compressed.images, strict=True):
        assert packed.dataset.file_meta.TransferSyntaxUID != ExplicitVRLittleEndian
        assert packed.sop_uid == plain.sop_uid
        np.testing.assert_array_equal(packed.dataset.pixel_array, plain.pixels)
        np.testing.assert_array_equal(
            pydicom.dcmread(paths[packed.label]).pixel_array, plain.pixels
        )


def test_stored_values_fit_bits_stored() -> None:
    for bits in (12, 16):
        exam = generate_exam(2, bits_stored=bits)
        for image in exam.images:
            assert image.pixels.dtype == np.uint16
            assert int(image.pixels.max()) <= (1 << bits) - 1
            np.testing.assert_array_equal(image.dataset.pixel_array, image.pixels)


def test_monochrome1_inverts_the_stored_values(exam: PhantomExam) -> None:
    inverted = generate_exam(3, normal=False, photometric="MONOCHROME1")
    top = exam.options.max_value
    for plain, inv in zip(exam.images, inverted.images, strict=True):
        np.testing.assert_array_equal(inv.pixels, top - plain.pixels.astype(np.int64))
        assert inv.dataset.PhotometricInterpretation == "MONOCHROME1"
        # air, opposite the chest wall, is bright in a MONOCHROME1 image
        far = 0 if inv.dataset.PatientOrientation[0] == "P" else -1
        assert inv.pixels[:, far].mean() > 0.9 * top
    assert [lesion.box for lesion in inverted.lesions] == [lesion.box for lesion in exam.lesions]


def test_invalid_options_are_refused() -> None:
    with pytest.raises(ValueError):
        ImageOptions(bits_stored=10)
    with pytest.raises(ValueError):
        ImageOptions(rows=512, columns=600)
    with pytest.raises(ValueError):
        ImageOptions(rows=512, pixel_spacing_mm=0.1)  # a 51 mm field of view
    with pytest.raises(ValueError):
        ImageOptions(transfer_syntax="jpeg-ls")
    with pytest.raises(ValueError):
        ImageOptions(stored_layout="flipped")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        generate_exam(1, colour=True)


# --- geometry --------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["standard", "mirrored"])
@pytest.mark.parametrize("photometric", ["MONOCHROME2", "MONOCHROME1"])
def test_chest_wall_is_where_patient_orientation_says(layout: str, photometric: str) -> None:
    exam = generate_exam(6, stored_layout=layout, photometric=photometric)
    for image in exam.images:
        values = _tissue_bright(exam, image.pixels)
        band = max(2, values.shape[1] // 20)
        left, right = values[:, :band].mean(), values[:, -band:].mean()
        row_direction = image.dataset.PatientOrientation[0]
        # increasing column index toward posterior: the chest wall is on the right
        chest, far = (right, left) if row_direction == "P" else (left, right)
        assert chest > 2 * far and chest - far > 0.1 * exam.options.max_value, image.label
        standard_side = "P" if image.laterality == "R" else "A"
        assert (row_direction == standard_side) == (layout == "standard")
        assert image.dataset.PatientOrientation[1] == (
            "F" if image.view == "MLO" else {"R": "L", "L": "R"}[image.laterality]
        )


def test_product_hanging_shows_both_layouts_alike(tmp_path: Path) -> None:
    shown: dict[str, dict[str, np.ndarray]] = {}
    for layout in ("standard", "mirrored"):
        exam = generate_exam(6, stored_layout=layout, photometric="MONOCHROME1")
        paths = exam.save(tmp_path / layout)
        shown[layout] = {}
        for image in exam.images:
            meta = read_metadata(paths[image.label])
            assert meta.label == image.label
            orientation = display_orientation(meta)
            assert orientation.source == "PatientOrientation"
            on_right = chest_wall_on_right(image.laterality, layout)
            assert orientation.chest_wall == ("right" if on_right else "left")
            shown[layout][image.label] = orientation.apply(image.pixels)
    for label, picture in shown["standard"].items():
        np.testing.assert_array_equal(shown["mirrored"][label], picture)


def test_mirrored_layout_flips_pixels_and_boxes(exam: PhantomExam) -> None:
    mirrored = generate_exam(3, normal=False, stored_layout="mirrored")
    columns = exam.options.columns
    for plain, flipped in zip(exam.images, mirrored.images, strict=True):
        np.testing.assert_array_equal(flipped.pixels, plain.pixels[:, ::-1])
        assert flipped.sop_uid != plain.sop_uid
    assert len(mirrored.lesions) == len(exam.lesions) > 0
    for plain, flipped in zip(exam.lesions, mirrored.lesions, strict=True):
        x0, y0, x1, y1 = plain.box
        assert flipped.box == (columns - x1, y0, columns - x0, y1)


def test_air_is_dark_and_tissue_bright(exam: PhantomExam) -> None:
    top = exam.options.max_value
    for image in exam.images:
        values = image.pixels.astype(np.float64)
        chest_right = image.dataset.PatientOrientation[0] == "P"
        far_column = values[:, 0] if chest_right else values[:, -1]
        assert far_column.mean() < 0.08 * top
        centre_row = values[values.shape[0] // 2]
        tissue = centre_row[-20:] if chest_right else centre_row[:20]
        assert 0.2 * top < tissue.mean() < 0.9 * top


# --- lesions and ground truth ----------------------------------------------------------


def test_lesion_seeds_cover_every_kind(lesion_exams: list[PhantomExam]) -> None:
    kinds = {(lesion.kind, lesion.subtype) for e in lesion_exams for lesion in e.lesions}
    assert kinds == {
        ("mass", "circumscribed"),
        ("mass", "spiculated"),
        ("calcification", "cluster"),
    }


def test_lesions_are_inside_their_boxes(lesion_exams: list[PhantomExam]) -> None:
    for exam in lesion_exams:
        assert exam.lesions and not exam.normal
        top = exam.options.max_value
        for lesion in exam.lesions:
            image = exam.image(lesion.laterality, lesion.view)
            values = _tissue_bright(exam, image.pixels)
            x0, y0, x1, y1 = lesion.box
            assert 0 <= x0 < x1 <= values.shape[1] and 0 <= y0 < y1 <= values.shape[0]
            ring = values[_ring(values.shape, lesion.box, RING)]
            if lesion.kind == "mass":
                w, h = x1 - x0, y1 - y0
                core = values[y0 + h // 3 : y1 - h // 3, x0 + w // 3 : x1 - w // 3]
                assert core.mean() - ring.mean() > 0.01 * top, (exam.seed, lesion)
            else:
                assert values[y0:y1, x0:x1].max() - ring.max() > 0.05 * top, (exam.seed, lesion)


def test_each_lesion_is_in_both_views_of_its_breast(lesion_exams: list[PhantomExam]) -> None:
    for exam in lesion_exams:
        by_id: dict[int, list] = {}
        for lesion in exam.lesions:
            assert lesion.sop_uid == exam.image(lesion.laterality, lesion.view).sop_uid
            by_id.setdefault(lesion.lesion_id, []).append(lesion)
        for entries in by_id.values():
            assert sorted(entry.view for entry in entries) == ["CC", "MLO"]
            assert len({entry.laterality for entry in entries}) == 1
            assert len({(entry.kind, entry.subtype, entry.malignant) for entry in entries}) == 1


def test_lesion_is_at_the_same_distance_from_the_nipple_in_both_views(
    lesion_exams: list[PhantomExam],
) -> None:
    spacing = lesion_exams[0].options.spacing_mm
    for exam in lesion_exams:
        distance = {}
        for lesion in exam.lesions:
            values = _tissue_bright(exam, exam.image(lesion.laterality, lesion.view).pixels)
            tissue_columns = np.flatnonzero((values > 0.15 * exam.options.max_value).any(axis=0))
            chest_right = (
                exam.image(lesion.laterality, lesion.view).dataset.PatientOrientation[0] == "P"
            )
            nipple = tissue_columns[0] if chest_right else tissue_columns[-1] + 1
            centre = (lesion.box[0] + lesion.box[2]) / 2
            distance[(lesion.lesion_id, lesion.view)] = abs(centre - nipple) * spacing
        for lesion_id in {key[0] for key in distance}:
            assert abs(distance[(lesion_id, "CC")] - distance[(lesion_id, "MLO")]) < 10.0


def test_drawn_lesion_box_is_tight() -> None:
    rng = np.random.default_rng(0)
    rows, columns, spacing = 512, 416, 240 / 512
    for seed in range(6):
        spec = anatomy.sample_exam(np.random.default_rng(seed), normal=False)
        for lesion in spec.lesions:
            breast = spec.breasts[lesion.laterality]
            shapes = {
                "CC": anatomy.shape_in_pixels(breast.cc, rows, columns),
                "MLO": anatomy.shape_in_pixels(breast.mlo, rows, columns),
            }
            centres = anatomy.lesion_centres(lesion, shapes, rows, spacing)
            for view, shape in shapes.items():
                canvas = anatomy.render_tissue(shape, rows, columns, spacing, spec.density, rng)
                before = canvas.copy()
                drawn = anatomy.draw_lesion(canvas, lesion, view, centres[view], spacing)
                added = (canvas - before) / lesion.contrast
                x0, y0, x1, y1 = drawn.box
                # float rounding of (canvas - before) stays far below this tolerance
                strong = added > anatomy.BOX_THRESHOLD + 1e-4
                touching = added >= anatomy.BOX_THRESHOLD - 1e-4
                inside = np.zeros_like(strong)
                inside[y0:y1, x0:x1] = True
                assert not (strong & ~inside).any()
                # every edge of the box touches the lesion
                assert touching[y0, x0:x1].any() and touching[y1 - 1, x0:x1].any()
                assert touching[y0:y1, x0].any() and touching[y0:y1, x1 - 1].any()
                # the lesion lies in the breast, clear of the skin line
                ys, xs = np.nonzero(strong)
                assert shape.rho(xs, ys).max() < 1.0


def test_normal_exam_has_no_lesions() -> None:
    normal = generate_exam(9, normal=True)
    assert normal.normal and normal.lesions == ()
    assert normal.ground_truth()["normal"] is True
    assert normal.ground_truth()["lesions"] == []


def test_lesion_mix_follows_the_pathology_model() -> None:
    specs = [anatomy.sample_exam(np.random.default_rng(seed)) for seed in range(300)]
    assert 0.25 < np.mean([spec.normal for spec in specs]) < 0.42
    lesions = [lesion for spec in specs for lesion in spec.lesions]
    rate = {
        subtype: np.mean([lesion.malignant for lesion in lesions if lesion.subtype == subtype])
        for subtype in ("circumscribed", "spiculated", "cluster")
    }
    assert rate["spiculated"] > 0.7 and rate["cluster"] > 0.5 and rate["circumscribed"] < 0.35


def test_demo_set_ground_truth_schema(tmp_path: Path) -> None:
    path = write_demo_set(tmp_path, 3, seed=21)
    assert path == tmp_path / GROUND_TRUTH_NAME
    truth = json.loads(path.read_text(encoding="utf-8"))
    assert truth["generator"] == "mammotriage.phantom"
    assert truth["version"] == 1 and truth["seed"] == 21
    assert len(truth["exams"]) == 3
    assert [exam["normal"] for exam in truth["exams"]] == [False, False, True]
    study_uids = set()
    for exam in truth["exams"]:
        assert set(exam) == {"study_uid", "patient_id", "normal", "images", "lesions"}
        study_uids.add(exam["study_uid"])
        sops = {}
        for image in exam["images"]:
            assert set(image) == {"sop_uid", "file", "laterality", "view"}
            assert not Path(image["file"]).is_absolute()
            ds = pydicom.dcmread(tmp_path / image["file"])
            assert ds.SOPInstanceUID == image["sop_uid"]
            assert ds.StudyInstanceUID == exam["study_uid"]
            assert ds.PatientID == exam["patient_id"]
            assert ds.ImageLaterality == image["laterality"]
            assert ds.ViewPosition == image["view"]
            sops[image["sop_uid"]] = (ds.Rows, ds.Columns)
        assert sorted(image["laterality"] + image["view"] for image in exam["images"]) == [
            "LCC",
            "LMLO",
            "RCC",
            "RMLO",
        ]
        assert exam["normal"] == (exam["lesions"] == [])
        for lesion in exam["lesions"]:
            assert {"sop_uid", "box", "kind", "subtype", "malignant"} <= set(lesion)
            assert lesion["kind"] in ("mass", "calcification")
            assert lesion["subtype"] in ("circumscribed", "spiculated", "cluster")
            assert isinstance(lesion["malignant"], bool)
            rows, columns = sops[lesion["sop_uid"]]
            x0, y0, x1, y1 = lesion["box"]
            assert all(isinstance(v, int) for v in lesion["box"])
            assert 0 <= x0 < x1 <= columns and 0 <= y0 < y1 <= rows
    assert len(study_uids) == 3
    # the set is reproducible file for file
    again = write_demo_set(tmp_path / "again", 3, seed=21)
    assert json.loads(again.read_text(encoding="utf-8")) == truth
    for exam in truth["exams"]:
        for image in exam["images"]:
            first = (tmp_path / image["file"]).read_bytes()
            assert (tmp_path / "again" / image["file"]).read_bytes() == first


@pytest.mark.slow
def test_full_size_view(tmp_path: Path) -> None:
    exam = generate_exam(1, normal=False, rows=4096, columns=3328)
    image = exam.images[0]
    assert image.pixels.shape == (4096, 3328)
    assert float(image.dataset.ImagerPixelSpacing[0]) == pytest.approx(240 / 4096, rel=1e-4)
    for lesion in exam.lesions:
        x0, y0, x1, y1 = lesion.box
        assert 0 <= x0 < x1 <= 3328 and 0 <= y0 < y1 <= 4096
    path = tmp_path / "RCC.dcm"
    image.dataset.save_as(path, enforce_file_format=True)
    assert _dciodvfy_errors(path) == []


def test_a_prior_is_the_same_patient_earlier_with_the_lesion_smaller() -> None:
    current = generate_exam(9, exam_number=1, normal=False, rows=256, columns=208)
    prior = generate_exam(9, exam_number=1, normal=False, years_before=2, rows=256, columns=208)
    cur_ds, pri_ds = current.images[0].dataset, prior.images[0].dataset
    assert prior.patient_id == current.patient_id and pri_ds.PatientName == cur_ds.PatientName
    assert pri_ds.PatientBirthDate == cur_ds.PatientBirthDate
    assert pri_ds.StudyDate < cur_ds.StudyDate
    assert prior.study_uid != current.study_uid
    assert {i.sop_uid for i in prior.images}.isdisjoint({i.sop_uid for i in current.images})
    first = [les for les in current.lesions if les.lesion_id == 0]
    earlier = [les for les in prior.lesions if les.lesion_id == 0]
    assert len(earlier) == len(first) and {les.lesion_id for les in prior.lesions} == {0}
    for a, b in zip(sorted(earlier, key=lambda x: x.view), sorted(first, key=lambda x: x.view), strict=True):
        assert (a.box[2] - a.box[0]) < (b.box[2] - b.box[0])
    normal_now = generate_exam(9, exam_number=3, normal=True, rows=256, columns=208)
    normal_then = generate_exam(9, exam_number=3, normal=True, years_before=1, rows=256, columns=208)
    assert normal_then.normal and normal_now.normal
    # stable: the same breast, the same tissue
    assert np.array_equal(normal_then.images[0].pixels, normal_now.images[0].pixels)


def test_film_exam_stores_real_pixels_with_a_self_consistent_orientation(tmp_path: Path) -> None:
    """Real film (mini-MIAS) as MG DICOM: pixels and label coordinates kept, the header's
    chest wall where the pixels have it (either way round), the window the whole range."""
    from PIL import Image

    from mammotriage.dicom import read_image
    from mammotriage.dicom.hanging import chest_wall_from_pixels
    from mammotriage.model.preprocess import display_from_mammo
    from mammotriage.phantom.writer import film_exam
    from mtsupport import require_shared

    mias = require_shared("mias", "dev")
    png = np.asarray(Image.open(mias / "mdb001.png").convert("L"))
    views = [(png, "R", "MLO", "mdb001"), (np.ascontiguousarray(png[:, ::-1]), "L", "MLO", "mdb001-flipped")]
    datasets = film_exam(views, patient_id="FILM-1", patient_name="FILM^ONE", exam_number=1, spacing_mm=0.2)
    assert len({ds.StudyInstanceUID for ds in datasets}) == 1
    assert len({ds.SOPInstanceUID for ds in datasets}) == 2
    for ds, (pixels, laterality, _, _) in zip(datasets, views, strict=True):
        path = tmp_path / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        image = read_image(path)
        assert image.meta.laterality == laterality and image.meta.view == "MLO"
        assert image.pixels.shape == pixels.shape
        np.testing.assert_array_equal(image.pixels, np.rint(pixels * (4095 / 255)).astype(np.uint16))
        display = display_from_mammo(image.meta, image.pixels)
        assert np.abs(display.astype(int) - pixels.astype(int)).max() <= 1  # the full-range window
        orientation = display_orientation(image.meta)
        assert orientation.source == "PatientOrientation"
        assert orientation.chest_wall == ("right" if laterality == "R" else "left")  # where mdb001's tissue is
    assert chest_wall_from_pixels(png) == "unknown"  # the film's borders hide the edge band: the tissue's half decides
    assert datasets[0].PatientOrientation != datasets[1].PatientOrientation  # mirrored pixels, mirrored header
