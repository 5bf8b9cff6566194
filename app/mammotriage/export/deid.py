"""De-identification of exported images: DICOM PS3.15 Basic Application Level
Confidentiality Profile, built on dicognito.

dicognito (a maintained pydicom-based de-identifier) does the replacement work:

* every UI value except class UIDs and transfer syntaxes becomes a pseudonymous UID,
  the same original always giving the same pseudonym within one :class:`Deidentifier`
  (its secret seed), so studies, series and references stay consistent across every
  image and report of an export;
* every PN becomes a dummy name; Patient ID, Other Patient IDs, Accession Number,
  Study ID, Station Name, order and procedure IDs become dummy IDs;
* a list of patient-identifying attributes (telephone numbers, occupation, insurance
  plan, religious preference, military rank, ...) is removed.

This module adds, as a dicognito element handler that runs first, every action of
PS3.15 Table E.1-1 (Basic Profile), read from the table itself
(:mod:`mammotriage.export.profile`, ``ps3_15_e1_1.tsv``): all 621 rows, each attribute
removed (X), emptied (Z), given a dummy value (D) or a pseudonymous UID (U), compound
actions resolved as :func:`~mammotriage.export.profile.resolve` says.  dicognito's
pseudonyms are kept where the action allows a dummy (person names, its list of IDs,
UIDs), so one patient keeps one pseudonymous ID across the export.  Besides:

* every DA, DT and TM value outside the table is made zero length as well (no Retain
  Longitudinal Temporal Information option), and Longitudinal Temporal Information
  Modified (0028,0303) is set to ``REMOVED``;
* private attributes, overlay (60xx) and curve (50xx) groups are removed.

Pixel data is kept unchanged. The caller must only pass images whose Burned In
Annotation (0028,0301) is ``NO`` (see :func:`burned_in_annotation`); the Clean Pixel
Data option is *not* applied. Afterwards Patient Identity Removed (0012,0062) is
``YES``, De-identification Method (0012,0063) names the profile and the library, and
De-identification Method Code Sequence (0012,0064) holds (113100, DCM, "Basic
Application Confidentiality Profile") (PS3.16 CID 7050).
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pydicom
from dicognito import __version__ as DICOGNITO_VERSION
from dicognito.anonymizer import Anonymizer
from dicognito.element_anonymizer import ElementAnonymizer
from dicognito.idanonymizer import IDAnonymizer
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.uid import UID

from mammotriage.export.profile import dummy_value, entry_for, resolve, table

__all__ = [
    "BASIC_PROFILE_CODE",
    "DICOGNITO_VERSION",
    "IMPLEMENTATION_CLASS_UID",
    "Deidentifier",
    "burned_in_annotation",
]

#: (113100, DCM, "Basic Application Confidentiality Profile"), PS3.16 CID 7050.
BASIC_PROFILE_CODE = ("113100", "DCM", "Basic Application Confidentiality Profile")
#: Implementation Class UID written in the file meta of exported files (Mammo Triage's).
IMPLEMENTATION_CLASS_UID = UID("2.25.151618362018175754709966790777982717541")

_TEXT_VRS = frozenset({"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM",
                       "UC", "UR", "UT", "UI"})
_DEIDENTIFICATION_METHOD = "PS3.15 E.1-1 Basic Profile"


class _BasicProfile(ElementAnonymizer):
    """Table E.1-1's actions, ahead of dicognito's own handlers."""

    def __init__(self, pseudonymised: frozenset[int]):
        # Tags whose values dicognito replaces by consistent dummies (its ID list).
        self._pseudonymised = pseudonymised

    def _dicognito_replaces(self, element: DataElement) -> bool:
        return element.VR in ("PN", "UI") or int(element.tag) in self._pseudonymised

    def __call__(self, dataset: Dataset, data_element: DataElement) -> bool:
        tag = data_element.tag
        if tag.is_private or tag.group & 0xFF00 in (0x5000, 0x6000):
            del dataset[tag]
            return True
        entry = entry_for(tag)
        vr = data_element.VR
        if entry is None:
            if vr in ("DA", "DT", "TM"):
                data_element.value = ""
                return True
            return False  # dicognito's handlers (UIDs, names ...) still run
        action = resolve(entry, vr)
        if action == "X":
            del dataset[tag]
            return True
        if action in ("U", "U*"):
            return False  # dicognito replaces every UID consistently; items are walked
        if self._dicognito_replaces(data_element):
            return False  # a pseudonymous dummy, allowed by Z and D
        if action == "Z":
            data_element.value = [] if vr == "SQ" else ("" if vr in _TEXT_VRS else None)
        else:
            data_element.value = dummy_value(vr)
        return True

    def describe_actions(self) -> Iterator[str]:
        yield "Remove private attributes and overlay/curve groups"
        yield f"PS3.15 Table E.1-1 Basic Profile actions for {len(table())} attributes"
        yield "Make every other DA, DT and TM value zero length"


def burned_in_annotation(ds: Dataset) -> str:
    """Burned In Annotation (0028,0301) as ``"YES"``, ``"NO"`` or ``""`` (absent/empty)."""
    return str(ds.get("BurnedInAnnotation", "") or "").strip().upper()


class Deidentifier:
    """De-identify datasets in place with one consistent set of pseudonyms.

    Parameters
    ----------
    seed
        Secret that fixes the pseudonyms (UIDs, names, IDs). The same seed maps the
        same original to the same pseudonym in every export; anyone who knows the seed
        and an original UID can recompute its pseudonym, so keep it secret. ``None``:
        a fresh random seed that is never stored (exports cannot be linked).
    """

    def __init__(self, seed: str | None = None):
        self._anonymizer = Anonymizer(seed=seed if seed is not None else secrets.token_hex(32))
        ids = frozenset(int(t) for h in self._anonymizer._element_handlers
                        if isinstance(h, IDAnonymizer) for t in h.id_tags)
        self._anonymizer.add_element_handler(_BasicProfile(ids))

    def describe(self) -> dict[str, object]:
        """What is done, for the export manifest and README."""
        return {
            "profile": "DICOM PS3.15 Annex E Basic Application Level Confidentiality Profile",
            "table": f"PS3.15 Table E.1-1, {len(table())} attributes, each removed, emptied, "
                     "replaced by a dummy or by a pseudonymous UID",
            "method_code": {"value": BASIC_PROFILE_CODE[0], "scheme": BASIC_PROFILE_CODE[1],
                            "meaning": BASIC_PROFILE_CODE[2]},
            "library": f"dicognito {DICOGNITO_VERSION}",
            "uids": "replaced by pseudonymous UIDs, consistent across all files of the export",
            "names_and_ids": "replaced by dummy values",
            "dates_and_times": "zero length or removed; 19000101 / 000000 where the profile "
                               "requires a value (action D)",
            "private_attributes": "removed",
            "overlays_and_curves": "removed",
            "pixel_data": "unchanged; only images with Burned In Annotation NO are exported",
        }

    def __call__(self, ds: Dataset) -> Dataset:
        """De-identify ``ds`` in place (file meta included) and return it.

        Raises
        ------
        ValueError
            Burned In Annotation is not ``NO``: the pixels may carry identifying text.
        """
        if burned_in_annotation(ds) != "NO":
            raise ValueError("Burned In Annotation is not NO: the pixel data may show identifying text")
        if not hasattr(ds, "file_meta"):
            ds.file_meta = pydicom.dataset.FileMetaDataset()
        self._anonymizer.anonymize(ds)
        ds.PatientIdentityRemoved = "YES"
        ds.DeidentificationMethod = [_DEIDENTIFICATION_METHOD, f"dicognito {DICOGNITO_VERSION}"]
        code = Dataset()
        code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = BASIC_PROFILE_CODE
        ds.DeidentificationMethodCodeSequence = [code]
        ds.LongitudinalTemporalInformationModified = "REMOVED"
        meta = ds.file_meta
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
        for keyword in ("ImplementationVersionName", "SourceApplicationEntityTitle",
                        "SendingApplicationEntityTitle", "ReceivingApplicationEntityTitle",
                        "PrivateInformationCreatorUID", "PrivateInformation"):
            if keyword in meta:
                del meta[keyword]
        return ds
