"""The export holds no identifying value of its source images (and the scan can see one).

The scan here is written independently of :mod:`mammotriage.export.phi`: every file of
the export is walked; DICOM files element by element, everything else as text.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset

from mammotriage.export.phi import phi_needles, scan_folder

TEXT_KEYWORDS = ("PatientName", "PatientID", "AccessionNumber", "InstitutionName",
                 "ReferringPhysicianName", "OtherPatientIDs", "InstitutionAddress")
DATE_KEYWORDS = ("StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate", "PatientBirthDate")
TIME_KEYWORDS = ("StudyTime", "SeriesTime", "AcquisitionTime", "ContentTime")


def _source_phi(sources: list[Path]) -> tuple[set[str], set[str], set[str], set[str]]:
    strings, dates, times, uids = set(), set(), set(), set()

    def visit(ds: Dataset, element: pydicom.DataElement) -> None:
        if element.VR == "UI" and not (element.keyword.endswith("ClassUID")
                                       or element.keyword == "TransferSyntaxUID"):
            values = element.value if isinstance(element.value, list | pydicom.multival.MultiValue) \
                else [element.value]
            uids.update(str(v) for v in values if v)

    for path in sources:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        for keyword in TEXT_KEYWORDS:
            value = str(ds.get(keyword, "") or "").strip()
            if value:
                strings.add(value)
                strings.add(value.replace("^", " ").strip())
        dates.update(str(ds.get(k, "")) for k in DATE_KEYWORDS if ds.get(k))
        times.update(str(ds.get(k, "")) for k in TIME_KEYWORDS if ds.get(k))
        ds.walk(visit)
        ds.file_meta.walk(visit)
    return strings, dates, times, uids


def _scan(root: Path, strings: set[str], dates: set[str], times: set[str], uids: set[str]) -> list[str]:
    hits: list[str] = []
    iso = {f"{d[:4]}-{d[4:6]}-{d[6:]}" for d in dates}
    lowered = {s.lower() for s in strings}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        if path.suffix == ".dcm":
            ds = pydicom.dcmread(path)

            def visit(dataset: Dataset, element: pydicom.DataElement, rel: str = rel) -> None:
                if element.tag.is_private:
                    hits.append(f"{rel}: private {element.tag}")
                if element.VR in ("OB", "OW", "SQ", "UN"):
                    return
                values = element.value if isinstance(element.value, list | pydicom.multival.MultiValue) \
                    else [element.value]
                for value in (str(v) for v in values if v not in (None, "")):
                    if element.VR == "UI" and value in uids:
                        hits.append(f"{rel}: original UID in {element.keyword}")
                    if element.VR == "DA" and value in dates:
                        hits.append(f"{rel}: source date in {element.keyword}")
                    if element.VR == "TM" and value in times:
                        hits.append(f"{rel}: source time in {element.keyword}")
                    if any(s in value.lower() for s in lowered):
                        hits.append(f"{rel}: source name/ID/institution in {element.keyword}")

            ds.walk(visit)
            ds.file_meta.walk(visit)
        else:
            text = path.read_text(encoding="utf-8")
            low = text.lower()
            hits.extend(f"{rel}: source name/ID/institution" for s in lowered if s in low)
            hits.extend(f"{rel}: source date" for d in dates | iso if d in text)
            hits.extend(f"{rel}: original UID" for u in uids if u in text)
    return hits


def test_export_holds_no_source_phi(exported: Path, labelled) -> None:
    strings, dates, times, uids = _source_phi(labelled.sources)
    # the phantoms do carry identifying values, so the scan below is not vacuous
    assert any(s.startswith("PHANTOM^") for s in strings) and "Synthetic data" in strings
    assert dates and times and len(uids) >= 12 + 3 + 3
    assert _scan(exported, strings, dates, times, uids) == []


def test_every_exported_image_is_flagged_deidentified(exported: Path, labelled) -> None:
    by_study: dict[str, set[str]] = {}
    source_studies = {pydicom.dcmread(p, stop_before_pixels=True).StudyInstanceUID for p in labelled.sources}
    for path in sorted(exported.glob("images/*/*.dcm")):
        ds = pydicom.dcmread(path)
        assert ds.PatientIdentityRemoved == "YES"
        assert ds.BurnedInAnnotation == "NO"
        codes = [(c.CodeValue, c.CodingSchemeDesignator) for c in ds.DeidentificationMethodCodeSequence]
        assert ("113100", "DCM") in codes
        assert ds.LongitudinalTemporalInformationModified == "REMOVED"
        assert not any(e.tag.is_private for e in ds)
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert ds.pixel_array.shape == (ds.Rows, ds.Columns)  # pixel data kept
        assert ds.StudyInstanceUID not in source_studies
        by_study.setdefault(path.parent.name, set()).add(ds.StudyInstanceUID)
    # consistent pseudonyms: one study UID per exported study folder, all different
    assert all(len(v) == 1 for v in by_study.values()) and len(by_study) == 3
    assert len(set().union(*by_study.values())) == 3


def test_pixels_are_unchanged(exported: Path, labelled) -> None:
    datalist = json.loads((exported / "datalist.json").read_text())
    item = datalist["training"][0]
    image = pydicom.dcmread(exported / item["image"])
    originals = {}
    for path in labelled.sources:
        ds = pydicom.dcmread(path)
        originals[(ds.ImageLaterality, ds.ViewPosition, ds.PatientID)] = ds
    matches = [ds for (lat, view, _), ds in originals.items()
               if lat == item["laterality"] and view == item["view"]
               and ds.pixel_array.tobytes() == image.pixel_array.tobytes()]
    assert len(matches) == 1


def test_the_scans_find_a_planted_leak(exported: Path, labelled, tmp_path: Path) -> None:
    """Both scans (this file's and the export's own) see identifiers left in a copy."""
    copy = tmp_path / "copy"
    shutil.copytree(exported, copy)
    shutil.copy(labelled.sources[0], copy / "images" / "leaked.dcm")
    notes = copy / "notes.md"
    source = pydicom.dcmread(labelled.sources[0], stop_before_pixels=True)
    notes.write_text(f"patient {source.PatientID}\n", encoding="utf-8")
    strings, dates, times, uids = _source_phi(labelled.sources)
    hits = _scan(copy, strings, dates, times, uids)
    assert any(h.startswith("images/leaked.dcm: original UID") for h in hits)
    assert any(h.startswith("images/leaked.dcm: source date") for h in hits)
    assert any(h.startswith("notes.md: source name") for h in hits)

    needles = phi_needles(source)
    for path in labelled.sources[1:]:
        needles.update(phi_needles(pydicom.dcmread(path, stop_before_pixels=True)))
    own = scan_folder(copy, needles)
    assert {h.path for h in own} == {"images/leaked.dcm", "notes.md"}
    assert all(str(source.PatientID) not in str(h) for h in own)  # reports never repeat the value
    assert scan_folder(exported, needles) == []


@pytest.mark.parametrize("keyword", ["PatientName", "InstitutionName", "AccessionNumber"])
def test_deidentifier_replaces_identifying_attributes(keyword: str, labelled) -> None:
    from mammotriage.export.deid import Deidentifier

    ds = pydicom.dcmread(labelled.sources[0])
    original = str(ds.get(keyword))
    ds.add_new(0x00091010, "LO", "private note")
    ds.ImageComments = "comment"
    Deidentifier(seed="test")(ds)
    assert str(ds.get(keyword, "")) != original
    assert 0x00091010 not in ds and "ImageComments" not in ds
    assert ds.StudyDate == "" and ds.PatientBirthDate == "" and ds.PatientSex == ""
    again = pydicom.dcmread(labelled.sources[0])
    Deidentifier(seed="test")(again)
    assert again.SOPInstanceUID == ds.SOPInstanceUID  # same secret, same pseudonyms
    other = pydicom.dcmread(labelled.sources[0])
    Deidentifier()(other)
    assert other.SOPInstanceUID != ds.SOPInstanceUID  # default: a fresh random secret
