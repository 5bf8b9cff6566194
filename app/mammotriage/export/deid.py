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

This module adds, as dicognito element handlers that run first, the remaining actions
of PS3.15 Table E.1-1 (Basic Profile) that matter for mammography objects:

* every DA, DT and TM value is made zero length (Z; the Basic Profile removes or
  empties dates and times: no Retain Longitudinal Temporal Information option), and
  Longitudinal Temporal Information Modified (0028,0303) is set to ``REMOVED``;
* free-text and patient characteristic attributes the profile removes (X) are removed:
  :data:`REMOVE`; Type 2 attributes the profile empties (Z) are emptied: :data:`EMPTY`;
* private attributes are removed (the profile without the Retain Safe Private option);
* overlay (60xx) and curve (50xx) groups are removed (they may carry annotations).

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
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset

__all__ = [
    "BASIC_PROFILE_CODE",
    "DICOGNITO_VERSION",
    "EMPTY",
    "IMPLEMENTATION_CLASS_UID",
    "REMOVE",
    "Deidentifier",
    "burned_in_annotation",
]

#: (113100, DCM, "Basic Application Confidentiality Profile"), PS3.16 CID 7050.
BASIC_PROFILE_CODE = ("113100", "DCM", "Basic Application Confidentiality Profile")
#: Implementation Class UID written in the file meta of exported files (Mammo Triage's).
IMPLEMENTATION_CLASS_UID = "2.25.151618362018175754709966790777982717541"

#: Attributes PS3.15 Table E.1-1 removes (X, or X/Z / X/D where we choose X) that
#: dicognito leaves: descriptions, comments, patient characteristics, device identity,
#: institution, references to other objects that could carry identifiers.
REMOVE = frozenset({
    "AcquisitionComments", "AcquisitionDeviceProcessingDescription", "AdditionalPatientHistory",
    "AdmissionID", "AdmittingDiagnosesCodeSequence", "AdmittingDiagnosesDescription", "Allergies",
    "Arbitrary", "AuthorObserverSequence", "BranchOfService", "CommentsOnThePerformedProcedureStep",
    "ContentSequence", "ContributionDescription", "CountryOfResidence", "CurrentPatientLocation",
    "CustodialOrganizationSequence", "DerivationDescription", "DeviceSerialNumber",
    "DischargeDiagnosisDescription", "EthnicGroup", "FrameComments", "GantryID", "IdentifyingComments",
    "ImageComments", "ImagePresentationComments", "InstitutionAddress", "InstitutionCodeSequence",
    "InstitutionName", "InstitutionalDepartmentName", "InstitutionalDepartmentTypeCodeSequence",
    "InterpretationApproverSequence", "IssuerOfPatientID", "MedicalAlerts", "MedicalRecordLocator",
    "MilitaryRank", "ModifiedAttributesSequence", "Occupation",
    "OriginalAttributesSequence", "OtherPatientIDsSequence", "PatientAddress", "PatientAge",
    "PatientBirthName", "PatientBirthTime", "PatientComments", "PatientInsurancePlanCodeSequence",
    "PatientMotherBirthName", "PatientReligiousPreference", "PatientSize", "PatientState",
    "PatientTelecomInformation", "PatientTelephoneNumbers", "PatientWeight",
    "PerformedProcedureStepDescription", "PerformedLocation", "PerformedStationAETitle",
    "PerformedStationGeographicLocationCodeSequence", "PerformedStationName",
    "PerformedStationNameCodeSequence", "PregnancyStatus", "ProtocolName",
    "ReferencedPatientAliasSequence", "ReferencedPatientPhotoSequence",
    "ReferencedPatientSequence", "ReferencedPerformedProcedureStepSequence",
    "ReferencedStudySequence", "RegionOfResidence", "RequestAttributesSequence",
    "RequestedProcedureDescription", "RequestingService", "ResultsComments",
    "ScheduledProcedureStepDescription", "SeriesDescription", "ServiceEpisodeDescription",
    "SmokingStatus", "SoftwareVersions", "SpecialNeeds", "StudyComments", "StudyDescription",
    "TextComments", "TextString", "TopicAuthor", "TopicKeywords", "TopicSubject", "TopicTitle",
    "VisitComments",
})
#: Type 2 attributes PS3.15 Table E.1-1 replaces with a zero-length value (Z) that
#: dicognito leaves.
EMPTY = frozenset({"PatientSex", "AcquisitionContextSequence"})

_DEIDENTIFICATION_METHOD = "PS3.15 E.1-1 Basic Profile"


class _BasicProfile(ElementAnonymizer):
    """The Basic Profile actions dicognito does not take (see the module docstring)."""

    def __call__(self, dataset: Dataset, data_element: DataElement) -> bool:
        tag = data_element.tag
        keyword = data_element.keyword
        if tag.is_private or tag.group & 0xFF00 in (0x5000, 0x6000):
            del dataset[tag]
            return True
        if keyword in REMOVE:
            del dataset[tag]
            return True
        if keyword in EMPTY:
            data_element.value = [] if data_element.VR == "SQ" else ""
            return True
        if data_element.VR in ("DA", "DT", "TM"):
            data_element.value = ""
            return True
        return False

    def describe_actions(self) -> Iterator[str]:
        yield "Remove private attributes and overlay/curve groups"
        yield "Make every DA, DT and TM value zero length"
        yield f"Remove {', '.join(sorted(REMOVE))}"
        yield f"Empty {', '.join(sorted(EMPTY))}"


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
        self._anonymizer.add_element_handler(_BasicProfile())

    def describe(self) -> dict[str, object]:
        """What is done, for the export manifest and README."""
        return {
            "profile": "DICOM PS3.15 Annex E Basic Application Level Confidentiality Profile",
            "method_code": {"value": BASIC_PROFILE_CODE[0], "scheme": BASIC_PROFILE_CODE[1],
                            "meaning": BASIC_PROFILE_CODE[2]},
            "library": f"dicognito {DICOGNITO_VERSION}",
            "uids": "replaced by pseudonymous UIDs, consistent across all files of the export",
            "names_and_ids": "replaced by dummy values",
            "dates_and_times": "zero length (removed)",
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
