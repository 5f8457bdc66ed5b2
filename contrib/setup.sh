#!/usr/bin/env bash
# Set phototag up on Debian/Ubuntu, then caption a folder or run the tests.
#
#   contrib/setup.sh ~/Pictures     set up, then `phototag backfill ~/Pictures`
#   contrib/setup.sh --test [ARGS]  set up with the test tools, check ruff/mypy, then `python -m pytest -q ARGS` (what CI runs)
#   contrib/setup.sh                set up only
#
# Setting up: ExifTool and a Python >= 3.11 with venv from apt (as root, or through sudo), an isolated
# environment in .venv beside this checkout, torch for this machine (CUDA wheels where an NVIDIA GPU is
# present, CPU wheels elsewhere: a CPU-only machine then downloads ~200 MB instead of ~2.9 GB), then
# phototag itself. Running it again reuses what is there.
#
# Environment:
#   PHOTOTAG_TORCH_SPEC   torch requirement to install instead of the choice above (e.g. "torch==2.13.0")
#   PHOTOTAG_TORCH_INDEX  index URL for it (e.g. https://download.pytorch.org/whl/cu126)
#   PHOTOTAG_PYTHON       the Python to build .venv with (default: the newest python3.1x >= 3.11 found)
#   PHOTOTAG_VENV         where the environment goes (default: .venv in the checkout)
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${PHOTOTAG_VENV:-$REPO/.venv}"
CPU_INDEX="https://download.pytorch.org/whl/cpu"
# Fallback when PyTorch's CPU index cannot be reached: a known CPU build where a local wheel folder
# or mirror provides one (else the default index's torch, which on PyPI is the CUDA build).
CPU_FALLBACK="torch==2.13.0"

say() { printf 'setup: %s\n' "$*" >&2; }
die() { printf 'setup: error: %s\n' "$*" >&2; exit 1; }

mode=backfill
if [ "${1:-}" = "--test" ]; then
  mode=test
  shift
elif [ "${1:-}" = "-h" ] || [ "${1:-}" = "--help" ]; then
  sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'
  exit 0
fi

# -- system packages ---------------------------------------------------------------------------------
if [ "$(id -u)" -eq 0 ]; then
  as_root=()
elif command -v sudo >/dev/null 2>&1; then
  as_root=(sudo)
else
  as_root=(false)
fi
apt_updated=""
apt_install() {
  command -v apt-get >/dev/null 2>&1 || die "missing $*, and this is not a Debian/Ubuntu system: install them, then run this again"
  [ "${as_root[0]}" != false ] || die "missing $*: run this as root, or install sudo, or ask an administrator: apt-get install $*"
  say "installing $* (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  if [ -z "$apt_updated" ]; then
    "${as_root[@]}" apt-get update -qq
    apt_updated=1
  fi
  "${as_root[@]}" apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

python_ok() {  # $1 is a Python >= 3.11
  "$1" -c 'import sys; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1
}

if [ -n "${PHOTOTAG_PYTHON:-}" ] && ! python_ok "$PHOTOTAG_PYTHON"; then
  die "PHOTOTAG_PYTHON=$PHOTOTAG_PYTHON is not a Python 3.11 or newer"
fi

find_python() {
  if [ -n "${PHOTOTAG_PYTHON:-}" ]; then
    echo "$PHOTOTAG_PYTHON"
    return
  fi
  local candidate
  for candidate in python3 python3.13 python3.12 python3.11; do
    if command -v "$candidate" >/dev/null 2>&1 && python_ok "$candidate"; then
      command -v "$candidate"
      return
    fi
  done
}

missing=()
command -v exiftool >/dev/null 2>&1 || missing+=(libimage-exiftool-perl)
[ -e /etc/ssl/certs/ca-certificates.crt ] || missing+=(ca-certificates)
PY="$(find_python || true)"
if [ -z "$PY" ]; then
  # Debian 12 and Ubuntu 24.04 ship 3.11/3.12 as python3; Ubuntu 22.04's python3 is 3.10, and its
  # archive (universe) has python3.11 beside it.
  if command -v python3 >/dev/null 2>&1; then
    say "$(python3 --version 2>&1) is older than 3.11: installing python3.11 beside it"
    missing+=(python3.11 python3.11-venv)
  else
    missing+=(python3 python3-venv)
  fi
fi
[ ${#missing[@]} -eq 0 ] || apt_install "${missing[@]}"
PY="${PY:-$(find_python || true)}"
[ -n "$PY" ] || die "no Python 3.11 or newer found after installing; set PHOTOTAG_PYTHON=/path/to/python3.11"

# Debian's Python has no venv/ensurepip until python3.X-venv is installed.
if [ ! -x "$VENV/bin/python" ] && ! "$PY" -c 'import ensurepip, venv' >/dev/null 2>&1; then
  apt_install "$(basename "$(readlink -f "$PY")")-venv"  # python3.11-venv for /usr/bin/python3 -> python3.11
fi
say "exiftool $(exiftool -ver), $("$PY" --version 2>&1) ($PY)"

# -- the isolated environment ------------------------------------------------------------------------
if [ ! -x "$VENV/bin/python" ] || ! python_ok "$VENV/bin/python"; then
  say "creating the environment $VENV"
  "$PY" -m venv --clear "$VENV"
fi
pip=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
"${pip[@]}" install --upgrade pip >/dev/null

# -- torch for this machine --------------------------------------------------------------------------
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 || [ -e /proc/driver/nvidia/version ]; then
  gpu=yes
else
  gpu=no
fi
installed_torch="$("$VENV/bin/python" -c 'import torch; print("cuda" if torch.version.cuda else "cpu")' 2>/dev/null || true)"
if [ -n "${PHOTOTAG_TORCH_SPEC:-}${PHOTOTAG_TORCH_INDEX:-}" ]; then
  spec="${PHOTOTAG_TORCH_SPEC:-torch}"
  say "torch: $spec${PHOTOTAG_TORCH_INDEX:+ from $PHOTOTAG_TORCH_INDEX} (PHOTOTAG_TORCH_SPEC/PHOTOTAG_TORCH_INDEX)"
  "${pip[@]}" install "$spec" ${PHOTOTAG_TORCH_INDEX:+--index-url "$PHOTOTAG_TORCH_INDEX"}
elif [ "$gpu" = yes ]; then
  if [ "$installed_torch" = cuda ]; then
    say "torch: NVIDIA GPU found, a CUDA torch is already installed"
  else
    say "torch: NVIDIA GPU found: installing torch with CUDA from the default index (~2.9 GB)"
    "${pip[@]}" install torch
  fi
elif [ "$installed_torch" = cpu ]; then
  say "torch: no NVIDIA GPU, a CPU torch is already installed"
else
  say "torch: no NVIDIA GPU: installing the CPU build from $CPU_INDEX"
  if ! "${pip[@]}" install --timeout 20 --retries 1 torch --index-url "$CPU_INDEX" 2>/dev/null; then
    say "torch: $CPU_INDEX cannot be reached: installing $CPU_FALLBACK from the default index instead"
    say "torch: (set PHOTOTAG_TORCH_SPEC / PHOTOTAG_TORCH_INDEX to choose another build)"
    "${pip[@]}" install "$CPU_FALLBACK"
  fi
fi
"$VENV/bin/python" -W ignore -c 'import torch; print("setup: torch", torch.__version__, "CUDA " + torch.version.cuda if torch.version.cuda else "(CPU)")' >&2

# -- phototag ----------------------------------------------------------------------------------------
if [ "$mode" = test ]; then
  # [postgres]: the PostgreSQL index tests; [ray]: a real two-node Ray cluster on loopback (tests/test_ray.py)
  say "installing phototag (editable) with the test tools and the [postgres] and [ray] extras"
  "${pip[@]}" install -e "$REPO[test,postgres,ray]"
else
  say "installing phototag"
  "${pip[@]}" install "$REPO"
fi
bin_dir="$HOME/.local/bin"
if [ "$mode" = test ]; then
  say "phototag is ready: $VENV/bin/phototag"
elif mkdir -p "$bin_dir" 2>/dev/null && ln -sf "$VENV/bin/phototag" "$bin_dir/phototag" 2>/dev/null; then
  case ":$PATH:" in
    *":$bin_dir:"*) say "phototag is ready: $bin_dir/phototag" ;;
    *) say "phototag is ready: $bin_dir/phototag (add $bin_dir to PATH, or run $VENV/bin/phototag)" ;;
  esac
else
  say "phototag is ready: $VENV/bin/phototag"
fi

# -- run -----------------------------------------------------------------------------------------------
if [ "$mode" = test ]; then
  cd "$REPO"
  # the house rules first: lint, formatting and types fail the run before any test does
  say "checking: ruff check, ruff format --check, mypy"
  "$VENV/bin/ruff" check .
  "$VENV/bin/ruff" format --check .
  "$VENV/bin/mypy"
  say "running the tests: python -m pytest -q $*"
  exec "$VENV/bin/python" -m pytest -q "$@"
elif [ $# -gt 0 ]; then
  say "running: phototag backfill $*"
  exec "$VENV/bin/phototag" backfill "$@"
fi
