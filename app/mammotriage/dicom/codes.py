"""Coded concepts for mammographic views (DICOM CID 4014 / CID 4015).

Both the current SNOMED CT codes (scheme ``SCT``) and the legacy SNOMED-RT codes
(scheme ``SRT`` / ``SNM3``) that older modalities still write are recognised.
"""

from __future__ import annotations

from pydicom.uid import (
    UID,
    ComputedRadiographyImageStorage,
    DigitalMammographyXRayImageStorageForPresentation,
    DigitalMammographyXRayImageStorageForProcessing,
    DigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForProcessing,
    SecondaryCaptureImageStorage,
)

from mammotriage.dicom.image import View

#: (code value) -> View. SCT and legacy SRT values, see PS3.16 CID 4014.
VIEW_CODES: dict[str, View] = {
    # cranio-caudal
    "399162004": View.CC, "R-10242": View.CC,
    # medio-lateral oblique
    "399368009": View.MLO, "R-10226": View.MLO,
    # medio-lateral
    "399260004": View.ML, "R-10224": View.ML,
    # latero-medial
    "399352003": View.LM, "R-10228": View.LM,
    # latero-medial oblique
    "399099002": View.LMO, "R-10230": View.LMO,
    # cranio-caudal exaggerated laterally / medially
    "399192008": View.XCCL, "R-1024A": View.XCCL,
    "399101009": View.XCCM, "R-1024B": View.XCCM,
    # caudo-cranial (from below)
    "399196006": View.FB, "R-10244": View.FB,
    # superolateral to inferomedial oblique / inferomedial to superolateral oblique
    "399188001": View.SIO, "R-10243": View.SIO,
    "441555000": View.ISO,
    # axillary tail
    "399011000": View.AT, "R-10241": View.AT,
    # cleavage
    "399265009": View.CV, "R-1024E": View.CV,
}

#: code meanings as a fallback when a writer used an unknown code value
VIEW_MEANINGS: dict[str, View] = {
    "cranio-caudal": View.CC,
    "medio-lateral oblique": View.MLO,
    "medio-lateral": View.ML,
    "latero-medial": View.LM,
    "latero-medial oblique": View.LMO,
    "cranio-caudal exaggerated laterally": View.XCCL,
    "cranio-caudal exaggerated medially": View.XCCM,
    "caudo-cranial": View.FB,
    "caudo-cranial (from below)": View.FB,
    "superolateral to inferomedial oblique": View.SIO,
    "inferomedial to superolateral oblique": View.ISO,
    "axillary tail": View.AT,
    "cleavage": View.CV,
}

#: ViewPosition (0018,5101) values for mammography (PS3.3 C.8.11.5.1 / C.8.11.7)
VIEW_POSITIONS: dict[str, View] = {v.value: v for v in View if v is not View.UNKNOWN}
VIEW_POSITIONS.update({"RCC": View.CC, "LCC": View.CC, "RMLO": View.MLO, "LMLO": View.MLO})

#: View modifier codes (CID 4015) -> short label
MODIFIER_CODES: dict[str, str] = {
    "399055006": "SPOT", "R-102D2": "SPOT",
    "399163009": "MAGNIFICATION", "R-10233": "MAGNIFICATION",
    "399197002": "ROLLED LATERAL", "R-102D3": "ROLLED LATERAL",
    "399226006": "ROLLED MEDIAL", "R-102D4": "ROLLED MEDIAL",
    "399110001": "TANGENTIAL", "R-102C2": "TANGENTIAL",
    "399279003": "IMPLANT DISPLACED", "R-102D5": "IMPLANT DISPLACED",
}
MODIFIER_MEANINGS: dict[str, str] = {
    "spot compression": "SPOT",
    "magnification": "MAGNIFICATION",
    "magnified": "MAGNIFICATION",
    "rolled lateral": "ROLLED LATERAL",
    "rolled medial": "ROLLED MEDIAL",
    "tangential": "TANGENTIAL",
    "implant displaced": "IMPLANT DISPLACED",
}

#: SOP classes that hold mammograms (PS3.4 B.5)
MAMMO_SOP_CLASSES: dict[UID, str] = {uid: uid.name for uid in (
    DigitalMammographyXRayImageStorageForPresentation,
    DigitalMammographyXRayImageStorageForProcessing,
)}

#: Image SOP classes we may accept when other evidence says "breast"
GENERIC_IMAGE_SOP_CLASSES: dict[UID, str] = {uid: uid.name for uid in (
    SecondaryCaptureImageStorage,
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForProcessing,
)}
