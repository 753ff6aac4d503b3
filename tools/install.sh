#!/usr/bin/env bash
# Install flowssl and its whole stack into a virtual environment.
#
#   FLOWSSL_VENV   where the venv goes            (default: .venv in the repo)
#   FLOWSSL_CACHE  where built wheels are cached  (default: ~/.cache/flowssl)
#   PYTHON         interpreter to build the venv  (default: python3.11, then python3)
#
# Why it is more than `pip install -e .`: mmsegmentation 1.2.2 needs the full mmcv 2.1.0 (with
# ops), which PyPI ships only as a source archive whose setup.py hard-codes -std=c++14/17, while
# torch 2.14 headers need C++20 (open-mmlab/mmcv#3341). We build it once with the flag raised and
# cache the wheel, keyed by the torch version, so a second install takes seconds.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${FLOWSSL_VENV:-$REPO/.venv}"
CACHE="${FLOWSSL_CACHE:-$HOME/.cache/flowssl}"
TORCH_VERSION="2.14.1"
TORCHVISION_VERSION="0.29.1"
MMCV_VERSION="2.1.0"
WHEELS="$CACHE/wheels/mmcv-$MMCV_VERSION-torch-$TORCH_VERSION"

step() { printf '\n\033[1m[flowssl install] %s\033[0m\n' "$*"; }
die() { printf '\n[flowssl install] ERROR: %s\n' "$*" >&2; exit 1; }

# ---- preflight: fail early with a message a person can act on -----------------------------
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  if command -v python3.11 >/dev/null 2>&1; then PY=python3.11; else PY=python3; fi
fi
command -v "$PY" >/dev/null 2>&1 || die "no Python interpreter '$PY' found; install Python 3.11 or set PYTHON=/path/to/python3.11"
pyver="$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
[ "$pyver" = "3.11" ] || die "Python 3.11 is required (torch $TORCH_VERSION / mmcv $MMCV_VERSION are pinned for it); '$PY' is $pyver. Set PYTHON=/path/to/python3.11"
"$PY" -c 'import venv' 2>/dev/null || die "Python's venv module is missing; install it (Debian: apt-get install python3.11-venv)"
mkdir -p "$CACHE" "$(dirname "$VENV")" || die "cannot create $CACHE or the parent of $VENV (check permissions)"
free_gb=$(df -Pk "$(dirname "$VENV")" | awk 'NR==2 {print int($4/1048576)}')
[ "${free_gb:-0}" -ge 8 ] || die "only ${free_gb} GiB free under $(dirname "$VENV"); torch with its CUDA libraries needs about 8 GiB"

# ---- venv --------------------------------------------------------------------------------
if [ ! -x "$VENV/bin/python" ]; then
  step "creating virtual environment at $VENV"
  "$PY" -m venv "$VENV" || die "could not create the venv at $VENV"
fi
VPY="$VENV/bin/python"
pip_i() { "$VPY" -m pip install --disable-pip-version-check --progress-bar on "$@"; }

step "build tools (setuptools<81 keeps pkg_resources, which mmcv's setup.py imports)"
pip_i -q --upgrade pip "setuptools<81" wheel ninja packaging

step "torch $TORCH_VERSION and torchvision $TORCHVISION_VERSION"
pip_i "torch==$TORCH_VERSION" "torchvision==$TORCHVISION_VERSION"

step "mmcv $MMCV_VERSION with ops"
if "$VPY" -c "import mmcv, mmcv.ops; assert mmcv.__version__ == '$MMCV_VERSION'" >/dev/null 2>&1; then
  echo "already installed"
else
  wheel="$(ls "$WHEELS"/mmcv-"$MMCV_VERSION"-*.whl 2>/dev/null | head -n1 || true)"
  if [ -z "$wheel" ]; then
    command -v "${CXX:-g++}" >/dev/null 2>&1 || die "no C++ compiler (${CXX:-g++}) found; mmcv $MMCV_VERSION must be built from source. Debian: apt-get install g++"
    build="$(mktemp -d "${TMPDIR:-/tmp}/flowssl-mmcv.XXXXXX")"
    trap 'rm -rf "$build"' EXIT
    "$VPY" -m pip download --disable-pip-version-check --no-deps --no-binary :all: --no-build-isolation -d "$build" "mmcv==$MMCV_VERSION" \
      || die "could not download the mmcv $MMCV_VERSION source archive from PyPI"
    tar -xzf "$build"/mmcv-"$MMCV_VERSION".tar.gz -C "$build"
    src="$build/mmcv-$MMCV_VERSION"
    # The one patch: torch >= 2.10 headers use C++20 features.
    sed -i -E 's/-std=c\+\+1[47]/-std=c++20/g' "$src/setup.py"
    grep -q -- '-std=c++20' "$src/setup.py" || die "patching mmcv's setup.py to -std=c++20 failed (has the archive changed?)"
    jobs="$(nproc 2>/dev/null || echo 2)"
    echo "building mmcv $MMCV_VERSION with ops on $jobs cores (about 10 minutes on 2 cores; output in $build/build.log)"
    ( cd "$src" && MMCV_WITH_OPS=1 MAX_JOBS="$jobs" "$VPY" -m pip wheel --no-build-isolation --no-deps -v -w "$build/dist" . ) \
      > "$build/build.log" 2>&1 &
    bpid=$!
    while kill -0 "$bpid" 2>/dev/null; do
      sleep 30
      printf '  ... still compiling (%s)\n' "$(grep -o '^ *\[[0-9]*/[0-9]*\]' "$build/build.log" | tail -n1 | tr -d ' ')"
    done
    if ! wait "$bpid"; then
      tail -n 40 "$build/build.log" >&2
      die "the mmcv build failed; the end of its log is above"
    fi
    mkdir -p "$WHEELS"
    built="$(ls "$build"/dist/mmcv-*.whl)"
    # Atomic: a half-copied wheel must never look like a cached one.
    cp "$built" "$WHEELS/.tmp-$(basename "$built")" && mv "$WHEELS/.tmp-$(basename "$built")" "$WHEELS/$(basename "$built")"
    wheel="$WHEELS/$(basename "$built")"
    echo "cached $wheel"
  else
    echo "using cached wheel $wheel"
  fi
  pip_i --no-deps "$wheel"
  pip_i "addict" "yapf" "opencv-python-headless" "mmengine==0.10.7"
  "$VPY" -c "import mmcv.ops" || die "mmcv installed but its ops do not import; delete $WHEELS and run again"
fi

step "flowssl and the rest of the stack (submitit included: flowssl bench --launcher slurm)"
pip_i -e "$REPO[all]"

step "check"
"$VPY" - <<'PY'
import torch, torchvision, mmcv, mmcv.ops, mmengine, mmseg, cv2, submitit
print(f"torch {torch.__version__}  torchvision {torchvision.__version__}  mmcv {mmcv.__version__}  "
      f"mmengine {mmengine.__version__}  mmseg {mmseg.__version__}  opencv {cv2.__version__}  "
      f"submitit {submitit.__version__}")
try:
    import detectron2
    print(f"detectron2 {detectron2.__version__} (found)")
except ImportError:
    print("detectron2 not installed: its tests will skip (see README, 'detectron2').")
PY
step "done: activate with 'source $VENV/bin/activate' or call $VENV/bin/flowssl"
