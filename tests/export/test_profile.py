"""PS3.15 Table E.1-1 drives de-identification: every row is handled, on real files."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pydicom
import pytest
from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from mammotriage.export import export_snapshot
from mammotriage.export.deid import Deidentifier
from mammotriage.export.profile import SUPPLEMENT, check_profile, entry_for, resolve, table

ACTIONS = {"X", "Z", "D", "U", "X/Z", "X/D", "Z/D", "X/Z/D", "X/Z/U*"}

#: The attributes an adversarial export test found with their source values (issue 15).
LEAKED = {
    "ReferringPhysicianAddress": "12 Harley St London", "ReferringPhysicianTelephoneNumbers": "0207 946 0001",
    "OrderCallbackPhoneNumber": "0207 946 0002", "PlateID": "PLATE-7731", "CassetteID": "CAS-5521",
    "DetectorID": "DET-99817", "DeviceSerialNumber": "SN-4471822", "DeviceDescription": "Room 3 unit Smith",
    "LabelText": "Label Jane Roe", "AcquisitionProtocolName": "Protocol of Dr Who",
    "ReasonForStudy": "lump found by Jane Roe", "RequestedProcedureComments": "call Jane Roe",
    "ImagingServiceRequestComments": "request by Dr Who", "ScheduledStationName": "MAMMO-ROOM-3",
    "ServiceEpisodeID": "EPISODE-88231", "ClinicalTrialSponsorName": "Acme Oncology Trials",
    "ClinicalTrialSiteID": "SITE-04417", "ClinicalTrialSiteName": "St Elsewhere Hospital",
    "ClinicalTrialSubjectID": "SUBJ-00912", "ClinicalTrialProtocolID": "PROTO-2026-17",
}


def _vr(tag: int) -> str:
    return dictionary_VR(tag).split(" or ")[0]


def _identifying(tag: int, vr: str, i: int) -> object:
    """A value for ``tag`` that a leak would be easy to see."""
    if vr in ("AE", "CS", "SH"):
        return f"PHI{i:05d}"
    if vr in ("LO", "LT", "ST", "UT", "UC", "UR"):
        return f"PHI-{keyword_for_tag(tag)}"[:64]
    if vr == "PN":
        return f"PHI^{i:05d}"
    return {"DA": "20240102", "DT": "20240102030405", "TM": "030405", "DS": "123.5", "IS": "12345",
            "AS": "052Y", "UI": generate_uid()}.get(vr, 7 if vr in ("US", "SS", "UL", "SL", "UV", "SV",
                                                                     "FL", "FD", "AT") else b"PHIPHI12")


def _nested() -> Dataset:
    item = Dataset()
    item.PersonName = "PHI^NESTED"
    item.ReferencedSOPInstanceUID = generate_uid()
    return item


def _every_row(base: Dataset) -> tuple[Dataset, list[int]]:
    ds = base
    tags = []
    for i, e in enumerate((*table(), *SUPPLEMENT)):
        if not e.keyword:
            continue
        tag = int(e.tag, 16)
        vr = _vr(tag)
        value = [_nested()] if vr == "SQ" else _identifying(tag, vr, i)
        if tag >> 16 == 0x0002:
            ds.file_meta.add_new(tag, vr, value)
        else:
            ds.add_new(tag, vr, value)
        tags.append(tag)
    ds.add_new(0x00091010, "LO", "PHI private")
    ds.add_new(0x60003000, "OW", b"\0\1" * 8)
    ds.add_new(0x60004000, "LT", "PHI overlay comment")
    ds.add_new(0x50000005, "US", 1)
    return ds, tags


def test_the_table_is_the_standard_one() -> None:
    rows = table()
    assert len(rows) == 621
    assert {e.action for e in rows} <= ACTIONS
    named = [e for e in rows if e.keyword]
    assert len(named) == 617  # the others: private, curve and overlay groups
    assert all(keyword_for_tag(int(e.tag, 16)) == e.keyword for e in named)
    for keyword in LEAKED:
        assert any(e.keyword == keyword for e in (*rows, *SUPPLEMENT)), keyword
    assert entry_for(0x00091010).action == "X" and entry_for(0x60023000).action == "X"
    assert entry_for(0x50040010).action == "X" and entry_for(0x00280010) is None  # Rows: kept


def test_every_attribute_with_action_x_z_d_u_is_handled(labelled) -> None:
    source, tags = _every_row(pydicom.dcmread(labelled.sources[0]))
    result, _ = _every_row(pydicom.dcmread(labelled.sources[0]))
    Deidentifier(seed="table")(result)
    assert check_profile(source, result) == []
    # and, independently of check_profile: each row is gone, emptied or replaced
    for tag in tags:
        before = source.file_meta[tag] if tag >> 16 == 2 else source[tag]
        after = (result.file_meta if tag >> 16 == 2 else result).get(tag)
        entry = entry_for(tag)
        if after is None:
            assert "X" in entry.options, entry
        elif before.VR == "SQ":
            assert len(after.value) == 0 or entry.action == "X/Z/U*", entry
        else:
            assert str(after.value) != str(before.value), entry
    assert 0x00091010 not in result and 0x60003000 not in result and 0x50000005 not in result
    # the kept sequences (X/Z/U*) hold pseudonymous UIDs, and no nested name survives
    for keyword in ("ReferencedImageSequence", "SourceImageSequence"):
        (item,) = result[keyword].value
        assert item.ReferencedSOPInstanceUID != source[keyword].value[0].ReferencedSOPInstanceUID
        assert str(item.get("PersonName", "")) != "PHI^NESTED"
    for tag in [t for t in result.keys() if t >> 16 == 0]:  # noqa: SIM118 - a Dataset iterates elements
        del result[tag]  # command elements (two table rows) never belong in a file
    result.save_as(labelled.home / "every-row.dcm")  # still a writable DICOM file


def test_the_check_sees_what_is_left(labelled) -> None:
    source, tags = _every_row(pydicom.dcmread(labelled.sources[0]))
    problems = check_profile(source, copy.deepcopy(source))
    # every row is reported (kept sequences once per UID inside them)
    assert len(problems) >= len(tags)
    assert all("still holds its source value" in p or "sequence kept" in p for p in problems)
    assert any(p.startswith("ClinicalTrialSponsorName (D): still holds") for p in problems)


@pytest.mark.parametrize(("action", "vr", "resolved"), [
    ("X", "LO", "X"), ("Z", "PN", "Z"), ("D", "LO", "D"), ("U", "UI", "U"), ("X/Z", "LO", "Z"),
    ("X/D", "SH", "D"), ("X/D", "DA", "X"), ("X/Z/D", "SH", "Z"), ("Z/D", "DA", "Z"),
    ("D", "SQ", "D"), ("X/Z/U*", "SQ", "U*"),
])
def test_compound_actions_resolve_to_an_allowed_one(action: str, vr: str, resolved: str) -> None:
    entry = next(e for e in table() if e.action == action)
    assert resolve(entry, vr) == resolved
    assert resolved.rstrip("*") in entry.options


def _plant(path: Path) -> None:
    ds = pydicom.dcmread(path)
    for keyword, value in LEAKED.items():
        setattr(ds, keyword, value)
    ds.PersonAddress = "1 Secret Lane"  # inside a sequence only (Person Identification)
    ds.save_as(path, enforce_file_format=True)


@pytest.fixture(scope="module")
def phi_laden(tmp_path_factory: pytest.TempPathFactory, build_labelled) -> tuple[Path, list[Path]]:
    labelled = build_labelled(tmp_path_factory.mktemp("phi-laden"), seed=23, prepare=_plant)
    out = tmp_path_factory.mktemp("phi-export") / "export"
    export_snapshot(labelled.snapshot, out, archive_file=labelled.archive)
    return out, labelled.sources


def test_export_of_phi_laden_sources_keeps_no_source_value(phi_laden) -> None:
    out, sources = phi_laden
    planted = [*LEAKED.values(), "1 Secret Lane"]
    assert all(v in pydicom.dcmread(sources[0], stop_before_pixels=True).to_json() for v in planted[:3])
    for path in sorted(p for p in out.rglob("*") if p.is_file()):
        data = path.read_bytes()
        text = data.decode("utf-8", errors="replace").lower()
        for value in planted:
            assert value.lower() not in text, f"{value!r} left in {path.relative_to(out)}"


def test_clinical_trial_attributes_are_not_copied_into_srs(phi_laden) -> None:
    out, _ = phi_laden
    srs = sorted(out.glob("sr/*/*.sr.dcm"))
    assert srs
    for path in srs:
        sr = pydicom.dcmread(path)
        assert not [e.keyword for e in sr if e.keyword.startswith("ClinicalTrial")], path
    image = pydicom.dcmread(next(out.glob("images/*/*.dcm")))
    assert image.ClinicalTrialSponsorName == "ANONYMIZED"  # D: a dummy stays in the image
    assert image.ClinicalTrialSiteID == "" and "PlateID" not in image
    manifest = json.loads((out / "manifest.json").read_text())
    assert "Table E.1-1" in manifest["deidentification"]["table"]


def test_the_scan_finds_any_table_attribute_left_with_its_source_value(phi_laden, tmp_path: Path) -> None:
    from mammotriage.export.phi import phi_needles, scan_folder

    out, sources = phi_laden
    needles = phi_needles(pydicom.dcmread(sources[0], stop_before_pixels=True))
    for path in sources[1:]:
        needles.update(phi_needles(pydicom.dcmread(path, stop_before_pixels=True)))
    copy_dir = tmp_path / "copy"
    copy_dir.mkdir()
    image = pydicom.dcmread(next(out.glob("images/*/*.dcm")))
    image.PlateID = LEAKED["PlateID"]  # short, not a name: only the same attribute is checked
    image.ReasonForStudy = LEAKED["ReasonForStudy"]
    image.save_as(copy_dir / "leak.dcm", enforce_file_format=True)
    (copy_dir / "notes.txt").write_text(f"sponsor {LEAKED['ClinicalTrialSponsorName']}\n")
    hits = scan_folder(copy_dir, needles)
    assert {(h.path, h.what) for h in hits} >= {("leak.dcm", "PlateID"), ("leak.dcm", "ReasonForStudy"),
                                                  ("notes.txt", "ClinicalTrialSponsorName")}
    assert scan_folder(out, needles) == []
