"""Mammo Triage: offline screening-mammography triage workstation."""

__version__ = "0.2.0"
