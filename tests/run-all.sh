#!/usr/bin/env bash
# Install everything from scratch (system tools, venv, pinned packages) and run the
# whole test suite. This is README's test command and what CI runs.
set -euo pipefail
cd "$(dirname "$0")/.."

# 1. System tools the tests use as real third-party peers: dcmtk (storescu, storescp,
#    echoscu, dcmdump), dicom3tools (dciodvfy), Xvfb and the xcb libraries Qt needs;
#    libopenjp2 (>= 2.5) for glymur's progressive JPEG 2000 decoding; the site-mode servers
#    the tests start on 127.0.0.1 in temporary folders: Orthanc with its DICOMweb plugin
#    (orthanc, orthanc-dicomweb) and PostgreSQL (postgresql: initdb, pg_ctl).
need_apt=0
for tool in dciodvfy storescu dcmdump xvfb-run; do command -v "$tool" >/dev/null 2>&1 || need_apt=1; done
ldconfig -p 2>/dev/null | grep -q 'libopenjp2\.so\.7' || need_apt=1
{ command -v Orthanc >/dev/null 2>&1 || [ -x /usr/sbin/Orthanc ]; } || need_apt=1
compgen -G '/usr/share/orthanc/plugins/libOrthancDicomWeb.so*' >/dev/null || need_apt=1
{ command -v initdb >/dev/null 2>&1 || compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null; } || need_apt=1
if [ "$need_apt" = 1 ]; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends dcmtk dicom3tools xvfb xauth \
    libxcb-icccm4 libxcb-keysyms1 libxcb-image0 libxcb-render-util0 libxcb-xinerama0 \
    libxcb-xkb1 libxkbcommon-x11-0 libxcb-randr0 libxcb-shape0 libxcb-cursor0 \
    libegl1 libgl1 libfontconfig1 libdbus-1-3 libopenjp2-7 \
    orthanc orthanc-dicomweb postgresql >/dev/null
fi

# 2. Python environment with the pinned dependencies.
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q -c constraints.txt -e '.[dev]'

# 3. The whole suite (Qt offscreen; the real-window test starts its own Xvfb), with the
#    25 slowest tests listed at the end (CI time is a budget).
export QT_QPA_PLATFORM=offscreen
set +e
.venv/bin/python -m pytest --durations=25 "$@"
rc=$?
set -e
if [ "$rc" = 5 ]; then echo "pytest collected no tests: failing" >&2; exit 1; fi
exit "$rc"
