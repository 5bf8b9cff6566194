"""mammotriage.dicom.sr and .seg: AI results as a TID 1500 Comprehensive SR and a fractional SEG."""

from __future__ import annotations

import subprocess
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.sr.codedict import codes

from mammotriage.dicom.seg import write_suspicion_seg
from mammotriage.dicom.sr import (
    FINDING_CODES,
    NOT_FOR_CLINICAL_USE,
    AlgorithmInfo,
    FindingRecord,
    save_dataset,
    write_findings_sr,
)
from mammotriage.phantom import PhantomExam, generate_exam
from mtsupport import make_mg_dataset, require_shared, require_tool

ALGO = AlgorithmInfo(name="mt-detector", version="1.2.0", weights_sha256="ab" * 32)
CBIS = ("dicom", "cbis-ddsm", "malignant-left-P_00820", "1-280.dcm")
KINDS = tuple(FINDING_CODES)


@pytest.fixture(scope="module")
def exam() -> PhantomExam:
    return generate_exam(11, rows=256, columns=208, normal=False)


@pytest.fixture(scope="module")
def cbis() -> pydicom.Dataset:
    return pydicom.dcmread(require_shared(*CBIS), stop_before_pixels=True)


def dciodvfy(path: Path) -> tuple[list[str], list[str]]:
    """(errors, warnings) of dciodvfy on ``path``."""
    exe = require_tool("dciodvfy")
    result = subprocess.run([exe, "-new", str(path)], capture_output=True, text=True, timeout=120)
    lines = (result.stdout + result.stderr).splitlines()
    errors = [line for line in lines if line.startswith("Error")]
    warnings = [line for line in lines if line.startswith("Warning")]
    return errors, warnings


def assert_valid(ds: pydicom.Dataset, path: Path) -> Path:
    save_dataset(ds, path)
    errors, _ = dciodvfy(path)
    assert errors == [], "\n".join(errors)
    return path


def findings_for(exam: PhantomExam) -> list[FindingRecord]:
    return [
        FindingRecord(lesion.sop_uid, tuple(float(v) for v in lesion.box), KINDS[i % 4],
                      round(0.3 + 0.1 * i, 3))
        for i, lesion in enumerate(exam.lesions)
    ]


def sources_of(exam: PhantomExam) -> list[pydicom.Dataset]:
    return [image.dataset for image in exam.images]


def equipment_item(ds: pydicom.Dataset) -> pydicom.Dataset:
    assert len(ds.ContributingEquipmentSequence) == 1
    return ds.ContributingEquipmentSequence[0]


def check_identity(ds: pydicom.Dataset, algorithm: AlgorithmInfo = ALGO) -> None:
    assert ds.SeriesDescription == NOT_FOR_CLINICAL_USE
    assert len(ds.SeriesDescription) <= 64
    item = equipment_item(ds)
    assert item.Manufacturer == algorithm.manufacturer
    assert item.ManufacturerModelName == algorithm.name
    assert item.SoftwareVersions == algorithm.version
    assert item.DeviceUID == algorithm.device_uid
    assert item.ContributionDescription == "AI detection, not for clinical use"
    assert "ContributionDateTime" in item
    purpose = item.PurposeOfReferenceCodeSequence[0]
    assert (purpose.CodeValue, purpose.CodingSchemeDesignator) == ("109102", "DCM")


# --------------------------------------------------------------------------- AlgorithmInfo


def test_device_uid_is_stable_and_changes_with_version_and_weights() -> None:
    same = AlgorithmInfo(name="mt-detector", version="1.2.0", weights_sha256="AB" * 32)
    assert ALGO.device_uid == same.device_uid  # hash case does not matter
    assert pydicom.uid.UID(ALGO.device_uid).is_valid
    assert ALGO.device_uid.startswith("2.25.")
    others = {
        AlgorithmInfo("mt-detector", "1.2.1", "ab" * 32).device_uid,
        AlgorithmInfo("mt-detector", "1.2.0", "cd" * 32).device_uid,
        AlgorithmInfo("other-model", "1.2.0", "ab" * 32).device_uid,
    }
    assert ALGO.device_uid not in others and len(others) == 3
    # manufacturer is not part of the model's identity
    renamed_vendor = AlgorithmInfo("mt-detector", "1.2.0", "ab" * 32, manufacturer="X")
    assert renamed_vendor.device_uid == ALGO.device_uid


@pytest.mark.parametrize("kwargs", [
    {"name": "", "version": "1", "weights_sha256": "ab" * 32},
    {"name": "m", "version": "1", "weights_sha256": "xyz"},
    {"name": "m" * 65, "version": "1", "weights_sha256": "ab" * 32},
])
def test_algorithm_info_rejects_bad_values(kwargs) -> None:
    with pytest.raises(ValueError):
        AlgorithmInfo(**kwargs)


# --------------------------------------------------------------------------- SR


def test_sr_of_phantom_exam_is_valid_and_round_trips(exam: PhantomExam, tmp_path: Path) -> None:
    findings = findings_for(exam)
    assert findings, "seed must give a phantom exam with lesions"
    sr = write_findings_sr(sources_of(exam), findings, ALGO, breast_scores={"L": 0.25, "R": 0.75},
                           exam_score=0.75, series_number=900, instance_number=3)
    path = assert_valid(sr, tmp_path / "sr.dcm")
    check_identity(sr)
    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.33"  # Comprehensive SR
    assert (sr.SeriesNumber, sr.InstanceNumber) == (900, 3)
    assert sr.StudyInstanceUID == exam.study_uid and sr.PatientID == exam.patient_id
    assert (sr.CompletionFlag, sr.VerificationFlag, sr.PreliminaryFlag) == (
        "COMPLETE", "UNVERIFIED", "PRELIMINARY")

    read = hd.sr.srread(path)
    # every source image is current requested procedure evidence
    evidence = {
        ref.ReferencedSOPInstanceUID
        for study in read.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for ref in series.ReferencedSOPSequence
    }
    assert evidence == {image.sop_uid for image in exam.images}

    report = read.content
    assert isinstance(report, hd.sr.MeasurementReport)
    assert report[0].ContentTemplateSequence[0].TemplateIdentifier == "1500"
    observer = report.get_observer_contexts(observer_type=codes.DCM.Device)[0]
    attrs = observer.observer_identifying_attributes
    assert attrs.uid == ALGO.device_uid
    assert attrs.name == ALGO.name
    assert attrs.model_name == ALGO.version
    procedures = [item for item in report[0].ContentSequence
                  if item.name == codes.DCM.ProcedureReported]
    assert procedures[0].value == codes.SCT.Mammography

    groups = report.get_planar_roi_measurement_groups()
    assert len(groups) == len(findings)
    tracking_uids = set()
    for group, finding in zip(groups, findings, strict=True):
        roi = group.roi
        assert roi.graphic_type == hd.sr.GraphicTypeValues.POLYLINE
        x0, y0, x1, y1 = finding.box
        np.testing.assert_allclose(
            roi.value, [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]])
        ref = roi.ContentSequence[0].ReferencedSOPSequence[0]
        assert ref.ReferencedSOPInstanceUID == finding.sop_uid
        assert group.finding_type == FINDING_CODES[finding.kind]
        scores = group.get_measurements(name=codes.DCM.ProbabilityOfCancer)
        assert len(scores) == 1
        assert scores[0].value == pytest.approx(finding.score)
        assert scores[0].unit == codes.UCUM.NoUnits
        tracking_uids.add(group.tracking_uid)
    assert len(tracking_uids) == len(findings)

    image_groups = {g.tracking_identifier: g for g in report.get_image_measurement_groups()}
    assert set(image_groups) == {"Left breast", "Right breast", "Exam"}
    for name, expected in (("Left breast", 0.25), ("Right breast", 0.75), ("Exam", 0.75)):
        values = [m.value for m in image_groups[name].get_measurements(
            name=codes.DCM.ProbabilityOfCancer)]
        assert values == [pytest.approx(expected)]
    left_sources = {img.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
                    for img in image_groups["Left breast"].source_images}
    assert left_sources == {image.sop_uid for image in exam.images if image.laterality == "L"}


def test_sr_passes_dcmtk_sr_checks(exam: PhantomExam, tmp_path: Path) -> None:
    exe = require_tool("dsrdump")
    path = save_dataset(write_findings_sr(sources_of(exam), findings_for(exam), ALGO),
                        tmp_path / "sr.dcm")
    result = subprocess.run([exe, "-v", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stderr.strip() == "", result.stderr
    assert "Probability of cancer" in result.stdout


def test_sr_without_findings_says_no_abnormality(exam: PhantomExam, tmp_path: Path) -> None:
    sr = write_findings_sr(sources_of(exam), [], ALGO)
    path = assert_valid(sr, tmp_path / "empty.dcm")
    report = hd.sr.srread(path).content
    assert report.get_planar_roi_measurement_groups() == []
    (group,) = report.get_image_measurement_groups()
    assert group.tracking_identifier == "Exam"
    assert group.finding_type == codes.DCM.NoAbnormality  # TID 1501 "Finding"
    assert group.get_measurements() == []
    check_identity(sr)


def test_sr_on_mtsupport_image_with_fractional_box(tmp_path: Path) -> None:
    ds = make_mg_dataset(rows=64, columns=48)
    finding = FindingRecord(ds.SOPInstanceUID, (0.0, 0.5, 48.0, 64.0), "calcification", 1.0)
    sr = write_findings_sr([ds], [finding], ALGO)
    assert_valid(sr, tmp_path / "sr.dcm")
    group = hd.sr.srread(tmp_path / "sr.dcm").content.get_planar_roi_measurement_groups()[0]
    np.testing.assert_allclose(group.roi.value[2], [48.0, 64.0])  # the full image is allowed
    assert group.finding_type == codes.SCT.CalcificationCluster
    assert "PatientBirthDate" not in ds  # the caller's dataset is left as it was


@pytest.mark.realdata
@pytest.mark.filterwarnings("ignore:The string .* is unlikely to represent:UserWarning")
def test_sr_of_cbis_secondary_capture_is_valid(cbis: pydicom.Dataset, tmp_path: Path) -> None:
    finding = FindingRecord(cbis.SOPInstanceUID, (1200.0, 2000.0, 1500.5, 2400.0), "mass", 0.91)
    sr = write_findings_sr([cbis], [finding], ALGO, breast_scores={"L": 0.91}, exam_score=0.91)
    path = assert_valid(sr, tmp_path / "cbis-sr.dcm")
    check_identity(sr)
    group = hd.sr.srread(path).content.get_planar_roi_measurement_groups()[0]
    assert group.roi.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPClassUID == \
        "1.2.840.10008.5.1.4.1.1.7"
    np.testing.assert_allclose(group.roi.value[0], [1200.0, 2000.0])
    np.testing.assert_allclose(group.roi.value[2], [1500.5, 2400.0])
    assert group.finding_sites[0].laterality == codes.SCT.Left  # from series Laterality


def test_sr_rejects_bad_input(exam: PhantomExam) -> None:
    sources = sources_of(exam)
    uid = exam.images[0].sop_uid
    rows, columns = exam.options.rows, exam.options.columns
    good = FindingRecord(uid, (10.0, 10.0, 20.0, 20.0), "mass", 0.5)
    cases = [
        ("not a source", FindingRecord("1.2.3.4", good.box, "mass", 0.5)),
        ("outside", FindingRecord(uid, (10.0, 10.0, columns + 1.0, 20.0), "mass", 0.5)),
        ("outside", FindingRecord(uid, (-1.0, 10.0, 5.0, 20.0), "mass", 0.5)),
        ("empty or outside", FindingRecord(uid, (10.0, 20.0, 30.0, 20.0), "mass", 0.5)),
        ("non-finite", FindingRecord(uid, (10.0, 10.0, float("inf"), 20.0), "mass", 0.5)),
        ("unknown kind", FindingRecord(uid, good.box, "cyst", 0.5)),
        (r"\[0, 1\]", FindingRecord(uid, good.box, "mass", 1.5)),
    ]
    for message, finding in cases:
        with pytest.raises(ValueError, match=message):
            write_findings_sr(sources, [good, finding], ALGO)
    with pytest.raises(ValueError, match="outside"):
        write_findings_sr(sources, [FindingRecord(uid, (0.0, 0.0, 5.0, rows + 0.5), "mass", 0.5)],
                          ALGO)
    with pytest.raises(ValueError, match="'L' or 'R'"):
        write_findings_sr(sources, [good], ALGO, breast_scores={"B": 0.5})
    with pytest.raises(ValueError, match="exam score"):
        write_findings_sr(sources, [good], ALGO, exam_score=float("nan"))
    with pytest.raises(ValueError, match="at least one source"):
        write_findings_sr([], [], ALGO)
    with pytest.raises(ValueError, match="given twice"):
        write_findings_sr([sources[0], sources[0]], [], ALGO)
    with pytest.raises(ValueError, match="studies"):
        write_findings_sr([sources[0], make_mg_dataset()], [], ALGO)


# --------------------------------------------------------------------------- SEG


def test_seg_of_phantom_image_maps_hot_spot_to_stored_pixels(exam: PhantomExam,
                                                            tmp_path: Path) -> None:
    source = exam.images[2].dataset
    factor = 4
    suspicion = np.zeros((256 // factor, 208 // factor), dtype=np.float32)
    suspicion[10:12, 20:23] = 1.0
    suspicion[30, 40] = 0.5
    seg = write_suspicion_seg(source, suspicion, ALGO, map_factor=factor)
    path = assert_valid(seg, tmp_path / "seg.dcm")
    check_identity(seg)
    assert seg.SeriesNumber == 901

    read = hd.seg.segread(path)
    assert read.SegmentationType == "FRACTIONAL"
    assert read.SegmentationFractionalType == "PROBABILITY"
    assert read.MaximumFractionalValue == 255
    assert (read.Rows, read.Columns) == (source.Rows, source.Columns)
    assert read.NumberOfFrames == 1
    frame = read.pixel_array
    assert frame.shape == (source.Rows, source.Columns)
    expected = np.zeros((256, 208), dtype=np.uint8)
    expected[40:48, 80:92] = 255
    expected[120:124, 160:164] = 128  # round(0.5 * 255)
    np.testing.assert_array_equal(frame, expected)
    (source_uid,) = read.get_source_image_uids()
    assert source_uid[2] == exam.images[2].sop_uid  # (study, series, SOP instance)
    frame_group = read.PerFrameFunctionalGroupsSequence[0]
    ref = frame_group.DerivationImageSequence[0].SourceImageSequence[0]
    assert ref.ReferencedSOPInstanceUID == exam.images[2].sop_uid

    (segment,) = read.SegmentSequence
    assert segment.SegmentLabel == "suspicion"
    assert segment.SegmentAlgorithmType == "AUTOMATIC"
    algo = segment.SegmentationAlgorithmIdentificationSequence[0]
    assert (algo.AlgorithmName, algo.AlgorithmVersion) == (ALGO.name, ALGO.version)
    assert algo.AlgorithmFamilyCodeSequence[0].CodeValue == "123110"
    assert segment.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "49755003"
    assert segment.SegmentedPropertyTypeCodeSequence[0].CodeValue == "52988006"
    assert list(read.PatientOrientation) == list(source.PatientOrientation)


def test_seg_with_two_segments_and_bilinear(exam: PhantomExam, tmp_path: Path) -> None:
    suspicion = np.zeros((2, 32, 26), dtype=np.float32)
    suspicion[0, 5, 5] = 1.0
    suspicion[1] = 0.25
    seg = write_suspicion_seg(exam.images[1].dataset, suspicion, ALGO, map_factor=8,
                              labels=("mass", "calcification"), interpolation="bilinear")
    path = assert_valid(seg, tmp_path / "seg2.dcm")
    read = hd.seg.segread(path)
    assert [s.SegmentLabel for s in read.SegmentSequence] == ["mass", "calcification"]
    frames = read.pixel_array
    assert frames.shape == (2, 256, 208)
    peak = frames[0].max()
    assert peak > 200
    rows, cols = np.nonzero(frames[0] == peak)
    assert set(rows) <= {43, 44} and set(cols) <= {43, 44}  # map pixel (5, 5) centre = 44.0
    assert np.all(frames[1] == 64)  # round(0.25 * 255)


def test_seg_of_all_zero_map_keeps_its_frame(tmp_path: Path) -> None:
    ds = make_mg_dataset(rows=64, columns=48)
    seg = write_suspicion_seg(ds, np.zeros((64, 48)), ALGO)
    assert_valid(seg, tmp_path / "zero.dcm")
    assert seg.NumberOfFrames == 1


@pytest.mark.realdata
@pytest.mark.filterwarnings("ignore:The string .* is unlikely to represent:UserWarning")
def test_seg_of_cbis_secondary_capture(cbis: pydicom.Dataset, tmp_path: Path) -> None:
    rows, columns = int(cbis.Rows), int(cbis.Columns)
    factor = 16
    suspicion = np.zeros((rows // factor, columns // factor), dtype=np.float32)
    suspicion[100, 50] = 1.0
    seg = write_suspicion_seg(cbis, suspicion, ALGO, map_factor=factor)
    path = assert_valid(seg, tmp_path / "cbis-seg.dcm")
    check_identity(seg)
    read = hd.seg.segread(path)
    frame = read.pixel_array
    assert frame.shape == (rows, columns)
    hot = np.argwhere(frame == 255)
    assert hot.min(axis=0).tolist() == [1600, 800] and hot.max(axis=0).tolist() == [1615, 815]
    assert int(frame.sum()) == 255 * factor * factor
    assert read.PatientOrientation in ("", None)  # source has the invalid single value "CC"


def test_seg_rejects_bad_input(exam: PhantomExam) -> None:
    source = exam.images[0].dataset
    with pytest.raises(ValueError, match="does not match"):
        write_suspicion_seg(source, np.zeros((32, 26)), ALGO, map_factor=4)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        write_suspicion_seg(source, np.full((256, 208), 1.5), ALGO)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        write_suspicion_seg(source, np.full((256, 208), np.nan), ALGO)
    with pytest.raises(ValueError, match="labels"):
        write_suspicion_seg(source, np.zeros((256, 208)), ALGO, labels=("a", "b"))
    with pytest.raises(ValueError, match="map_factor"):
        write_suspicion_seg(source, np.zeros((256, 208)), ALGO, map_factor=0)
    with pytest.raises(ValueError, match="shape"):
        write_suspicion_seg(source, np.zeros(10), ALGO)
    with pytest.raises(ValueError, match="interpolation"):
        write_suspicion_seg(source, np.zeros((256, 208)), ALGO, interpolation="cubic")


# --------------------------------------------------------------------------- files


def test_save_dataset_writes_part10_file(exam: PhantomExam, tmp_path: Path) -> None:
    sr = write_findings_sr(sources_of(exam), [], ALGO)
    path = save_dataset(sr, tmp_path / "nested" / "dir" / "sr.dcm")
    raw = path.read_bytes()
    assert raw[128:132] == b"DICM"
    back = pydicom.dcmread(path)
    assert back.file_meta.MediaStorageSOPInstanceUID == sr.SOPInstanceUID
    assert back.file_meta.MediaStorageSOPClassUID == sr.SOPClassUID


def test_seg_rle_lossless_is_small_and_valid(tmp_path) -> None:
    import subprocess

    import numpy as np

    from mammotriage.dicom.seg import AlgorithmInfo, save_dataset, write_suspicion_seg
    from mammotriage.phantom import generate_exam
    from mtsupport import require_tool

    dciodvfy = require_tool("dciodvfy")
    source = generate_exam(3, rows=512, columns=416).images[0].dataset
    suspicion = np.zeros((128, 104), np.float32)
    suspicion[30:40, 50:60] = 0.8
    algorithm = AlgorithmInfo("mammotriage-detector", "1.0.0", "ab" * 32)
    plain = save_dataset(write_suspicion_seg(source, suspicion, algorithm, map_factor=4.0), tmp_path / "a.dcm")
    rle = save_dataset(write_suspicion_seg(source, suspicion, algorithm, map_factor=4.0,
                                           transfer_syntax_uid="1.2.840.10008.1.2.5"), tmp_path / "b.dcm")
    assert rle.stat().st_size < plain.stat().st_size / 5
    out = subprocess.run([dciodvfy, str(rle)], capture_output=True, text=True)
    assert not [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("Error")]
    import pydicom

    np.testing.assert_array_equal(pydicom.dcmread(rle).pixel_array, pydicom.dcmread(plain).pixel_array)


def test_old_results_module_still_imports_with_a_deprecation_warning() -> None:
    import importlib
    import sys

    sys.modules.pop("mammotriage.dicom.results", None)
    with pytest.warns(DeprecationWarning, match="mammotriage.dicom.sr"):
        old = importlib.import_module("mammotriage.dicom.results")
    assert old.write_findings_sr is write_findings_sr and old.write_suspicion_seg is write_suspicion_seg
    assert old.AlgorithmInfo is AlgorithmInfo and old.FINDING_CODES is FINDING_CODES
    assert all(hasattr(old, name) for name in old.__all__)
