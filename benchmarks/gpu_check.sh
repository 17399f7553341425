#!/usr/bin/env bash
# The one GPU check of ndarts, for a lent H100 / H200 (a bare machine, no network): at most
# GPU_CHECK_BUDGET_S (default 540) seconds; run it with the device tool's timeout_s=600.
#
#   bash benchmarks/gpu_check.sh          # from anywhere; writes everything under $OUT (default /tmp/ndarts_gpu_check)
#   NDARTS_COMMIT=abc1234 bash benchmarks/gpu_check.sh   # the commit to record (the copy may have no .git)
#
# 1. the card and the software; 2. the GPU tests (pytest -m gpu, compiled Triton kernels), while
# one background process per search-step variant fills Triton's cache (warm_triton_cache.py);
# 3. the benchmarks (pytest-benchmark JSON under $OUT: the search step, the search loop end to
# end, the pointwise and depthwise conv parts); 4. a profile of one search step (benchmarks/profile_step.py: busy time by
# kernel category); 5. the mixed-op sum benchmarks; 6. torch.compile at the target shape, then at
# the other shapes; LAST, a short table (summarize.py). Everything under $OUT is packed into gpu_check.tgz
# (the device tool returns at most 8 files) beside summary.txt.
# GPU_CHECK_COMPILE=0 leaves out the torch.compile benchmarks (a quick first look); GPU_TESTS_LIMIT_S
# caps the GPU tests (default 180 s), GPU_BENCH_LIMIT_S the search-step benchmarks (default 180 s,
# run first: the step is the open target, with 17 variants), GPU_SUM_LIMIT_S the mixed-sum
# benchmarks (default 60 s: measured on 2026-11-27, their kernels' dW path unchanged since),
# GPU_LOOP_LIMIT_S the search loop (default 120 s: the default graph step, then the sepconv one), GPU_WARM_LIMIT_S the background Triton cache warm-up (default 240 s, overlapping the GPU tests),
# GPU_DWCONV_LIMIT_S the kernel part benchmarks (one-phase dil convs, fused dw + 1x1 pair, group-sum blocks, 1x1, depthwise; default
# 90 s, after the step's).
# Each step has its own time limit and the script goes on after a failure. It never changes the
# GPU's settings (clocks, power, persistence, MIG, reset): it measures the card as it finds it.
set -u
cd "$(dirname "$0")/.." || exit 1
ROOT="$(pwd)"
OUT="${OUT:-${TMPDIR:-/tmp}/ndarts_gpu_check}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
# Whole-script budget in seconds (the device tool allows 600 s per command): a step gets at most
# what is left of it, less 20 s kept for the summary; a step left with under 20 s is skipped.
BUDGET="${GPU_CHECK_BUDGET_S:-540}"
STATUS=0

step() { echo; echo "== $*"; }

# Runs a command with a time limit, its full output to $OUT/<name>.log, the last lines to stdout.
# SIGINT first: pytest then still writes the benchmark JSON of the cases that finished.
run_logged() {
    local name="$1" limit="$2" lines="$3"; shift 3
    local t0=$SECONDS rc left=$((BUDGET - SECONDS - 20))
    [ "$left" -lt "$limit" ] && limit=$left
    if [ "$limit" -lt 20 ]; then
        echo "-- $name: skipped, the script's budget of $BUDGET s is spent"
        return 124
    fi
    timeout --signal=INT --kill-after=15 "$limit" "$@" > "$OUT/$name.log" 2>&1
    rc=$?
    tail -n "$lines" "$OUT/$name.log"
    echo "-- $name: exit $rc after $((SECONDS - t0)) s (limit $limit s; full log $OUT/$name.log)"
    return $rc
}

step "card"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem,temperature.gpu,utilization.gpu \
    --format=csv 2>&1 || echo "nvidia-smi failed"

step "python environment"
# ndarts from this tree; its kernels folder kernels/ imports as ndarts_kernels (setup.py's
# package_dir). A symlink on PYTHONPATH needs neither pip nor network; pip is the fallback.
SHIM="${TMPDIR:-/tmp}/ndarts_pyshim"
mkdir -p "$SHIM" && ln -sfn "$ROOT/kernels" "$SHIM/ndarts_kernels"
export PYTHONPATH="$ROOT:$SHIM${PYTHONPATH:+:$PYTHONPATH}"
unset TRITON_INTERPRET NDARTS_BACKEND
if ! "$PY" -c "import ndarts, ndarts_kernels" 2>/dev/null; then
    echo "import through PYTHONPATH failed; trying pip install -e . --no-deps --no-build-isolation"
    "$PY" -m pip install -q -e . --no-deps --no-build-isolation 2>&1 | tail -n 5
fi
# pytest-xdist for the GPU tests' workers: a bare machine may lack it and has no network, so the
# caller may bring the pure-Python wheels in .whl/ (ignored by git; the device tool's `carry`):
#   pip download -q --no-deps -d .whl pytest-xdist execnet
# They are unpacked into the shim (a wheel is a zip; no pip needed) only where xdist is missing.
if ! "$PY" -c "import xdist" 2>/dev/null && ls "$ROOT"/.whl/pytest_xdist-*.whl > /dev/null 2>&1; then
    for w in "$ROOT"/.whl/pytest_xdist-*.whl "$ROOT"/.whl/execnet-*.whl; do
        [ -f "$w" ] && "$PY" -m zipfile -e "$w" "$SHIM/site"
    done
    export PYTHONPATH="$PYTHONPATH:$SHIM/site"
    "$PY" -c "import xdist" 2>/dev/null && echo "pytest-xdist: from .whl/" || echo "pytest-xdist: .whl/ did not import"
fi
export NDARTS_COMMIT="${NDARTS_COMMIT:-$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)}"
"$PY" - <<'EOF' 2>&1 | tee "$OUT/env.txt"
import os, sys, torch
print("python", sys.version.split()[0], "| torch", torch.__version__, "| cuda", torch.version.cuda,
      "| commit", os.environ.get("NDARTS_COMMIT"))
try:
    import triton
    print("triton", triton.__version__)
except Exception as e:
    print("triton import failed:", e)
print("cuda available:", torch.cuda.is_available())
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(f"device: {p.name}, {p.total_memory / 2**30:.1f} GiB, {p.multi_processor_count} SMs, cc {p.major}.{p.minor}")
import ndarts, ndarts_kernels
from ndarts.backend import triton_unavailable_reason
print("ndarts from", os.path.dirname(ndarts.__file__), "| kernels interpreted:", ndarts_kernels.INTERPRETED)
print("triton backend on cuda:", triton_unavailable_reason(torch.device("cuda")) or "available")
try:
    import pytest_benchmark
    print("pytest-benchmark", pytest_benchmark.__version__)
except Exception as e:
    print("pytest-benchmark missing:", e)
EOF
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" || { echo "no CUDA device: stopping"; exit 2; }

step "Triton cache warm-up, in the background (benchmarks/warm_triton_cache.py)"
# A bare machine compiles every Triton kernel on first use, one after another in a process: ~80
# specialisations per graph-step variant. One process per variant compiles them now, on the
# idle cores, while the GPU tests run; the step benchmark then finds them in Triton's cache.
"$PY" benchmarks/warm_triton_cache.py --limit-s "${GPU_WARM_LIMIT_S:-240}" > "$OUT/warm.log" 2>&1 &
WARM_PID=$!
echo "started (pid $WARM_PID, log $OUT/warm.log)"

step "GPU tests (pytest tests -m gpu, compiled kernels)"
# tests/conftest.py sets TRITON_INTERPRET=1 unless it is set: 0 here so the kernels compile for the GPU.
# Where pytest-xdist is installed, GPU_TESTS_WORKERS (default 4) processes share the tests: each
# compiles its own Triton kernels, so the compiling (most of a bare machine's test time) runs in parallel.
XDIST=()
if "$PY" -c "import xdist" 2>/dev/null; then XDIST=(-n "${GPU_TESTS_WORKERS:-4}" --dist load); fi
echo "pytest-xdist: ${XDIST[*]:-not installed, one process}"
TRITON_INTERPRET=0 run_logged gpu_tests "${GPU_TESTS_LIMIT_S:-180}" 25 "$PY" -m pytest tests -m gpu -q -rfEs \
    "${XDIST[@]}" --junitxml="$OUT/gpu_tests.xml"
rc=$?
if [ $rc -eq 5 ]; then echo "(no test is marked gpu yet)"; elif [ $rc -ne 0 ]; then STATUS=1; fi

step "Triton cache warm-up: waiting for it to finish"
wait "$WARM_PID"
echo "-- warm-up: exit $? at $SECONDS s of the script"
tail -n 12 "$OUT/warm.log"

step "benchmarks: the search step, every variant"
run_logged bench_step "${GPU_BENCH_LIMIT_S:-180}" 14 "$PY" -m pytest benchmarks/test_bench_search_step.py \
    --benchmark-only -q -rs --benchmark-json="$OUT/bench_step.json" --benchmark-columns=median,mean,rounds || STATUS=1

step "benchmarks: the search loop end to end (data on the device, meter, checks, evaluation; 50-epoch projection)"
# after the step benchmarks: their process filled Triton's cache with the fused_graph step's kernels
run_logged bench_loop "${GPU_LOOP_LIMIT_S:-120}" 6 "$PY" -m pytest benchmarks/test_bench_search_loop.py \
    --benchmark-only -q -rs --benchmark-json="$OUT/bench_loop.json" --benchmark-columns=median,rounds || STATUS=1

step "benchmarks: the kernel parts (reduction dil convs on one phase, the fused dw + 1x1 pair, the group sums' blocks, then 1x1, then depthwise)"
# one pytest call, one JSON, one limit for the five files; the newest questions first (a reduction
# cell's dil convs, dilated vs on the one phase they read: whether cuDNN gains as oneDNN does, 16
# cases, a few seconds; the fused
# pair: its products with and without TF32, 12 cases; a stage's pairs per pair vs in one launch, 6
# cases; the pair, 18 and a 15-case tile sweep; the
# group sums' block sweep, 15 cases; then pointwise, 30; depthwise, 48), so that a run cut off by the
# limit loses depthwise cases rather than the newer questions
run_logged bench_dwconv "${GPU_DWCONV_LIMIT_S:-90}" 4 "$PY" -m pytest benchmarks/test_bench_strided_dilated_conv.py \
    benchmarks/test_bench_separable_conv.py \
    benchmarks/test_bench_group_sum.py \
    benchmarks/test_bench_pointwise_conv.py benchmarks/test_bench_depthwise_conv.py --benchmark-only -q -rs \
    --benchmark-json="$OUT/bench_dwconv.json" --benchmark-columns=median,rounds || STATUS=1

step "profile of one search step (benchmarks/profile_step.py)"
# the default step first, then the conv levers (the fused dw + 1x1 pair; the depthwise weight
# gradient, whose PyTorch kernel was the slowest one on 2026-11-27; the 1x1 kernels), then the
# rest: a profile cut off by its limit
# keeps the first ones. Before the mixed-sum benchmarks: where the step's time goes matters more
# than numbers measured on 2026-11-27 already
run_logged profile 90 60 "$PY" benchmarks/profile_step.py --impl fused fused_sepconv fused_dwwgrad fused_pwconv plain \
    fused_no_groupsum fused_per_edge --graph-kernels --json "$OUT/profile.json" || STATUS=1

step "benchmarks: the mixed-op sum (fused, eager)"
run_logged bench_sum "${GPU_SUM_LIMIT_S:-60}" 8 "$PY" -m pytest benchmarks/test_bench_noisy_mixed_sum.py \
    --benchmark-only -q -rs -k "not compiled" --benchmark-json="$OUT/bench_sum.json" \
    --benchmark-columns=median,mean,rounds || STATUS=1

if [ "${GPU_CHECK_COMPILE:-1}" = 0 ]; then
    echo; echo "== torch.compile benchmarks skipped (GPU_CHECK_COMPILE=0)"
else
step "benchmarks: torch.compile at the target shape (64x16x32x32, fwd+bwd)"
run_logged bench_compile_target 90 6 "$PY" -m pytest benchmarks --benchmark-only -q -rs \
    -k "compiled and fwdbwd and 64x16x32x32" --benchmark-json="$OUT/bench_compile_target.json" \
    --benchmark-columns=median,rounds || STATUS=1

fi

if [ "${GPU_CHECK_COMPILE:-1}" != 0 ]; then
step "benchmarks: torch.compile, the other shapes"
run_logged bench_compile_rest 120 6 "$PY" -m pytest benchmarks --benchmark-only -q -rs \
    -k "compiled and not (fwdbwd and 64x16x32x32)" --benchmark-json="$OUT/bench_compile_rest.json" \
    --benchmark-columns=median,rounds || STATUS=1
fi

step "summary (benchmarks/summarize.py; JSON and logs in $OUT)"
files=()
for f in bench_step.json bench_loop.json bench_dwconv.json bench_sum.json bench_compile_target.json bench_compile_rest.json; do
    [ -s "$OUT/$f" ] && files+=("$OUT/$f")
done
if [ ${#files[@]} -gt 0 ]; then
    "$PY" benchmarks/summarize.py "${files[@]}" | tee "$OUT/summary.txt"
else
    echo "no benchmark JSON was written"
    STATUS=1
fi
# the device tool returns at most 8 files: everything in one archive, the summary beside it
ARCHIVE="${TMPDIR:-/tmp}/ndarts_gpu_check.tgz"
( cd "$OUT" && tar czf "$ARCHIVE" --exclude summary.txt . && mv "$ARCHIVE" gpu_check.tgz && \
  find . -maxdepth 1 -type f ! -name gpu_check.tgz ! -name summary.txt -delete )
echo "gpu_check: $([ $STATUS -eq 0 ] && echo OK || echo 'a step failed: see the logs above') (device time $SECONDS s)"
exit $STATUS
