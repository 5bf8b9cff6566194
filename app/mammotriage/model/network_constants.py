"""Constants shared by the torch and non-torch parts of the model package."""

CLASSES = ("mass", "calcification")
