"""Helpers for the site-archive tests: a real Orthanc on 127.0.0.1 in a temporary folder.

Orthanc and its DICOMweb plugin come from Debian's ``orthanc`` and ``orthanc-dicomweb``
packages. Missing, the tests skip with the package names; under ``CI=true`` (where
``tests/run-all.sh`` installs them) they fail instead.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from netsupport import free_port

from mammotriage.net.orthanc import (
    OrthancNotFoundError,
    OrthancServer,
    find_dicomweb_plugin,
    find_orthanc,
)


def require_orthanc() -> None:
    """Skip (fail under CI) when Orthanc or its DICOMweb plugin is not installed."""
    try:
        find_dicomweb_plugin(binary=find_orthanc())
    except OrthancNotFoundError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"{exc}; tests/run-all.sh must install it")
        pytest.skip(str(exc))


def new_server(folder: Path, stable_age_s: int = 2) -> OrthancServer:
    """A configured (not started) archive on two free loopback ports."""
    require_orthanc()
    http_port = free_port()
    dicom_port = free_port()
    while dicom_port == http_port:
        dicom_port = free_port()
    server = OrthancServer(folder, http_port, dicom_port, stable_age_s=stable_age_s)
    server.write_config()
    return server


@contextmanager
def running_server(folder: Path, stable_age_s: int = 2) -> Iterator[OrthancServer]:
    """A started archive in ``folder`` (:func:`new_server`), stopped at the end."""
    server = new_server(folder, stable_age_s=stable_age_s)
    server.start()
    try:
        yield server
    finally:
        server.stop()
