#!/usr/bin/env bash
# ndarts against the software of the lent GPU machines' image, on this CPU machine, before a GPU
# session spends its minutes on it. The image holds torch 2.11.0+cu130, torchvision 0.26.0 and
# triton 3.6.0 (the device tool's KINDS.md, and the H200 run of 2026-11-27); this project pins
# torch 2.14.1 / triton 3.8. This script
#   1. makes a venv with those three versions (pip, from the package registry: ~0.6 GB) and
#      everything else linked from the project's venv;
#   2. records every Triton launch of the kernels (tests/gpu_compile.py capture, interpreter) and
#      compiles each one for sm_90 with triton 3.6.0's compiler and ptxas (tests/gpu_compile.py
#      compile: all launches, not the pairwise cover CI compiles with triton 3.8);
#   3. runs the CPU test suite under torch 2.11.0 / triton 3.6.0.
#
#   bash tests/device_image_check.sh            # from the repository root, the project's venv in .venv
#
# About 15 minutes on 2 cores. Nothing here runs in CI (it downloads torch).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$(pwd)"
WORK="${DEVICE_IMAGE_DIR:-${TMPDIR:-/tmp}/ndarts_device_image}"
TORCH="${DEVICE_TORCH:-2.11.0}" VISION="${DEVICE_TORCHVISION:-0.26.0}" TRITON="${DEVICE_TRITON:-3.6.0}"
SITE="$ROOT/.venv/lib/python3.11/site-packages"
[ -d "$SITE" ] || { echo "no project venv at $ROOT/.venv (python3 -m venv .venv && pip install -e '.[test]')"; exit 2; }
mkdir -p "$WORK"

echo "== venv with torch $TORCH, torchvision $VISION, triton $TRITON"
[ -x "$WORK/venv/bin/python" ] || python3 -m venv "$WORK/venv"
# numpy < 2.4: triton 3.6's interpreter converts 1-element arrays to scalars, which numpy 2.4 refuses
# ("only 0-dimensional arrays can be converted to Python scalars"); the image's numpy is 2.5, but
# no interpreter runs on a GPU
"$WORK/venv/bin/pip" install -q --no-deps "torch==$TORCH" "torchvision==$VISION" "triton==$TRITON" "numpy<2.4"
# the project venv's other packages (pytest, the nvidia libraries, ...), without its torch,
# torchvision, triton and numpy; ndarts from this tree, kernels/ as ndarts_kernels (setup.py's name)
rm -rf "$WORK/site" && mkdir -p "$WORK/site" "$WORK/shim"
for f in "$SITE"/*; do
    case "$(basename "$f")" in
        torch|torch-*|torchgen|functorch|torchvision|torchvision-*|triton|triton-*|numpy|numpy-*|numpy.libs|_distutils_hack|*.pth|__editable__*) ;;
        *) ln -s "$f" "$WORK/site/" ;;
    esac
done
ln -sfn "$ROOT/kernels" "$WORK/shim/ndarts_kernels"
export PYTHONPATH="$ROOT:$WORK/shim:$WORK/site"
PY="$WORK/venv/bin/python"
"$PY" -c "import torch, triton, torchvision, ndarts, ndarts_kernels; print('torch', torch.__version__, 'triton', triton.__version__, 'torchvision', torchvision.__version__)"

echo "== every Triton launch compiled for sm_90 by triton $TRITON"
TRITON_INTERPRET=1 "$PY" tests/gpu_compile.py capture "$WORK/specs.json"
env -u TRITON_INTERPRET TRITON_CACHE_DIR="$WORK/triton_cache" "$PY" tests/gpu_compile.py compile "$WORK/specs.json"

echo "== the CPU tests under torch $TORCH / triton $TRITON"
"$PY" -m pytest -q -n auto --dist loadfile -p no:cacheprovider tests
