"""A scan of an export folder for identifying values of its source images.

The export runs it on its staging folder before it publishes the folder: any hit stops
the export. :func:`phi_needles` collects, from each source dataset, the values to look
for; :func:`scan_folder` walks every file: DICOM files element by element (string
values, person names, UIDs, dates and times), every other file as UTF-8 text.

What is looked for is driven by PS3.15 Table E.1-1 (:mod:`mammotriage.export.profile`):
the source value of *every* attribute in the table must not be left in the same
attribute anywhere in an exported DICOM file (nested sequences included); values that
identify a person, a patient, a trial subject or a site (:data:`PHI_KEYWORDS`, person
names, addresses, telephone numbers, trial sponsor/site/subject) must not appear
anywhere at all, in any file, as text.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from mammotriage.export.profile import entry_for

__all__ = ["EXACT_KEYWORDS", "PHI_KEYWORDS", "PhiHit", "PhiNeedles", "phi_needles", "scan_folder"]

#: Attributes whose source values must not appear anywhere in an export (in any file,
#: as text, case-insensitive).
PHI_KEYWORDS = (
    "PatientName", "PatientID", "OtherPatientIDs", "OtherPatientNames", "PatientBirthName",
    "PatientMotherBirthName", "PatientAddress", "PatientTelephoneNumbers", "AccessionNumber",
    "InstitutionName", "InstitutionAddress", "InstitutionalDepartmentName",
    "ReferringPhysicianName", "PerformingPhysicianName", "NameOfPhysiciansReadingStudy",
    "OperatorsName", "RequestingPhysician", "IssuerOfPatientID",
)
#: Attributes whose source values must not be left in the same attribute of an exported
#: DICOM file (identify the site or the visit rather than the patient; often short).
EXACT_KEYWORDS = ("StationName", "DeviceSerialNumber", "StudyID")
#: Parts of keywords of Table E.1-1 attributes whose values identify someone wherever
#: they appear (looked for in every file as text, like :data:`PHI_KEYWORDS`).
ANYWHERE_PARTS = ("Address", "Telephone", "PhoneNumber", "Telecom", "ClinicalTrialSponsor",
                  "ClinicalTrialSite", "ClinicalTrialSubject", "ClinicalTrialCoordinating",
                  "Institution", "PatientID", "OtherPatient", "Physician", "Operator")
#: VRs whose values are never looked for as free text (numbers, codes, binary).
_NOT_TEXT = ("CS", "AS", "DS", "IS", "US", "SS", "UL", "SL", "UV", "SV", "FL", "FD", "AT",
             "OB", "OW", "OD", "OF", "OL", "OV", "UN", "SQ")
#: Shorter values (or all-digit values shorter than :data:`MIN_DIGITS_LENGTH`) are only
#: matched exactly in the same DICOM attribute: a one-character Study ID or a four-digit
#: number would otherwise "appear" in every hash.
MIN_TEXT_LENGTH = 4
MIN_DIGITS_LENGTH = 6


@dataclass
class PhiNeedles:
    """What to look for: identifying strings, dates, times and original UIDs."""

    strings: dict[str, str] = field(default_factory=dict)  # value -> attribute it came from
    exact: dict[str, set[str]] = field(default_factory=dict)  # keyword -> short values
    dates: set[str] = field(default_factory=set)  # YYYYMMDD
    times: set[str] = field(default_factory=set)  # HHMMSS...
    uids: set[str] = field(default_factory=set)

    def update(self, other: PhiNeedles) -> None:
        self.strings.update(other.strings)
        for k, v in other.exact.items():
            self.exact.setdefault(k, set()).update(v)
        self.dates |= other.dates
        self.times |= other.times
        self.uids |= other.uids


@dataclass(frozen=True)
class PhiHit:
    """One identifying value found: where, and which source attribute it matches (never
    the value itself, so reports and logs stay clean)."""

    path: str
    where: str
    what: str

    def __str__(self) -> str:
        return f"{self.path}: {self.where} holds a source {self.what}"


def _strings(value: object) -> list[str]:
    if value is None:
        return []
    if isinstance(value, (list, tuple, pydicom.multival.MultiValue)):
        return [s for v in value for s in _strings(v)]
    text = str(value).strip()
    return [text] if text else []


def phi_needles(ds: Dataset) -> PhiNeedles:
    """The identifying values of one source dataset (walks sequences too)."""
    out = PhiNeedles()

    def visit(dataset: Dataset, element: pydicom.DataElement) -> None:
        keyword = element.keyword
        if element.VR in ("DA", "DT"):
            for v in _strings(element.value):
                digits = "".join(c for c in v if c.isdigit())
                if len(digits) >= 8:
                    out.dates.add(digits[:8])
        elif element.VR == "TM":
            for v in _strings(element.value):
                digits = v.split(".")[0].replace(":", "")
                if len(digits) >= 4:
                    out.times.add(digits)
        elif element.VR == "UI":
            if not (keyword.endswith("ClassUID") or keyword == "TransferSyntaxUID"):
                for v in _strings(element.value):
                    if v not in pydicom.uid.UID_dictionary:
                        out.uids.add(v)
        elif element.VR not in ("OB", "OW", "OD", "OF", "OL", "OV", "UN", "SQ") and (
                keyword in PHI_KEYWORDS or keyword in EXACT_KEYWORDS
                or (keyword and entry_for(element.tag) is not None)):
            anywhere = element.VR not in _NOT_TEXT and keyword not in EXACT_KEYWORDS and (
                keyword in PHI_KEYWORDS or element.VR == "PN"
                or any(part in keyword for part in ANYWHERE_PARTS))
            for v in _strings(element.value):
                out.exact.setdefault(keyword, set()).add(v)
                if not anywhere:
                    continue
                forms = {v, v.replace("^", " ").strip()} if element.VR == "PN" else {v}
                for form in forms:
                    numeric = form.replace(" ", "").isdigit()
                    if len(form) >= (MIN_DIGITS_LENGTH if numeric else MIN_TEXT_LENGTH):
                        out.strings[form] = keyword

    ds.walk(visit)
    if hasattr(ds, "file_meta"):
        ds.file_meta.walk(visit)
    return out


def _iso(date: str) -> str:
    return f"{date[:4]}-{date[4:6]}-{date[6:8]}"


def _check_text(text: str, path: str, where: str, needles: PhiNeedles, dates: set[str],
                hits: list[PhiHit]) -> None:
    low = text.lower()
    for value, keyword in needles.strings.items():
        if value.lower() in low:
            hits.append(PhiHit(path, where, keyword))
    for date in dates:
        if date in text or _iso(date) in text:
            hits.append(PhiHit(path, where, "date"))
    for uid in needles.uids:
        if uid in text:
            hits.append(PhiHit(path, where, "UID"))


def scan_folder(folder: str | Path, needles: PhiNeedles,
                ignore_dates: Iterable[_dt.date] = ()) -> list[PhiHit]:
    """Every place in ``folder`` where a source identifying value appears.

    Parameters
    ----------
    folder
        The export (or its staging folder).
    needles
        From :func:`phi_needles` over all source datasets.
    ignore_dates
        Dates not to report (the export's own date: a report created today says when
        the export ran, not when the patient was imaged).
    """
    folder = Path(folder)
    skip = {d.strftime("%Y%m%d") for d in ignore_dates}
    dates = needles.dates - skip
    hits: list[PhiHit] = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        try:
            ds = pydicom.dcmread(path)
        except (InvalidDicomError, EOFError, OSError, ValueError, TypeError):
            ds = None
        if ds is None:
            text = path.read_bytes().decode("utf-8", errors="replace")
            _check_text(text, rel, "text", needles, dates, hits)
            continue

        def visit(dataset: Dataset, element: pydicom.DataElement, rel: str = rel) -> None:
            where = f"{element.keyword or element.tag}"
            if element.tag.is_private:
                hits.append(PhiHit(rel, where, "private attribute"))
                return
            if element.VR in ("OB", "OW", "OF", "OD", "OL", "OV", "UN", "SQ"):
                return
            values = _strings(element.value)
            if element.VR == "UI":
                if any(v in needles.uids for v in values):
                    hits.append(PhiHit(rel, where, "UID"))
                return
            if element.VR in ("DA", "DT"):
                if any(v.replace("-", "")[:8] in dates for v in values):
                    hits.append(PhiHit(rel, where, "date"))
                return
            if element.VR == "TM":
                if any(v.split(".")[0].replace(":", "") in needles.times for v in values):
                    hits.append(PhiHit(rel, where, "time"))
                return
            for v in values:
                if v in needles.exact.get(element.keyword, set()):
                    hits.append(PhiHit(rel, where, element.keyword))
                _check_text(v, rel, where, needles, dates, hits)

        ds.walk(visit)
        ds.file_meta.walk(visit)
    return hits
