"""benchmarks/warm_triton_cache.py (gpu_check.sh's background compile): its variants exist, and a
variant that cannot run is reported by name with its reason, not hidden."""

import pytest


def test_the_warmed_variants_are_the_benchmarks_triton_variants():
    warm = pytest.importorskip("warm_triton_cache")
    bench = pytest.importorskip("test_bench_search_step")
    assert set(warm.DEFAULT_IMPLS) <= set(bench.IMPLS)
    # every graph-step variant launches Triton kernels: all of them are warmed, or the variant whose
    # kernels they launch
    graphed = {warm.SAME_KERNELS.get(i, i) for i in bench.IMPLS if i.startswith("fused_graph")}
    assert graphed <= set(warm.DEFAULT_IMPLS)
    assert set(warm.SAME_KERNELS) <= set(bench.IMPLS) and not set(warm.SAME_KERNELS) & set(warm.DEFAULT_IMPLS)


def test_failures_are_reported_per_variant(capsys):
    warm = pytest.importorskip("warm_triton_cache")
    impls = ["not_a_variant"] + ([] if __import__("torch").cuda.is_available() else ["fused_graph"])
    assert warm.main(["--impl", *impls, "--limit-s", "120"]) == 1
    out = capsys.readouterr().out
    assert "warm not_a_variant: FAILED" in out and "unknown variant 'not_a_variant'" in out
    if "fused_graph" in impls:
        assert "warm fused_graph: FAILED" in out and "needs a CUDA device" in out
    assert f"0 of {len(impls)} variants warmed" in out


def test_the_processes_at_once_fit_the_cards_memory():
    """12 variants' processes at once took 60-80 GiB beside the GPU tests: at most 6 on an 80 GB H100."""
    warm = pytest.importorskip("warm_triton_cache")
    assert warm.max_procs_for(79.6, 12) == 6  # H100 80 GB, as torch reports it
    assert warm.max_procs_for(139.8, 12) == 12  # H200: room for all
    assert warm.max_procs_for(139.8, 20) == 13
    assert warm.max_procs_for(24.0, 12) == 1  # a small card: one at a time, never none
    for total in (40.0, 79.6, 93.6, 139.8):  # what the processes and the tests' share take fits the card
        n = warm.max_procs_for(total, 12)
        assert n * warm.PROCESS_GIB + warm.RESERVED_GIB <= total


class _FakeChild:
    """A stand-in child process that finishes after `polls` polls; counts how many run at once."""
    running = peak = 0

    def __init__(self, impl, polls):
        self.impl, self.polls, self.returncode = impl, polls, None
        _FakeChild.running += 1
        _FakeChild.peak = max(_FakeChild.peak, _FakeChild.running)

    def poll(self):
        self.polls -= 1
        if self.polls <= 0 and self.returncode is None:
            self.returncode = 0
            _FakeChild.running -= 1
        return self.returncode

    def kill(self):
        self.returncode = -9
        _FakeChild.running -= 1

    def wait(self):
        return self.returncode


def test_the_warm_up_runs_at_most_max_procs_at_once_in_order(monkeypatch, capsys):
    """Variants start in the given order (the benchmark's), never more than max_procs at once; at the
    limit the running ones are stopped and the ones never started are named."""
    import io

    warm = pytest.importorskip("warm_triton_cache")
    started = []

    def start(impl):
        started.append(impl)
        return _FakeChild(impl, polls=3), io.StringIO(f"compiling\nwarm {impl}: ok in 1.0 s\n")

    monkeypatch.setattr(warm, "_start", start)
    monkeypatch.setattr(warm.time, "sleep", lambda s: None)
    _FakeChild.running = _FakeChild.peak = 0
    impls = [f"v{i}" for i in range(10)]
    assert warm.run_children(impls, max_procs=4, limit_s=60) == 0
    assert started == impls and _FakeChild.peak == 4
    assert capsys.readouterr().out.count(": ok in 1.0 s") == 10

    clock = iter(range(0, 1000, 10))  # each look at the clock: 10 s later
    monkeypatch.setattr(warm.time, "perf_counter", lambda: next(clock))
    monkeypatch.setattr(warm, "_start", lambda impl: (_FakeChild(impl, polls=10**6), io.StringIO()))
    _FakeChild.running = _FakeChild.peak = 0
    assert warm.run_children(impls, max_procs=3, limit_s=25) == 10
    out = capsys.readouterr().out
    assert out.count("still running after 25 s, stopped") == 3 and out.count("not started within 25 s") == 7
    assert _FakeChild.running == 0


def test_gpu_check_warms_the_variants_the_step_target_did_not():
    """gpu_check.sh's step 3 compiled the default graph step's kernels: the warm-up leaves it out, and
    its limit bounds the whole warm-up (the script waits for it)."""
    from pathlib import Path

    script = (Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.sh").read_text()
    assert "benchmarks/warm_triton_cache.py --exclude fused_graph" in script
    assert '--limit-s $((WARM_LIMIT - 10))' in script
