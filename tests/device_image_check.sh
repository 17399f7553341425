#!/usr/bin/env bash
# ndarts against the software of the lent GPU machines' image, on this CPU machine, before a GPU
# session spends its minutes on it. The image holds Python 3.12, torch 2.11.0+cu130, torchvision
# 0.26.0 and triton 3.6.0 (the device tool's KINDS.md, and the H200 run of 2026-11-27); this
# project pins torch 2.14.1 / triton 3.8. This script
#   1. makes a venv with those versions (pip, from the package registry);
#   2. records every Triton launch of the kernels (tests/gpu_compile.py capture, interpreter) and
#      compiles each one for sm_90 with triton 3.6.0's compiler and ptxas (tests/gpu_compile.py
#      compile: all launches, not the pairwise cover CI compiles with triton 3.8);
#   3. runs the CPU test suite there.
#
#   bash tests/device_image_check.sh       # from anywhere; the project's venv in .venv
#   DEVICE_PYTHON=/root/.pyenv/versions/3.12.1/bin/python3.12 bash tests/device_image_check.sh
#
# DEVICE_PYTHON (default python3, the project's 3.11): with the project venv's Python minor the
# venv gets torch, torchvision, triton and numpy (~0.6 GB) and links the project venv's other
# packages; with another one (the image's 3.12) it installs everything, the CUDA libraries too
# (~4 GB, about a minute from the registry). About 15 minutes on 2 cores. Not in CI (it fetches torch).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$(pwd)"
WORK="${DEVICE_IMAGE_DIR:-${TMPDIR:-/tmp}/ndarts_device_image}"
TORCH="${DEVICE_TORCH:-2.11.0}" VISION="${DEVICE_TORCHVISION:-0.26.0}" TRITON="${DEVICE_TRITON:-3.6.0}"
BASE_PY="${DEVICE_PYTHON:-python3}"
PROJECT_PY="$ROOT/.venv/bin/python"
[ -x "$PROJECT_PY" ] || { echo "no project venv at $ROOT/.venv (python3 -m venv .venv && pip install -e '.[test]')"; exit 2; }
minor() { "$1" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")'; }
mkdir -p "$WORK"

echo "== venv: Python $(minor "$BASE_PY"), torch $TORCH, torchvision $VISION, triton $TRITON"
[ -x "$WORK/venv/bin/python" ] && [ "$(minor "$WORK/venv/bin/python")" = "$(minor "$BASE_PY")" ] \
    || { rm -rf "$WORK/venv"; "$BASE_PY" -m venv "$WORK/venv"; }
PY="$WORK/venv/bin/python"
# numpy < 2.4: triton 3.6's interpreter converts 1-element arrays to scalars, which numpy 2.4 refuses
# ("only 0-dimensional arrays can be converted to Python scalars"); the image's numpy is 2.5, but
# no interpreter runs on a GPU
PINS=("torch==$TORCH" "torchvision==$VISION" "triton==$TRITON" "numpy<2.4")
rm -rf "$WORK/site" && mkdir -p "$WORK/site" "$WORK/shim"
if [ "$(minor "$PY")" = "$(minor "$PROJECT_PY")" ]; then
    "$PY" -m pip install -q --no-deps "${PINS[@]}"
    # the project venv's other packages (pytest, the nvidia libraries, ...)
    SITE="$("$PROJECT_PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
    for f in "$SITE"/*; do
        case "$(basename "$f")" in
            torch|torch-*|torchgen|functorch|torchvision|torchvision-*|triton|triton-*|numpy|numpy-*|numpy.libs|_distutils_hack|*.pth|__editable__*) ;;
            *) ln -s "$f" "$WORK/site/" ;;
        esac
    done
else
    # setup.py's requirements and test extras, with the image's versions in place of the pins
    "$PY" -m pip install -q "${PINS[@]}" scikit-learn matplotlib pytest pytest-xdist pytest-benchmark hypothesis tensorboard
fi
# ndarts from this tree, kernels/ as ndarts_kernels (setup.py's name for it)
ln -sfn "$ROOT/kernels" "$WORK/shim/ndarts_kernels"
export PYTHONPATH="$ROOT:$WORK/shim:$WORK/site"
"$PY" -c "import sys, torch, triton, torchvision, numpy, ndarts, ndarts_kernels; print('Python', sys.version.split()[0], 'torch', torch.__version__, 'triton', triton.__version__, 'torchvision', torchvision.__version__, 'numpy', numpy.__version__)"

echo "== every Triton launch compiled for sm_90 by triton $TRITON"
TRITON_INTERPRET=1 "$PY" tests/gpu_compile.py capture "$WORK/specs.json"
env -u TRITON_INTERPRET TRITON_CACHE_DIR="$WORK/triton_cache" "$PY" tests/gpu_compile.py compile "$WORK/specs.json"

echo "== the CPU tests there"
"$PY" -m pytest -q -n auto --dist loadfile -p no:cacheprovider tests
