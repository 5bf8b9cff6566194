#!/usr/bin/env bash
# Mammo Triage offline installer. Uses no network at all: every package comes from
# the wheelhouse beside this script (pip --no-index), checked against SHA256SUMS first.
#
#   ./install.sh [--prefix DIR] [--python PY] [--no-desktop] [--no-selfcheck]
#   sudo ./install.sh --site-server [--simulate] [same options]
#
# Installs into PREFIX (default ~/.local/opt/mammotriage):
#   PREFIX/venv/           the Python environment
#   PREFIX/models/         the shipped model packages
#   PREFIX/bin/mammotriage the launcher (sets MAMMOTRIAGE_MODEL to the shipped model)
# and a desktop entry in ${XDG_DATA_HOME:-~/.local/share}/applications (not with
# --no-desktop), then runs the self-check (decode a demo, load the model with its hash
# check, run one inference). With --site-server (a bundle built with --site-server, as
# root, on the Debian/Ubuntu release it was built on) it first installs the site
# server's Debian packages from site-debs/ (Orthanc, its DICOMweb plugin, PostgreSQL,
# dcmtk) with apt and no package source; --simulate only checks that they would install.
# Exit status: 0 installed and checked, 1 failed, 2 bad use.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PREFIX="${HOME}/.local/opt/mammotriage"
PYTHON=""
DESKTOP=1
SELFCHECK=1
SITE=0
SIMULATE=0

say() { printf '[install] %s\n' "$*"; }
die() { printf '[install] ERROR: %s\n' "$*" >&2; exit "${2:-1}"; }
usage() { sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) [ $# -ge 2 ] || die "--prefix needs a folder" 2; PREFIX="$2"; shift 2 ;;
    --prefix=*) PREFIX="${1#*=}"; shift ;;
    --python) [ $# -ge 2 ] || die "--python needs an interpreter" 2; PYTHON="$2"; shift 2 ;;
    --python=*) PYTHON="${1#*=}"; shift ;;
    --no-desktop) DESKTOP=0; shift ;;
    --no-selfcheck) SELFCHECK=0; shift ;;
    --site-server) SITE=1; shift ;;
    --simulate) SIMULATE=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown option: $1" 2 ;;
  esac
done

[ -f "$HERE/bundle.json" ] || die "bundle.json not found beside install.sh: run install.sh from an unpacked bundle"
[ -d "$HERE/wheelhouse" ] || die "wheelhouse/ not found beside install.sh: the bundle is incomplete"
[ "$SIMULATE" = 0 ] || [ "$SITE" = 1 ] || die "--simulate goes with --site-server" 2

# --- 1. Python of the version the wheels were built for -------------------------
field() {  # field NAME: a top-level string/bool field of bundle.json (no Python needed yet)
  sed -n "s/^  \"$1\": \"\{0,1\}\([^\",]*\)\"\{0,1\},\{0,1\}$/\1/p" "$HERE/bundle.json" | head -n1
}
WANT_PY=$(field python)
VERSION=$(field version)
MIN_GLIBC=$(field min_glibc)
DEFAULT_MODEL=$(field default_model)
REQUIRE_MODEL=$(field require_model)
[ -n "$WANT_PY" ] && [ -n "$VERSION" ] || die "bundle.json lacks python/version: damaged bundle"

if [ -z "$PYTHON" ]; then
  for candidate in "python$WANT_PY" python3; do
    if command -v "$candidate" >/dev/null 2>&1; then PYTHON=$(command -v "$candidate"); break; fi
  done
fi
[ -n "$PYTHON" ] || die "Python $WANT_PY not found: install it (Debian/Ubuntu: apt-get install python3 python3-venv) or give --python" 2
HAVE_PY=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null) \
  || die "cannot run $PYTHON" 2
[ "$HAVE_PY" = "$WANT_PY" ] \
  || die "this bundle is for Python $WANT_PY but $PYTHON is $HAVE_PY: use --python, or build a bundle with that Python (installer/build_bundle.py --python ...)" 2
"$PYTHON" -c 'import venv, ensurepip' 2>/dev/null \
  || die "$PYTHON cannot create virtual environments: install python3-venv" 2

if [ -n "$MIN_GLIBC" ] && [ "$MIN_GLIBC" != "null" ]; then
  HAVE_GLIBC=$("$PYTHON" -c 'import platform; print(platform.libc_ver()[1] or "0")')
  "$PYTHON" - "$HAVE_GLIBC" "$MIN_GLIBC" <<'EOF' || die "this system has glibc $HAVE_GLIBC; the bundle needs $MIN_GLIBC or newer (see HOSPITAL-IT.md)" 2
import sys
have, need = (tuple(int(x) for x in v.split(".")[:2]) for v in sys.argv[1:3])
sys.exit(0 if have >= need else 1)
EOF
fi

# --- 2. Integrity of the bundle ------------------------------------------------
say "verifying checksums of the bundle"
[ -f "$HERE/SHA256SUMS" ] || die "SHA256SUMS missing: damaged bundle"
"$PYTHON" - "$HERE" <<'EOF' || die "the bundle is damaged (checksum mismatch above): copy it again"
import hashlib, pathlib, sys
root = pathlib.Path(sys.argv[1])
bad = 0
listed = set()
for line in (root / "SHA256SUMS").read_text().splitlines():
    digest, name = line.split("  ", 1)
    listed.add(name)
    path = root / name
    h = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 22), b""):
                h.update(chunk)
    except OSError as exc:
        print(f"  {name}: {exc.strerror}", file=sys.stderr); bad += 1; continue
    if h.hexdigest() != digest:
        print(f"  {name}: checksum mismatch", file=sys.stderr); bad += 1
extra = [p for folder in ("wheelhouse", "site-debs") for p in (root / folder).glob("*")
         if p.relative_to(root).as_posix() not in listed]
for p in extra:
    print(f"  {p.relative_to(root)}: not part of the bundle", file=sys.stderr); bad += 1
sys.exit(1 if bad else 0)
EOF

# --- 2b. The site server's Debian packages (--site-server) ----------------------
if [ "$SITE" = 1 ]; then
  SITE_RELEASE=$(field site_release)
  [ -n "$SITE_RELEASE" ] && [ "$SITE_RELEASE" != "null" ] && [ -d "$HERE/site-debs" ] \
    || die "this bundle carries no site server packages: build it with installer/build_bundle.py --site-server" 2
  HAVE_RELEASE=$(. /etc/os-release 2>/dev/null && printf '%s %s' "${ID:-}" "${VERSION_ID:-}")
  [ "$HAVE_RELEASE" = "$SITE_RELEASE" ] \
    || die "the site packages are for $SITE_RELEASE but this system is ${HAVE_RELEASE:-unknown}: build the bundle on the server's release" 2
  command -v apt-get >/dev/null 2>&1 || die "apt-get not found: the site packages need a Debian/Ubuntu system" 2
  # No package source at all: apt sees what is installed and the files given, nothing else.
  APT=(apt-get -q -o Dir::Etc::SourceList=/dev/null -o Dir::Etc::SourceParts=/dev/null
       install --no-install-recommends)
  DEBS=("$HERE"/site-debs/*.deb)
  if [ "$SIMULATE" = 1 ]; then
    say "checking that the ${#DEBS[@]} site server packages install here (apt --simulate, nothing changed)"
    PLAN=$("${APT[@]}" --simulate "${DEBS[@]}" 2>&1) || { printf '%s\n' "$PLAN" | tail -n 25 >&2; die "apt finds no way to install the site packages here (above)"; }
    NEW=$(printf '%s\n' "$PLAN" | grep -c '^Inst ' || true)
    say "site server packages: $NEW to install or upgrade, the rest present; nothing was changed"
    exit 0
  fi
  [ "$(id -u)" = 0 ] || die "--site-server installs system packages: run it as root (sudo ./install.sh --site-server)" 2
  say "installing the site server's Debian packages (${#DEBS[@]} files, no package source)"
  DEBIAN_FRONTEND=noninteractive "${APT[@]}" -y "${DEBS[@]}" \
    || die "apt could not install the site packages (output above)"
  say "site server packages installed; Debian's own orthanc and postgresql services may have started on their default ports (4242, 8042, 5432): the site runs its own servers (mammotriage site init/start), so stop them if unused (systemctl disable --now orthanc postgresql)"
fi

# --- 3. Environment, offline ---------------------------------------------------
MARKER="$PREFIX/.mammotriage-install"
if [ -e "$PREFIX" ] && [ -n "$(ls -A "$PREFIX" 2>/dev/null)" ] && [ ! -f "$MARKER" ]; then
  die "$PREFIX exists and was not made by this installer: choose another --prefix" 2
fi
mkdir -p "$PREFIX/bin"
touch "$MARKER"
rm -rf "$PREFIX/venv"
say "creating $PREFIX/venv with $PYTHON ($HAVE_PY)"
"$PYTHON" -m venv "$PREFIX/venv"

# No index, no configuration from this machine, no cache: only the wheelhouse.
while IFS= read -r var; do unset "$var"; done < <(env | sed -n 's/^\(PIP_[A-Za-z0-9_]*\)=.*/\1/p')
export PIP_CONFIG_FILE=/dev/null PIP_NO_INDEX=1 PIP_NO_INPUT=1 PIP_DISABLE_PIP_VERSION_CHECK=1
say "installing mammotriage $VERSION from the wheelhouse (no network)"
"$PREFIX/venv/bin/python" -m pip install --no-index --no-cache-dir \
  --find-links "$HERE/wheelhouse" -c "$HERE/constraints.txt" "mammotriage==$VERSION" \
  || die "pip could not install from the wheelhouse (output above)"

# --- 4. Models and launcher ----------------------------------------------------
rm -rf "$PREFIX/models"
if [ -d "$HERE/models" ]; then
  cp -R "$HERE/models" "$PREFIX/models"
fi
MODEL_LINE=""
if [ -n "$DEFAULT_MODEL" ] && [ "$DEFAULT_MODEL" != "null" ]; then
  MODEL_LINE="[ -n \"\${MAMMOTRIAGE_MODEL:-}\" ] || export MAMMOTRIAGE_MODEL=\"$PREFIX/models/$DEFAULT_MODEL\""
fi
cat > "$PREFIX/bin/mammotriage" <<EOF
#!/bin/sh
# Mammo Triage $VERSION launcher (written by install.sh)
$MODEL_LINE
exec "$PREFIX/venv/bin/mammotriage" "\$@"
EOF
chmod 755 "$PREFIX/bin/mammotriage"

# --- 5. Desktop entry ----------------------------------------------------------
if [ "$DESKTOP" = 1 ]; then
  APPS="${XDG_DATA_HOME:-$HOME/.local/share}/applications"
  mkdir -p "$APPS"
  cat > "$APPS/mammotriage.desktop" <<EOF
[Desktop Entry]
Type=Application
Version=1.0
Name=Mammo Triage
GenericName=Mammography triage workstation
Comment=Screening mammography reading with local AI triage (research demonstration, not for clinical use)
Exec="$PREFIX/bin/mammotriage" app
Terminal=false
Categories=Graphics;MedicalSoftware;Science;
EOF
  if command -v desktop-file-validate >/dev/null 2>&1; then
    desktop-file-validate "$APPS/mammotriage.desktop" || die "invalid desktop entry (see above)"
  fi
  say "desktop entry: $APPS/mammotriage.desktop"
fi

"$PREFIX/venv/bin/python" - "$PREFIX/install.json" "$VERSION" "$HERE" <<'EOF'
import datetime, json, sys
json.dump({"version": sys.argv[2], "bundle": sys.argv[3],
           "installed_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")},
          open(sys.argv[1], "w"), indent=2)
EOF

# --- 6. Self-check ---------------------------------------------------------------
if [ "$SELFCHECK" = 1 ]; then
  say "running the self-check"
  CHECK_ARGS=()
  [ "$REQUIRE_MODEL" = "true" ] && CHECK_ARGS+=(--require-model)
  [ -n "$MODEL_LINE" ] && export MAMMOTRIAGE_MODEL="${MAMMOTRIAGE_MODEL:-$PREFIX/models/$DEFAULT_MODEL}"
  # The module form does not depend on the command-line wiring; same checks as
  # `mammotriage selfcheck`. Nothing here writes to the user's archive.
  QT_QPA_PLATFORM="${QT_QPA_PLATFORM:-offscreen}" \
    "$PREFIX/venv/bin/python" -m mammotriage.net.selfcheck ${CHECK_ARGS[@]+"${CHECK_ARGS[@]}"} \
    || die "installed in $PREFIX, but the self-check FAILED (see above)"
fi

say "Mammo Triage $VERSION installed in $PREFIX; start it with: $PREFIX/bin/mammotriage"
