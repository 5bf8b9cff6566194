"""Synthetic four-view screening mammography exams with ground truth.

Deterministic phantoms for the demo, the tests and as a training aid: each exam is
four Digital Mammography X-Ray Image - For Presentation DICOM images (RCC, LCC, RMLO,
LMLO) with lesion boxes in stored-pixel coordinates.

>>> from mammotriage.phantom import generate_exam
>>> exam = generate_exam(7)  # doctest: +SKIP
>>> [image.label for image in exam.images]  # doctest: +SKIP
['RCC', 'LCC', 'RMLO', 'LMLO']
"""

from mammotriage.phantom.anatomy import ExamSpec, LesionSpec
from mammotriage.phantom.writer import (
    GROUND_TRUTH_NAME,
    ImageOptions,
    Lesion,
    PhantomExam,
    PhantomImage,
    generate_exam,
    write_demo_set,
)

__all__ = [
    "GROUND_TRUTH_NAME",
    "ExamSpec",
    "ImageOptions",
    "Lesion",
    "LesionSpec",
    "PhantomExam",
    "PhantomImage",
    "generate_exam",
    "write_demo_set",
]
