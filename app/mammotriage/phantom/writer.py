"""Synthetic screening exams as DICOM Digital Mammography X-Ray images, with ground truth.

:func:`generate_exam` builds one four-view screening exam (RCC, LCC, RMLO, LMLO) in
memory: pydicom datasets of the Digital Mammography X-Ray Image Storage - For
Presentation SOP class (PS3.3 A.26) plus the lesion boxes in stored-pixel
coordinates. :func:`write_demo_set` writes a set of such exams and one
``ground_truth.json``.

Stored layout (PS3.3 C.7.6.1.1.1, Patient Orientation: first value = direction of
increasing column index, second = direction of increasing row index):

=====  ==================  ==================  =====================
view   ``standard``        ``mirrored``        chest wall (standard)
=====  ==================  ==================  =====================
RCC    ``P\\L``            ``A\\L``            right edge
LCC    ``A\\R``            ``P\\R``            left edge
RMLO   ``P\\F``            ``A\\F``            right edge
LMLO   ``A\\F``            ``P\\F``            left edge
=====  ==================  ==================  =====================

``mirrored`` flips the stored pixels horizontally and swaps A and P in the first
Patient Orientation value, so the file stays self-consistent.

Everything is a pure function of the seed, the exam number and the image options:
pixels are byte-identical between runs and the UIDs are ``2.25`` UIDs derived from
those inputs (PS3.5 B.2).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    UID,
    DigitalMammographyXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    RLELossless,
)

from mammotriage import __version__
from mammotriage.phantom import anatomy

#: Digital Mammography X-Ray Image Storage - For Presentation.
MG_FOR_PRESENTATION = DigitalMammographyXRayImageStorageForPresentation
#: Namespace of the name-based (version 5) UUIDs behind the phantom's UIDs:
#: ``uuid5(NAMESPACE_URL, "urn:mammotriage")``.
UID_NAMESPACE = uuid.UUID("ddbd5ae1-0f90-5488-afc1-e4a72a1686f0")
#: Implementation Class UID of phantom files: ``2.25`` form of
#: ``uuid5(UID_NAMESPACE, "implementation-class")``.
IMPLEMENTATION_CLASS_UID = UID("2.25.151618362018175754709966790777982717541")
IMPLEMENTATION_VERSION_NAME = "MTRIAGE_" + __version__
MANUFACTURER = "Mammo Triage phantom"
#: Height of the default field of view; the default pixel spacing is this / rows.
FIELD_OF_VIEW_MM = 240.0
#: Ground-truth file format version.
GROUND_TRUTH_VERSION = 1
GROUND_TRUTH_NAME = "ground_truth.json"

TRANSFER_SYNTAXES: dict[str, UID] = {
    "explicit": ExplicitVRLittleEndian,
    "rle": RLELossless,
    "jpeg2000": JPEG2000Lossless,
}
#: Encoder plug-in per compressed transfer syntax ("" = pydicom's native encoder).
_ENCODERS = {RLELossless: "", JPEG2000Lossless: "pylibjpeg"}

#: Screening views in hanging order: (laterality, view).
SCREENING_VIEWS: tuple[tuple[str, anatomy.ViewName], ...] = (
    ("R", "CC"),
    ("L", "CC"),
    ("R", "MLO"),
    ("L", "MLO"),
)
_VIEW_CODES = {
    "CC": ("399162004", "cranio-caudal"),
    "MLO": ("399368009", "medio-lateral oblique"),
}
#: Window presets as (explanation, centre, width) in fractions of the stored range.
_WINDOWS = (("NORMAL", 0.42, 0.64), ("DENSE", 0.56, 0.36))


def _transfer_syntax_uid(name: str) -> UID:
    """Transfer syntax UID for a name of :data:`TRANSFER_SYNTAXES` or one of its UIDs."""
    if name in TRANSFER_SYNTAXES:
        return TRANSFER_SYNTAXES[name]
    if name in TRANSFER_SYNTAXES.values():
        return UID(name)
    raise ValueError(
        f"unsupported transfer syntax {name!r}; use one of {sorted(TRANSFER_SYNTAXES)}"
    )


@dataclass(frozen=True)
class ImageOptions:
    """How the images of an exam are encoded; see :func:`generate_exam`.

    Attributes
    ----------
    rows, columns
        Image size: 128 to 4096 rows (a full field is 4096 x 3328), columns 0.55
        to 1.0 times the rows.
    bits_stored
        12 to 16 (Bits Allocated is always 16).
    photometric
        ``"MONOCHROME2"`` (Presentation LUT Shape IDENTITY) or ``"MONOCHROME1"``
        (stored values inverted, Presentation LUT Shape INVERSE).
    transfer_syntax
        ``"explicit"``, ``"rle"`` or ``"jpeg2000"`` (lossless), or one of the matching
        transfer syntax UIDs.
    stored_layout
        ``"standard"`` or ``"mirrored"`` (see the module docstring).
    pixel_spacing_mm
        Imager Pixel Spacing; ``None`` for a 240 mm high field of view. The field
        of view (rows x spacing) must be 200 to 400 mm high.
    nipple
        Draw the nipple in profile.
    """

    rows: int = 512
    columns: int = 416
    bits_stored: int = 12
    photometric: Literal["MONOCHROME2", "MONOCHROME1"] = "MONOCHROME2"
    transfer_syntax: str = "explicit"
    stored_layout: Literal["standard", "mirrored"] = "standard"
    pixel_spacing_mm: float | None = None
    nipple: bool = True

    def __post_init__(self) -> None:
        if not 128 <= self.rows <= 4096:
            raise ValueError(f"rows must be 128 to 4096, not {self.rows}")
        if not 0.55 * self.rows <= self.columns <= self.rows:
            raise ValueError(
                f"columns must be 0.55 to 1.0 times the rows (a portrait detector), "
                f"not {self.columns} for {self.rows} rows"
            )
        if not 12 <= self.bits_stored <= 16:
            raise ValueError(f"bits_stored must be 12 to 16, not {self.bits_stored}")
        if self.photometric not in ("MONOCHROME2", "MONOCHROME1"):
            raise ValueError(f"unsupported photometric interpretation {self.photometric!r}")
        if self.stored_layout not in ("standard", "mirrored"):
            raise ValueError(
                f"stored_layout must be 'standard' or 'mirrored', not {self.stored_layout!r}"
            )
        _transfer_syntax_uid(self.transfer_syntax)
        if not 200.0 <= self.rows * self.spacing_mm <= 400.0:
            raise ValueError(
                f"field of view {self.rows * self.spacing_mm:.0f} mm high (rows x "
                f"pixel_spacing_mm) outside 200 .. 400 mm"
            )

    @property
    def transfer_syntax_uid(self) -> UID:
        """The transfer syntax UID named by :attr:`transfer_syntax`."""
        return _transfer_syntax_uid(self.transfer_syntax)

    @property
    def spacing_mm(self) -> float:
        """Pixel size in millimetres."""
        if self.pixel_spacing_mm is not None:
            return float(self.pixel_spacing_mm)
        return FIELD_OF_VIEW_MM / self.rows

    @property
    def max_value(self) -> int:
        """Largest stored value."""
        return (1 << self.bits_stored) - 1

    def pixel_key(self) -> str:
        """Text naming every option that changes the pixel values (not the encoding)."""
        return (
            f"{self.rows}x{self.columns}/{self.bits_stored}/{self.photometric}/"
            f"{self.stored_layout}/{self.spacing_mm:.6f}/{int(self.nipple)}"
        )


@dataclass(frozen=True)
class Lesion:
    """Ground truth of one lesion in one image.

    Attributes
    ----------
    sop_uid
        SOP Instance UID of the image.
    box
        ``(x0, y0, x1, y1)`` in stored-pixel coordinates (x = column, y = row),
        half-open: the lesion covers columns ``x0 .. x1 - 1`` and rows
        ``y0 .. y1 - 1``; equivalently the continuous box ``[x0, x1) x [y0, y1)``.
    kind
        ``"mass"`` or ``"calcification"``.
    subtype
        ``"circumscribed"`` or ``"spiculated"`` for masses, ``"cluster"`` for
        calcifications.
    malignant
        Ground-truth pathology.
    laterality, view
        ``"L"``/``"R"`` and ``"CC"``/``"MLO"`` of the image.
    lesion_id
        Index of the lesion in its exam; the CC and MLO boxes of one lesion share it.
    """

    sop_uid: str
    box: tuple[int, int, int, int]
    kind: str
    subtype: str
    malignant: bool
    laterality: str
    view: str
    lesion_id: int

    def to_json(self) -> dict[str, Any]:
        """The lesion as a ``ground_truth.json`` entry."""
        return {
            "sop_uid": self.sop_uid,
            "box": list(self.box),
            "kind": self.kind,
            "subtype": self.subtype,
            "malignant": self.malignant,
            "lesion_id": self.lesion_id,
        }


@dataclass(frozen=True)
class PhantomImage:
    """One view of a phantom exam.

    Attributes
    ----------
    dataset
        The DICOM dataset, with file meta information, encoded in the requested
        transfer syntax.
    pixels
        Stored pixel values (rows x columns, ``uint16``), as decoded from ``dataset``.
    laterality, view
        ``"L"``/``"R"`` and ``"CC"``/``"MLO"``.
    """

    dataset: Dataset
    pixels: np.ndarray = field(repr=False)
    laterality: str
    view: str

    @property
    def sop_uid(self) -> str:
        """SOP Instance UID."""
        return str(self.dataset.SOPInstanceUID)

    @property
    def label(self) -> str:
        """``RCC``, ``LCC``, ``RMLO`` or ``LMLO``; also the file stem on disk."""
        return self.laterality + self.view


@dataclass(frozen=True)
class PhantomExam:
    """A synthetic four-view screening exam and its ground truth.

    Attributes
    ----------
    seed, exam_number
        The inputs that, with :attr:`options`, determine everything else.
    options
        Image options used.
    study_uid, patient_id
        Study Instance UID and Patient ID.
    images
        RCC, LCC, RMLO, LMLO, in that order.
    lesions
        One entry per lesion per image it appears in; empty for a normal exam.
    """

    seed: int
    exam_number: int
    options: ImageOptions
    study_uid: str
    patient_id: str
    images: tuple[PhantomImage, ...]
    lesions: tuple[Lesion, ...]

    @property
    def normal(self) -> bool:
        """True when the exam holds no lesion."""
        return not self.lesions

    def image(self, laterality: str, view: str) -> PhantomImage:
        """The image of one breast and view (``image("R", "CC")``)."""
        for image in self.images:
            if image.laterality == laterality and image.view == view:
                return image
        raise KeyError(f"{laterality}{view}")

    def save(self, folder: Path | str) -> dict[str, Path]:
        """Write the four images as ``<folder>/<RCC|LCC|RMLO|LMLO>.dcm``.

        Returns
        -------
        dict
            File path per image label.
        """
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        paths = {}
        for image in self.images:
            path = folder / f"{image.label}.dcm"
            image.dataset.save_as(path, enforce_file_format=True)
            paths[image.label] = path
        return paths

    def ground_truth(self, files: dict[str, str] | None = None) -> dict[str, Any]:
        """The exam's ``ground_truth.json`` entry.

        Parameters
        ----------
        files
            Relative file path per image label; defaults to ``<label>.dcm``.
        """
        files = files or {image.label: f"{image.label}.dcm" for image in self.images}
        return {
            "study_uid": self.study_uid,
            "patient_id": self.patient_id,
            "normal": self.normal,
            "images": [
                {
                    "sop_uid": image.sop_uid,
                    "file": files[image.label],
                    "laterality": image.laterality,
                    "view": image.view,
                }
                for image in self.images
            ],
            "lesions": [lesion.to_json() for lesion in self.lesions],
        }


def _uid(seed: int, exam_number: int, options: ImageOptions, role: str) -> UID:
    """Deterministic UID for one role (study, series, an image) of an exam.

    A ``2.25`` UID (PS3.5 B.2) made from a name-based UUID (ISO/IEC 9834-8) of the
    seed, the exam number, the pixel-changing options and the role, so the same
    inputs always give the same UID and different inputs practically never collide.
    """
    name = "\x1f".join(["phantom", str(seed), str(exam_number), options.pixel_key(), role])
    return UID(f"2.25.{uuid.uuid5(UID_NAMESPACE, name).int}")


def _code(value: str, meaning: str) -> Dataset:
    """SNOMED CT coded entry (PS3.3 Table 8.8-1)."""
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = "SCT"
    item.CodeMeaning = meaning
    return item


def patient_orientation(laterality: str, view: str, layout: str) -> list[str]:
    """Patient Orientation (0020,0020) of a phantom view in a stored layout.

    Parameters
    ----------
    laterality
        ``"L"`` or ``"R"``.
    view
        ``"CC"`` or ``"MLO"``.
    layout
        ``"standard"`` or ``"mirrored"``.
    """
    toward_posterior = (laterality == "R") != (layout == "mirrored")
    row_direction = "P" if toward_posterior else "A"
    if view == "MLO":
        return [row_direction, "F"]
    return [row_direction, "L" if laterality == "R" else "R"]


def chest_wall_on_right(laterality: str, layout: str) -> bool:
    """True when the chest wall is on the right edge of the stored image."""
    return (laterality == "R") != (layout == "mirrored")


def _to_stored(image: np.ndarray, options: ImageOptions) -> np.ndarray:
    """Quantise a canonical float image to stored values (``uint16``)."""
    top = options.max_value
    stored = np.rint(np.clip(image, 0.0, 1.0) * np.float32(top)).astype(np.uint16)
    if options.photometric == "MONOCHROME1":
        stored = np.uint16(top) - stored
    return stored


@dataclass(frozen=True)
class _ExamHeader:
    """Patient and study attributes shared by the four images."""

    exam_number: int
    patient_id: str
    study_uid: UID
    series_uid: UID
    study_date: _dt.date
    study_time: _dt.time
    age: int


def _build_dataset(
    stored: np.ndarray,
    header: _ExamHeader,
    laterality: str,
    view: str,
    instance_number: int,
    sop_uid: UID,
    options: ImageOptions,
) -> Dataset:
    """Digital Mammography X-Ray Image - For Presentation dataset of one view."""
    ds = Dataset()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MG_FOR_PRESENTATION
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    ds.file_meta = meta

    date = header.study_date.strftime("%Y%m%d")
    study_time = header.study_time.strftime("%H%M%S")
    acquired = (
        _dt.datetime.combine(header.study_date, header.study_time)
        + _dt.timedelta(seconds=40 * instance_number)
    ).strftime("%H%M%S")
    birth = header.study_date.replace(year=header.study_date.year - header.age, month=1, day=1)

    # SOP Common (C.12.1)
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["DERIVED", "PRIMARY"]
    ds.SOPClassUID = MG_FOR_PRESENTATION
    ds.SOPInstanceUID = sop_uid
    # General Study (C.7.2.1)
    ds.StudyDate = date
    ds.SeriesDate = date
    ds.AcquisitionDate = date
    ds.ContentDate = date
    ds.StudyTime = study_time
    ds.SeriesTime = study_time
    ds.AcquisitionTime = acquired
    ds.ContentTime = acquired
    ds.AccessionNumber = f"PH{int(header.study_uid.split('.')[-1]) % 10**12:012d}"
    ds.Modality = "MG"
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.Manufacturer = MANUFACTURER
    ds.InstitutionName = "Synthetic data"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "Screening mammography (synthetic phantom)"
    ds.SeriesDescription = "Screening views"
    ds.ManufacturerModelName = "mammotriage.phantom"
    ds.AnatomicRegionSequence = Sequence([_code("76752008", "Breast")])
    # Patient (C.7.1.1)
    ds.PatientName = f"PHANTOM^EXAM{header.exam_number:03d}"
    ds.PatientID = header.patient_id
    ds.PatientBirthDate = birth.strftime("%Y%m%d")
    ds.PatientSex = "F"
    ds.PatientAge = f"{header.age:03d}Y"
    # Acquisition (DX Positioning, X-Ray Acquisition Dose, Mammography Image)
    ds.BodyPartExamined = "BREAST"
    ds.KVP = "29"
    ds.DeviceSerialNumber = "0001"
    ds.SoftwareVersions = __version__
    ds.ImagerPixelSpacing = [f"{options.spacing_mm:.6g}"] * 2
    ds.PositionerType = "MAMMOGRAPHIC"
    ds.ViewPosition = view
    ds.DetectorType = "DIRECT"
    # General Series, General Image
    ds.StudyInstanceUID = header.study_uid
    ds.SeriesInstanceUID = header.series_uid
    ds.StudyID = f"{header.exam_number}"
    ds.SeriesNumber = 1
    ds.InstanceNumber = instance_number
    ds.PatientOrientation = patient_orientation(laterality, view, options.stored_layout)
    ds.ImageLaterality = laterality
    # Image Pixel (C.7.6.3)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = options.photometric
    ds.Rows, ds.Columns = stored.shape
    ds.BitsAllocated = 16
    ds.BitsStored = options.bits_stored
    ds.HighBit = options.bits_stored - 1
    ds.PixelRepresentation = 0
    # DX Image (C.8.11.3)
    ds.QualityControlImage = "NO"
    ds.BurnedInAnnotation = "NO"
    ds.PixelIntensityRelationship = "LOG"
    # higher stored value = less X-ray intensity for MONOCHROME2 (C.8.11.3.1.2)
    ds.PixelIntensityRelationshipSign = -1 if options.photometric == "MONOCHROME2" else 1
    ds.RescaleIntercept = "0"
    ds.RescaleSlope = "1"
    ds.RescaleType = "US"
    # VOI LUT (C.11.2): windows on stored values
    top = options.max_value
    centres, widths = [], []
    for _, centre, width in _WINDOWS:
        c = centre * top if options.photometric == "MONOCHROME2" else (1 - centre) * top
        centres.append(f"{c:.1f}")
        widths.append(f"{width * top:.1f}")
    ds.WindowCenter = centres
    ds.WindowWidth = widths
    ds.WindowCenterWidthExplanation = [name for name, _, _ in _WINDOWS]
    ds.VOILUTFunction = "LINEAR"
    ds.BreastImplantPresent = "NO"
    ds.LossyImageCompression = "00"
    ds.PresentationLUTShape = "IDENTITY" if options.photometric == "MONOCHROME2" else "INVERSE"
    # Mammography Image (C.8.11.7)
    ds.OrganExposed = "BREAST"
    ds.PartialView = "NO"
    view_code = _code(*_VIEW_CODES[view])
    view_code.ViewModifierCodeSequence = Sequence()
    ds.ViewCodeSequence = Sequence([view_code])
    # Acquisition Context (C.7.6.14)
    ds.AcquisitionContextSequence = Sequence()

    ds.PixelData = stored.astype("<u2").tobytes()
    ts = options.transfer_syntax_uid
    if ts != ExplicitVRLittleEndian:
        ds.compress(ts, encoding_plugin=_ENCODERS[ts], generate_instance_uid=False)
    return ds


def generate_exam(
    seed: int,
    *,
    exam_number: int = 1,
    normal: bool | None = None,
    years_before: int = 0,
    **options: Any,
) -> PhantomExam:
    """Generate one synthetic four-view screening exam in memory.

    Parameters
    ----------
    seed
        Seed of the exam (a non-negative integer). Together with ``exam_number`` and
        the options it fixes every pixel, UID and date.
    exam_number
        Number of the exam within a set (1-based); part of the patient name
        (``PHANTOM^EXAM001``) and the patient ID, and of the random stream.
    normal
        ``True`` for no lesions, ``False`` for at least one, ``None`` to let the seed
        decide (about one exam in three normal).
    years_before
        0 for the exam itself; ``n`` > 0 for the same patient's exam ``n`` years
        earlier (a prior): same breasts and tissue, same Patient ID, name and birth
        date, its own UIDs; the first lesion smaller (half the size, lower contrast)
        and any further lesions absent, so that comparison shows what is new.
    **options
        Fields of :class:`ImageOptions`: ``rows``, ``columns``, ``bits_stored``,
        ``photometric``, ``transfer_syntax``, ``stored_layout``,
        ``pixel_spacing_mm``, ``nipple``.

    Returns
    -------
    PhantomExam
        The four datasets (RCC, LCC, RMLO, LMLO) with stored pixels and the lesion
        boxes in stored-pixel coordinates.
    """
    if seed < 0 or exam_number < 0 or years_before < 0:
        raise ValueError("seed, exam_number and years_before must be non-negative")
    opts = ImageOptions(**options)
    streams = np.random.SeedSequence([seed, exam_number]).spawn(1 + len(SCREENING_VIEWS))
    spec = anatomy.sample_exam(np.random.default_rng(streams[0]), normal=normal)
    role = f"prior{years_before}/" if years_before else ""
    if years_before:
        earlier = [dataclasses.replace(les, size_mm=les.size_mm * 0.5, contrast=les.contrast * 0.7)
                   for les in spec.lesions[:1]]
        spec = dataclasses.replace(spec, lesions=tuple(earlier), age=spec.age - years_before)
    rows, columns, spacing = opts.rows, opts.columns, opts.spacing_mm

    shapes = {
        side: {
            "CC": anatomy.shape_in_pixels(breast.cc, rows, columns),
            "MLO": anatomy.shape_in_pixels(breast.mlo, rows, columns),
        }
        for side, breast in spec.breasts.items()
    }
    centres = [
        anatomy.lesion_centres(lesion, shapes[lesion.laterality], rows, spacing)
        for lesion in spec.lesions
    ]

    study_date = _dt.date(2020, 1, 1) + _dt.timedelta(days=spec.study_day)
    if years_before:
        study_date -= _dt.timedelta(days=365 * years_before + 11)
    header = _ExamHeader(
        exam_number=exam_number,
        patient_id=f"PHANTOM-{seed}-{exam_number:03d}",
        study_uid=_uid(seed, exam_number, opts, role + "study"),
        series_uid=_uid(seed, exam_number, opts, role + "series"),
        study_date=study_date,
        study_time=(_dt.datetime.min + _dt.timedelta(seconds=spec.study_seconds)).time(),
        age=spec.age,
    )

    images: list[PhantomImage] = []
    lesions: list[Lesion] = []
    for number, ((side, view), stream) in enumerate(
        zip(SCREENING_VIEWS, streams[1:], strict=True), 1
    ):
        canvas = anatomy.render_tissue(
            shapes[side][view],
            rows,
            columns,
            spacing,
            spec.density,
            np.random.default_rng(stream),
            nipple=opts.nipple,
        )
        drawn = [
            (index, anatomy.draw_lesion(canvas, lesion, view, centre[view], spacing))
            for index, (lesion, centre) in enumerate(zip(spec.lesions, centres, strict=True))
            if lesion.laterality == side
        ]
        flip = chest_wall_on_right(side, opts.stored_layout)
        stored = _to_stored(canvas[:, ::-1] if flip else canvas, opts)
        sop_uid = _uid(seed, exam_number, opts, f"{role}image/{side}{view}")
        dataset = _build_dataset(stored, header, side, view, number, sop_uid, opts)
        images.append(PhantomImage(dataset=dataset, pixels=stored, laterality=side, view=view))
        for index, lesion in drawn:
            x0, y0, x1, y1 = lesion.box
            box = (columns - x1, y0, columns - x0, y1) if flip else (x0, y0, x1, y1)
            lesions.append(
                Lesion(
                    sop_uid=str(sop_uid),
                    box=box,
                    kind=lesion.spec.kind,
                    subtype=lesion.spec.subtype,
                    malignant=lesion.spec.malignant,
                    laterality=side,
                    view=view,
                    lesion_id=index,
                )
            )
    return PhantomExam(
        seed=seed,
        exam_number=exam_number,
        options=opts,
        study_uid=str(header.study_uid),
        patient_id=header.patient_id,
        images=tuple(images),
        lesions=tuple(lesions),
    )


def write_demo_set(out_dir: Path | str, n_exams: int, seed: int, priors: int = 0, **options: Any) -> Path:
    """Write ``n_exams`` phantom exams and their ground truth.

    Exams go to ``out_dir/exam001/RCC.dcm`` and so on; every third exam (numbers 3,
    6, 9, ...) is normal, the others hold one or two lesions. ``priors`` patients
    (exam 1, then exam 3, then the others in order: one with lesions, one normal
    first) also get their exam of 1 or 2 years earlier, in ``exam001-prior/``: the
    lesion smaller or absent, a normal patient stable. Its ground-truth entry says
    ``"prior_of"`` (the current exam's Study Instance UID) and ``"years_before"``;
    the current exam's entry lists ``"prior_study_uids"``.

    Parameters
    ----------
    out_dir
        Output folder (created if missing).
    n_exams
        Number of exams.
    seed
        Seed of the set; exam ``k`` is ``generate_exam(seed, exam_number=k)``.
    **options
        :class:`ImageOptions` fields, as for :func:`generate_exam`.

    Returns
    -------
    pathlib.Path
        Path of ``out_dir/ground_truth.json``: ``{"generator": "mammotriage.phantom",
        "version": 1, "seed": seed, "exams": [...]}`` with one
        :meth:`PhantomExam.ground_truth` entry per exam, file paths relative to
        ``out_dir``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    exams = []
    order = [n for n in (1, 3) if n <= n_exams] + [n for n in range(1, n_exams + 1) if n not in (1, 3)]
    with_prior = set(order[: max(priors, 0)])
    for number in range(1, n_exams + 1):
        exam = generate_exam(seed, exam_number=number, normal=number % 3 == 0, **options)
        folder = f"exam{number:03d}"
        paths = exam.save(out / folder)
        entry = exam.ground_truth({label: f"{folder}/{path.name}" for label, path in paths.items()})
        exams.append(entry)
        if number in with_prior:
            years = 1 + number % 2  # 1 or 2 years earlier
            prior = generate_exam(seed, exam_number=number, normal=number % 3 == 0, years_before=years,
                                  **options)
            prior_folder = f"{folder}-prior"
            prior_paths = prior.save(out / prior_folder)
            prior_entry = prior.ground_truth(
                {label: f"{prior_folder}/{path.name}" for label, path in prior_paths.items()})
            prior_entry.update(prior_of=exam.study_uid, years_before=years)
            entry["prior_study_uids"] = [prior.study_uid]
            exams.append(prior_entry)
    truth = {
        "generator": "mammotriage.phantom",
        "version": GROUND_TRUTH_VERSION,
        "seed": seed,
        "exams": exams,
    }
    path = out / GROUND_TRUTH_NAME
    path.write_text(json.dumps(truth, indent=1) + "\n", encoding="utf-8")
    return path



def film_exam(
    images: list[tuple[np.ndarray, str, str, str]],
    *,
    patient_id: str,
    patient_name: str,
    exam_number: int,
    spacing_mm: float,
    seed: int = 9090,
    namespace: str = "film",
    source: str = "digitised film",
    institution: str = "",
    description: str = "",
) -> list[Dataset]:
    """Real 8-bit mammograms (e.g. digitised film) as one exam of MG For Presentation datasets.

    ``images``: ``(pixels, laterality, view, image_id)`` per view, pixels ``uint8`` with
    tissue bright, stored in place (12 bits, scaled by 4095 / 255, so pixel coordinates
    and labels stay valid). The chest wall is found in the pixels
    (:func:`~mammotriage.dicom.hanging.chest_wall_from_pixels`, else the half holding
    more tissue) and the stored layout named to match, so Patient Orientation is self-consistent. Same dataset builder as
    the phantoms; the window covers the whole stored range; the UIDs are ``2.25`` UIDs of
    ``seed``, ``exam_number``, ``namespace`` and each ``image_id``.
    """
    from mammotriage.dicom.hanging import chest_wall_from_pixels

    out: list[Dataset] = []
    header: _ExamHeader | None = None
    for instance, (pixels8, laterality, view, image_id) in enumerate(images, 1):
        side = chest_wall_from_pixels(pixels8)
        if side not in ("left", "right"):  # film borders can hide the edge band: the tissue's half
            half = pixels8.shape[1] // 2
            side = "right" if pixels8[:, half:].mean() > pixels8[:, :half].mean() else "left"
        right = side == "right"
        layout: Literal["standard", "mirrored"] = (
            "standard" if chest_wall_on_right(laterality, "standard") == right else "mirrored")
        rows, columns = pixels8.shape
        opts = ImageOptions(rows=rows, columns=columns, bits_stored=12, stored_layout=layout,
                            pixel_spacing_mm=spacing_mm, nipple=False)
        if header is None:
            base = ImageOptions(rows=rows, columns=columns, pixel_spacing_mm=spacing_mm)
            header = _ExamHeader(
                exam_number=exam_number, patient_id=patient_id,
                study_uid=_uid(seed, exam_number, base, f"{namespace}/study"),
                series_uid=_uid(seed, exam_number, base, f"{namespace}/series"),
                study_date=_dt.date(2021, 1, 1) + _dt.timedelta(days=exam_number),
                study_time=_dt.time(9, 0, 0), age=55)
        stored = np.rint(pixels8.astype(np.float32) * (opts.max_value / 255.0)).astype(np.uint16)
        sop = _uid(seed, exam_number, opts, f"{namespace}/image/{image_id}")
        ds = _build_dataset(stored, header, laterality, view, instance, sop, opts)
        ds.Manufacturer = source
        ds.ManufacturerModelName = "film digitiser"
        ds.InstitutionName = institution
        ds.StudyDescription = description or f"Screening mammography ({source})"
        ds.PatientName = patient_name
        ds.DetectorType = "FILM"
        ds.WindowCenter, ds.WindowWidth = f"{opts.max_value / 2:.1f}", f"{opts.max_value + 1:.1f}"
        ds.WindowCenterWidthExplanation = "FULL RANGE"
        out.append(ds)
    return out
