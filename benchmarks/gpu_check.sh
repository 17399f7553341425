#!/usr/bin/env bash
# The one GPU check of ndarts, for a lent H100 / H200 (a bare machine, no network): at most
# GPU_CHECK_BUDGET_S (default 540) seconds; run it with the device tool's timeout_s=600.
#
#   bash benchmarks/gpu_check.sh          # from anywhere; writes everything under $OUT (default /tmp/ndarts_gpu_check)
#   NDARTS_COMMIT=abc1234 bash benchmarks/gpu_check.sh   # the commit to record (the copy may have no .git)
#
# The order puts issue 4's targets first, so that no later step can spend their time (in the worst
# case, every step using its whole limit, the steps after them are the ones skipped):
#   env check (card, software, commit label; ~15 s, no limit)
#   1. bench_sum            mixed-op sum, the target cases only (fp32 fwd+bwd at 64x16x32x32 and
#                           256x64x32x32: fused, both eager sums; CUDA-graph times)     GPU_SUM_LIMIT_S            60 s
#   2. bench_compile_target torch.compile at 64x16x32x32, the >= 5x target's baseline  GPU_COMPILE_TARGET_LIMIT_S 90 s
#   3. bench_step           the search step: plain and the default graph step (the
#                           40 ms and peak-memory targets; it compiles its kernels),
#                           then the issue's eager rows, fused and reference          GPU_STEP_TARGET_LIMIT_S   150 s
#   --- targets done by ~330 s in the worst case; the table has them from here on ---
#   4. gpu_tests            pytest -m gpu (correctness on the card), with the Triton
#                           cache warm-up of the other step variants beside it        GPU_TESTS_LIMIT_S         140 s
#                           (warm_triton_cache.py, as many processes as the card's
#                           memory holds beside the tests)                             GPU_WARM_LIMIT_S          140 s
#   5. bench_step_rest      the search step's other variants (levers, NAS-Bench-201)  GPU_BENCH_LIMIT_S          75 s
#   6. bench_loop           the search loop end to end (50-epoch projection)          GPU_LOOP_LIMIT_S          120 s
#   7. bench_dwconv         the conv kernel parts                                     GPU_DWCONV_LIMIT_S         90 s
#   8. profile              profile_step.py, busy time by kernel category             GPU_PROFILE_LIMIT_S        90 s
#   9. bench_sum_rest       the mixed-op sum's other cases (fwd, bf16, other shapes)  GPU_SUM_REST_LIMIT_S       60 s
#  10. bench_compile_rest   torch.compile, the other cases (GPU_CHECK_COMPILE=0: not run) GPU_COMPILE_REST_LIMIT_S 120 s
# Worst case: ~15 + 60 + 90 + 150 + 140 + 75 = 530 s, then the loop gets what is left (a step
# gets at most what is left of the budget, less 10 s; one left with under 20 s is skipped).
# GPU_CHECK_COMPILE governs step 10 only: the target's compiled baseline (2) always runs.
#
# After every step the table so far (summarize.py, with each step's outcome: a target without rows
# says why) goes to $OUT/summary.txt, and the logs and JSON to $OUT/gpu_check.tgz: $OUT holds those
# two files, and the running step's log, at any time (the device tool returns at most 8 files), and
# a run killed by the device's limit still returns the table of the steps it finished. The table
# is printed last. Each step has its own time limit and the script goes on after a failure. It never
# changes the GPU's settings (clocks, power, persistence, MIG, reset): it measures the card as it finds it.
set -u
cd "$(dirname "$0")/.." || exit 1
ROOT="$(pwd)"
OUT="${OUT:-${TMPDIR:-/tmp}/ndarts_gpu_check}"
# the logs and JSON, packed into $OUT/gpu_check.tgz after each step
WORK="${TMPDIR:-/tmp}/ndarts_gpu_check_work"
rm -rf "$WORK" && mkdir -p "$OUT" "$WORK" || exit 1
rm -f "$OUT/summary.txt" "$OUT/gpu_check.tgz"
STEPS="$WORK/steps.tsv"  # lines for summarize.py: name, exit code, 'skipped' or 'running', seconds, limit
: > "$STEPS"
PY="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1  # a step cut at its limit keeps the lines it printed
# Whole-script budget in seconds (the device tool allows 600 s per command): a step gets at most
# what is left of it, less RESERVE; a step left with under 20 s is skipped.
BUDGET="${GPU_CHECK_BUDGET_S:-540}"
RESERVE=10
STATUS=0

step() { echo; echo "== [${SECONDS} s] $*"; }

# The run's label: NDARTS_COMMIT where given (not empty), else HEAD's short hash; "-dirty" appended
# where git sees uncommitted changes in this tree. The device's copy of the tree may have no .git (and
# may sit inside another repository: only a .git of this tree's own counts): there the label is the
# caller's, which is why the run should be started from a committed tree (benchmarks/README.md).
commit_label() {
    local root="$1" label="${NDARTS_COMMIT:-}" top
    top="$(git -C "$root" rev-parse --show-toplevel 2>/dev/null)"
    [ -n "$top" ] && [ "$(cd "$top" && pwd -P)" != "$(cd "$root" && pwd -P)" ] && top=""
    if [ -z "$label" ]; then
        label="$( [ -n "$top" ] && git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)"
    fi
    if [ -n "$top" ] && [ "${label%-dirty}" = "$label" ] && \
        [ -n "$(git -C "$root" --no-optional-locks status --porcelain 2>/dev/null)" ]; then
        label="$label-dirty"
    fi
    echo "$label"
}

# Records a step's outcome for summarize.py ('not measured (why)'): name, exit code or 'skipped',
# seconds, limit.
record() { printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >> "$STEPS"; }

# The table so far to $OUT/summary.txt and everything else to $OUT/gpu_check.tgz, each replaced
# whole (written beside, then moved): a run killed at any point returns the last complete pair.
report() {
    local files=() f
    for f in "$WORK"/bench_*.json; do [ -s "$f" ] && files+=("$f"); done
    "$PY" benchmarks/summarize.py --steps "$STEPS" ${files[@]+"${files[@]}"} > "$WORK.summary" 2>&1
    mv -f "$WORK.summary" "$OUT/summary.txt"
    tar czf "$WORK.tgz" -C "$WORK" . && mv -f "$WORK.tgz" "$OUT/gpu_check.tgz"
}

# A step's limit: what it asks, at most what is left of the budget less RESERVE.
clamp() {
    local limit="$1" left=$((BUDGET - SECONDS - RESERVE))
    [ "$left" -lt "$limit" ] && limit=$left
    echo "$limit"
}

# Runs a command with a time limit, its output to $OUT/<name>.log while it runs (a killed run
# returns it), then into the archive; the last lines to stdout; then the report.
# SIGINT first: pytest then still writes the benchmark JSON of the cases that finished.
run_logged() {
    local name="$1" asked="$2" lines="$3" limit rc t0=$SECONDS; shift 3
    limit=$(clamp "$asked")
    if [ "$limit" -lt 20 ]; then
        echo "-- $name: skipped, the script's budget of $BUDGET s is spent"
        record "$name" skipped 0 "$asked"
        report
        return 124
    fi
    record "$name" running 0 "$limit"  # a run killed during the step says so in its table
    report
    timeout --signal=INT --kill-after=15 "$limit" "$@" > "$OUT/$name.log" 2>&1
    rc=$?
    tail -n "$lines" "$OUT/$name.log"
    mv -f "$OUT/$name.log" "$WORK/$name.log"
    echo "-- $name: exit $rc after $((SECONDS - t0)) s (limit $limit s; $name.log in gpu_check.tgz)"
    record "$name" "$rc" "$((SECONDS - t0))" "$limit"
    report
    return $rc
}

# pytest-benchmark options of every benchmark step: JSON $WORK/<name>.json
bench() {
    local name="$1" limit="$2" lines="$3"; shift 3
    run_logged "$name" "$limit" "$lines" "$PY" -m pytest "$@" --benchmark-only -q -rs \
        --benchmark-json="$WORK/$name.json" --benchmark-columns=median,mean,rounds
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
NDARTS_COMMIT="$(commit_label "$ROOT")"
export NDARTS_COMMIT
"$PY" - <<'EOF' 2>&1 | tee "$WORK/env.txt"
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
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "no CUDA device: stopping"
    report
    exit 2
fi

# --- issue 4's targets first, on an otherwise idle GPU (no warm-up beside them: other processes'
# kernels would share the card and inflate the times)
step "1. the mixed-op sum at the target cases (fp32 fwd+bwd; fused, eager): >= 10x eager, >= 80% of copy bw"
bench bench_sum "${GPU_SUM_LIMIT_S:-60}" 10 benchmarks/test_bench_noisy_mixed_sum.py \
    -m "target_speedup or target_bandwidth" -k "not compiled" || STATUS=1

step "2. torch.compile at the >= 5x target's case (compiled reference, fwd+bwd, fp32, 64x16x32x32)"
NDARTS_BENCH_COMPILE=1 bench bench_compile_target "${GPU_COMPILE_TARGET_LIMIT_S:-90}" 6 \
    benchmarks/test_bench_noisy_mixed_sum.py -m target_speedup -k compiled || STATUS=1

step "3. the search step: plain DARTS and the default graph step (<= 40 ms, peak memory), then fused and reference eager"
# the graph step compiles its Triton kernels here (a bare machine's cache is empty): ~80 of them.
# The eager fused and reference steps come last (the issue's comparison, with the graph step's
# kernels compiled by then): a step cut at its limit keeps the targets' rows.
bench bench_step "${GPU_STEP_TARGET_LIMIT_S:-150}" 8 "benchmarks/test_bench_search_step.py::test_search_step[plain]" \
    "benchmarks/test_bench_search_step.py::test_search_step[fused_graph]" \
    "benchmarks/test_bench_search_step.py::test_search_step[fused]" \
    "benchmarks/test_bench_search_step.py::test_search_step[reference]" || STATUS=1

# --- then the rest, each within what is left
step "4. GPU tests (pytest tests -m gpu, compiled kernels), the Triton cache warm-up beside them"
# A bare machine compiles every Triton kernel on first use, one after another in a process: ~80
# specialisations per graph-step variant. warm_triton_cache.py compiles the other variants' now,
# on the idle cores, as many processes at once as the card's memory holds beside the tests (each
# builds the batch-64 step: 5-7 GiB); the step's remaining variants then find them in the cache.
# fused_graph's are cached already (step 3).
WARM_LIMIT=$(clamp "${GPU_WARM_LIMIT_S:-140}")
WARM_PID=""
if [ "$WARM_LIMIT" -ge 30 ]; then
    timeout --signal=INT --kill-after=10 "$WARM_LIMIT" "$PY" benchmarks/warm_triton_cache.py --exclude fused_graph \
        --limit-s $((WARM_LIMIT - 10)) > "$WORK/warm.log" 2>&1 &
    WARM_PID=$!
    echo "warm-up started (pid $WARM_PID, limit $WARM_LIMIT s)"
fi
WARM_T0=$SECONDS
# tests/conftest.py sets TRITON_INTERPRET=1 unless it is set: 0 here so the kernels compile for the GPU.
# Where pytest-xdist is installed, GPU_TESTS_WORKERS (default 4) processes share the tests: each
# compiles its own Triton kernels, so the compiling (most of a bare machine's test time) runs in parallel.
XDIST=()
if "$PY" -c "import xdist" 2>/dev/null; then XDIST=(-n "${GPU_TESTS_WORKERS:-4}" --dist load); fi
echo "pytest-xdist: ${XDIST[*]:-not installed, one process}"
TRITON_INTERPRET=0 run_logged gpu_tests "${GPU_TESTS_LIMIT_S:-140}" 25 "$PY" -m pytest tests -m gpu -q -rfEs \
    ${XDIST[@]+"${XDIST[@]}"} --junitxml="$WORK/gpu_tests.xml"
rc=$?
if [ $rc -eq 5 ]; then echo "(no test is marked gpu yet)"; elif [ $rc -ne 0 ]; then STATUS=1; fi
if [ -n "$WARM_PID" ]; then
    wait "$WARM_PID"
    rc=$?
    echo "-- warm-up: exit $rc after $((SECONDS - WARM_T0)) s (limit $WARM_LIMIT s)"
    tail -n 14 "$WORK/warm.log"
    record warm "$rc" "$((SECONDS - WARM_T0))" "$WARM_LIMIT"
else
    echo "-- warm-up: skipped, the script's budget of $BUDGET s is spent"
    record warm skipped 0 "${GPU_WARM_LIMIT_S:-140}"
fi
report

step "5. the search step, the other variants (levers, earlier defaults, NAS-Bench-201's network)"
bench bench_step_rest "${GPU_BENCH_LIMIT_S:-75}" 14 benchmarks/test_bench_search_step.py \
    --deselect "benchmarks/test_bench_search_step.py::test_search_step[plain]" \
    --deselect "benchmarks/test_bench_search_step.py::test_search_step[fused_graph]" \
    --deselect "benchmarks/test_bench_search_step.py::test_search_step[fused]" \
    --deselect "benchmarks/test_bench_search_step.py::test_search_step[reference]" || STATUS=1

step "6. the search loop end to end (data on the device, meter, checks, evaluation; 50-epoch projection)"
bench bench_loop "${GPU_LOOP_LIMIT_S:-120}" 6 benchmarks/test_bench_search_loop.py || STATUS=1

step "7. the kernel parts (one-phase dil convs, the fused dw + 1x1 pair, the group sums' blocks, 1x1, depthwise)"
# one pytest call, one JSON, one limit for the five files; the newest questions first (a reduction
# cell's dil convs, 16 cases; the fused pair with and without TF32, 12; a stage's pairs per pair vs
# in one launch, 6; the pair, 18, and a 15-case tile sweep; the group sums' blocks, 15; then
# pointwise, 30; depthwise, 48), so that a run cut off by the limit loses depthwise cases
bench bench_dwconv "${GPU_DWCONV_LIMIT_S:-90}" 4 benchmarks/test_bench_strided_dilated_conv.py \
    benchmarks/test_bench_separable_conv.py benchmarks/test_bench_group_sum.py \
    benchmarks/test_bench_pointwise_conv.py benchmarks/test_bench_depthwise_conv.py || STATUS=1

step "8. profile of one search step (benchmarks/profile_step.py)"
# the default step first, then the conv levers, then the rest; the JSON is rewritten after each
# variant, so a profile cut off by its limit keeps the first ones
run_logged profile "${GPU_PROFILE_LIMIT_S:-90}" 60 "$PY" benchmarks/profile_step.py --impl fused fused_sepconv \
    fused_dwwgrad fused_pwconv plain fused_no_groupsum fused_per_edge --graph-kernels --json "$WORK/profile.json" \
    || STATUS=1

step "9. the mixed-op sum, the other cases (fwd, bf16, the other shapes)"
bench bench_sum_rest "${GPU_SUM_REST_LIMIT_S:-60}" 8 benchmarks/test_bench_noisy_mixed_sum.py \
    -m "not (target_speedup or target_bandwidth)" -k "not compiled" || STATUS=1

if [ "${GPU_CHECK_COMPILE:-1}" = 0 ]; then
    step "10. torch.compile, the other cases: skipped (GPU_CHECK_COMPILE=0)"
else
    step "10. torch.compile, the other cases"
    NDARTS_BENCH_COMPILE=1 bench bench_compile_rest "${GPU_COMPILE_REST_LIMIT_S:-120}" 6 \
        benchmarks/test_bench_noisy_mixed_sum.py -m "not target_speedup" -k compiled || STATUS=1
fi
report

step "summary (benchmarks/summarize.py; logs and JSON in $OUT/gpu_check.tgz)"
echo "gpu_check: $([ $STATUS -eq 0 ] && echo OK || echo 'a step failed: see the logs above') (device time $SECONDS s," \
    "commit $NDARTS_COMMIT)"
echo
cat "$OUT/summary.txt"
exit $STATUS
