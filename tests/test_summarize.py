"""benchmarks/summarize.py's conv tables from pytest-benchmark JSON: the fused dw + 1×1 pair beside
PyTorch's convs, the fused kernels' tile sweep (fastest first, the default marked), and a stage's
pairs launched one by one vs in one launch."""
import json

import pytest


def _bench(name, ms, **info):
    return {"name": name, "stats": {"median": ms / 1e3}, "extra_info": info}


def test_separable_tables_from_benchmark_json(tmp_path, capsys, fresh_seed):
    summarize = pytest.importorskip("summarize")
    import random

    from ndarts_kernels.separable_conv import BACKWARD_TILE, FORWARD_TILE

    shape, geom = [64, 128, 32, 32], "sep3 g8x16"
    common = dict(geometry=geom, shape=shape, min_bytes=64 * 2**20, copy_GBps=4000.0, groups=8)
    times = {part: (random.uniform(0.2, 0.4), random.uniform(0.02, 0.1)) for part in ("fwd", "dgrad", "both")}
    benches = []
    for part, (torch_ms, triton_ms) in times.items():
        benches.append(_bench(f"torch-{part}", torch_ms, kind="separable_conv", impl="torch", part=part, **common))
        benches.append(_bench(f"triton-{part}", triton_ms, kind="separable_conv", impl="triton", part=part, **common))
    sweep = {(2048, 4): 0.07, FORWARD_TILE: 0.05, (8192, 8): 0.06}
    for tile, ms in sweep.items():
        benches.append(_bench(f"tile-{tile}", ms, kind="separable_conv_tile", impl="triton", part="fwd",
                              tile=list(tile), default_tile=tile == FORWARD_TILE, **common))
    benches.append(_bench("tile-bwd", 0.09, kind="separable_conv_tile", impl="triton", part="both",
                          tile=list(BACKWARD_TILE), default_tile=True, **common))
    path = tmp_path / "bench.json"
    path.write_text(json.dumps({"benchmarks": benches}))
    assert summarize.main([str(path)]) == 0
    out = capsys.readouterr().out
    assert "depthwise + 1x1 conv pair" in out and "tile sweep" in out
    rows = {line.split()[3]: line.split() for line in out.splitlines()  # shape, geometry (2 words), part
            if line.strip().startswith("64x128x32x32") and geom.split()[0] in line}
    for part, (torch_ms, triton_ms) in times.items():
        assert float(rows[part][-1]) == pytest.approx(torch_ms / triton_ms, rel=1e-2)  # x torch
    sweep_lines = [line.split() for line in out.splitlines() if line.startswith("fwd ") and line.split()[1].isdigit()]
    assert [float(r[3]) for r in sweep_lines] == sorted(sweep.values())  # fastest first
    assert [(int(r[1]), int(r[2])) for r in sweep_lines if r[-1] == "*"] == [FORWARD_TILE]
    both = [line.split() for line in out.splitlines() if line.startswith("both ") and line.split()[1].isdigit()]
    assert both and both[0][-1] == "*"


def test_stage_table_from_benchmark_json(tmp_path, capsys, fresh_seed):
    summarize = pytest.importorskip("summarize")
    import random

    common = dict(geometry="sep3 sep5 dil3 dil5", shape=[64, 128, 32, 32], min_bytes=2**28, copy_GBps=4000.0, groups=8)
    times = {part: (random.uniform(0.3, 0.6), random.uniform(0.1, 0.3)) for part in ("fwd", "dgrad", "both")}
    benches = [_bench(f"{impl}-{part}", ms, kind="separable_stage", impl=impl, part=part, **common)
               for part, pair in times.items() for impl, ms in zip(("per_pair", "stage"), pair)]
    path = tmp_path / "bench.json"
    path.write_text(json.dumps({"benchmarks": benches}))
    assert summarize.main([str(path)]) == 0
    out = capsys.readouterr().out
    assert "one launch per pair vs one per stage" in out
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.split()[:1] in (["fwd"], ["dgrad"],
                                                                                             ["both"])}
    assert list(rows) == ["fwd", "dgrad", "both"]
    for part, (per_pair, stage) in times.items():
        assert float(rows[part][1]) == pytest.approx(per_pair, abs=1e-4)
        assert float(rows[part][3]) == pytest.approx(per_pair / stage, rel=1e-2)


def test_group_sum_block_sweep_from_benchmark_json(tmp_path, capsys, fresh_seed):
    """benchmarks/test_bench_group_sum.py's rows: per part, the blocks fastest first, the default marked."""
    summarize = pytest.importorskip("summarize")
    import random

    common = dict(geometry="4 edges x (3 shared + 4 grouped)", shape=[64, 16, 32, 32], min_bytes=2**27,
                  copy_GBps=4000.0)
    blocks = [(1024, 4), (512, 8), (256, 4)]
    times = {(part, b): random.uniform(0.05, 0.5) for part in ("fwd", "dgrad", "both") for b in blocks}
    benches = [_bench(f"{part}-{b}", ms, kind="group_sum_block", part=part, tile=list(b), default_tile=b == (512, 8),
                      **common) for (part, b), ms in times.items()]
    path = tmp_path / "bench.json"
    path.write_text(json.dumps({"benchmarks": benches}))
    assert summarize.main([str(path)]) == 0
    out = capsys.readouterr().out
    assert "group sums, block sweep" in out
    table = out[out.index("group sums, block sweep"):].splitlines()[2:]
    for part in ("fwd", "dgrad", "both"):
        lines = [line.split() for line in table if line.split()[:1] == [part]]
        assert [float(r[3]) for r in lines] == pytest.approx(sorted(times[(part, b)] for b in blocks), abs=1e-4)
        assert [(int(r[1]), int(r[2])) for r in lines if r[-1] == "*"] == [(512, 8)]


def test_precision_sweep_from_benchmark_json(tmp_path, capsys, fresh_seed):
    """test_bench_separable_conv.py's precision sweep: per precision and part, PyTorch's convs beside
    the fused kernels (x torch)."""
    summarize = pytest.importorskip("summarize")
    import random

    common = dict(geometry="sep3 g8x16", shape=[64, 128, 32, 32], min_bytes=64 * 2**20, copy_GBps=4000.0, groups=8)
    times = {(precision, part): (random.uniform(0.2, 0.4), random.uniform(0.02, 0.1))
             for precision in ("tf32", "ieee") for part in ("fwd", "dgrad", "both")}
    benches = [_bench(f"{impl}-{precision}-{part}", ms, kind="separable_conv_precision", impl=impl, part=part,
                      precision=precision, **common)
               for (precision, part), pair in times.items() for impl, ms in zip(("torch", "triton"), pair)]
    path = tmp_path / "bench.json"
    path.write_text(json.dumps({"benchmarks": benches}))
    assert summarize.main([str(path)]) == 0
    out = capsys.readouterr().out
    assert "rounded to TF32" in out
    rows = {(line.split()[3], line.split()[4]): line.split() for line in out.splitlines()  # shape, geom (3 words), part
            if line.strip().startswith("64x128x32x32")}
    assert len(rows) == len(times)
    for (precision, part), (torch_ms, triton_ms) in times.items():
        assert float(rows[precision, part][5]) == pytest.approx(torch_ms, abs=1e-4)
        assert float(rows[precision, part][-1]) == pytest.approx(torch_ms / triton_ms, rel=1e-2)


def test_search_loop_table_and_its_target(tmp_path, capsys, fresh_seed):
    """The loop row shows its overhead over the bare step; the 15-minute target reads the projection."""
    summarize = pytest.importorskip("summarize")
    import random

    loop, step = random.uniform(30, 60), random.uniform(20, 29)
    minutes = random.choice([random.uniform(5, 14.9), random.uniform(15.1, 40)])
    info = dict(kind="search_loop", impl="fused_graph", config_name="b64-C16-L8-32x32x3-darts-gaussian",
                loop_step_ms=loop, bare_step_ms=step, loop_overhead_ms=loop - step, eval_ms_per_image=0.05,
                recapture_s=0.02, capture_s=0.75, projected_search_min=minutes, projected_eval_min=minutes / 7,
                targets=["<= 15 min for the 50-epoch search"])
    batches = [_bench(f"batches-{impl}", ms, kind="cifar_batches", impl=impl, batch=64, time_ms=ms)
               for impl, ms in (("torchvision", random.uniform(10, 30)), ("image_tensors", random.uniform(0.1, 1)))]
    path = tmp_path / "bench.json"
    path.write_text(json.dumps({"benchmarks": [_bench("test_search_loop", loop * 100, **info)] + batches}))
    assert summarize.main([str(path)]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("b64-C16") and "fused_graph" in line)
    assert f"{loop:.1f}" in row and f"{step:.1f}" in row and f"{loop - step:.1f}" in row and f"{minutes:.1f} min" in row
    assert " 0.02 " in row and " 0.75 " in row and f"{minutes / 7:.1f} min" in row
    target = next(line for line in out.splitlines() if "50-epoch search" in line)
    assert ("NOT met" in target) == (minutes > 15) and f"{minutes:.1f} min projected" in target
    rows = [line.split()[0] for line in out.splitlines() if line.startswith(("torchvision", "image_tensors"))]
    assert rows == ["image_tensors", "torchvision"]  # fastest first


@pytest.mark.parametrize("kind,base,other,geoms,parts,title", [
    ("strided_dilated_conv", "dilated", "one_phase", ("dil3", "dil5"), ("fwd", "fwdbwd"),
     "dilated vs undilated on the one phase"),
    ("depthwise_cpu_grads", "torch", "forward", ("sep5", "dil3"), ("dgrad", "wgrad"),
     "PyTorch's vs as forward convolutions"),
])
def test_two_impl_tables_from_benchmark_json(kind, base, other, geoms, parts, title, tmp_path, capsys, fresh_seed):
    """benchmarks/test_bench_strided_dilated_conv.py's and test_bench_depthwise_cpu_grads.py's rows:
    per case the base impl's time, the other's (the CUDA-graph time where there is one) and base /
    other."""
    summarize = pytest.importorskip("summarize")
    import random

    times = {(shape, geom, part): (random.uniform(1, 9), random.uniform(0.1, 0.9), random.random() < 0.5)
             for shape in ("64x64x8x8", "64x128x4x4") for geom in geoms for part in parts}
    benches = []
    for (shape, geom, part), (base_ms, other_ms, graphed) in times.items():
        for impl, ms in ((base, base_ms), (other, other_ms)):
            info = dict(kind=kind, impl=impl, part=part, geometry=geom, shape=[int(v) for v in shape.split("x")])
            if graphed:  # the table reads graph_ms before the per-call time
                info["graph_ms"] = ms
            benches.append(_bench(f"{impl}-{shape}-{geom}-{part}", 1e3 if graphed else ms, **info))
    path = tmp_path / "bench.json"
    path.write_text(json.dumps({"benchmarks": benches}))
    assert summarize.main([str(path)]) == 0
    out = capsys.readouterr().out
    assert title in out
    rows = [line.split() for line in out.splitlines() if line.split()[:1] in (["64x64x8x8"], ["64x128x4x4"])]
    assert len(rows) == len(times)
    for shape, geom, part, base_s, other_s, ratio_s in rows:
        base_ms, other_ms, _ = times[(shape, geom, part)]
        assert float(base_s) == pytest.approx(base_ms, abs=1e-4)
        assert float(other_s) == pytest.approx(other_ms, abs=1e-4)
        assert float(ratio_s) == pytest.approx(base_ms / other_ms, rel=1e-2)


def _mixed(impl, shape, ms, graph_ms=None, targets=(), dtype="float32", copy=3000.0):
    """A mixed-sum row as test_bench_noisy_mixed_sum.py records it (fwd+bwd: 24 bytes per element)."""
    numel = 1
    for s in shape:
        numel *= s
    nbytes = 24 * numel * 4
    info = dict(kind="mixed_sum", impl=impl, mode="fwdbwd", shape=list(shape), dtype=dtype, time_ms=ms,
                min_bytes=nbytes, GBps=nbytes / (ms * 1e-3) / 1e9, copy_GBps=copy,
                frac_copy_bw=nbytes / (ms * 1e-3) / 1e9 / copy)
    if graph_ms is not None:
        info["graph_ms"] = graph_ms
        info["graph_frac_copy_bw"] = nbytes / (graph_ms * 1e-3) / 1e9 / copy
    if targets:
        info["targets"] = list(targets)
    return _bench(f"test_mixed_sum[fwdbwd-{dtype}-{'x'.join(map(str, shape))}-{impl}]", ms, **info)


SPEED, BAND = [64, 16, 32, 32], [256, 64, 32, 32]
SPEED_TARGETS = ("fwd+bwd >= 10x faster than eager", "fwd+bwd >= 5x faster than torch.compile")


def _target_lines(out: str) -> list:
    return out[out.index("targets (issue 4"):].splitlines()[1:]


def test_every_target_is_listed_and_a_missing_one_says_why(tmp_path, capsys):
    """A skipped or cut benchmark must not drop its targets from the table: all six are listed, the
    ones without rows 'not measured' with the step's outcome from gpu_check.sh's record."""
    summarize = pytest.importorskip("summarize")
    path = tmp_path / "bench_sum.json"
    path.write_text(json.dumps({"benchmarks": [_mixed("fused", SPEED, 0.5, 0.04, SPEED_TARGETS),
                                               _mixed("eager_darts", SPEED, 1.0, 0.2)]}))
    steps = tmp_path / "steps.tsv"
    steps.write_text("bench_sum\trunning\t0\t60\nbench_sum\t124\t60\t60\nbench_compile_target\t1\t12\t90\n"
                     "bench_step\tskipped\t0\t120\nbench_loop\trunning\t0\t120\n")
    assert summarize.main(["--steps", str(steps), str(path)]) == 0
    lines = _target_lines(capsys.readouterr().out)
    assert len(lines) == 6
    eager, compiled, bandwidth, step, peak, loop = lines
    assert "NOT met (2.0x back to back; 5.0x as CUDA graphs)" in eager
    assert "not measured (bench_compile_target failed (exit 1 after 12 s)" in compiled
    assert "not measured (bench_sum stopped at its 60 s limit before this case)" in bandwidth
    assert "not measured (bench_step skipped: the script's time budget was spent)" in step and "bench_step skipped" in peak
    assert "not measured (bench_loop still running when the table was written" in loop
    # without a step record (a CPU run, or JSON alone): still listed, GPU only
    assert summarize.main([str(path)]) == 0
    lines = _target_lines(capsys.readouterr().out)
    assert len(lines) == 6 and sum("not measured (no row: GPU only" in line for line in lines) == 4


def test_the_bandwidth_target_is_judged_on_device_time(tmp_path, capsys, fresh_seed):
    """The >= 80% copy-bandwidth target reads the CUDA graph's share (device time: the copy bandwidth
    is device time too) and prints the back-to-back share beside it; without a graph time, that one,
    saying so. The table shows both shares."""
    summarize = pytest.importorskip("summarize")
    import random

    graph_ms, back_ms = random.uniform(0.4, 0.6), random.uniform(0.7, 1.0)
    graphed = _mixed("fused", BAND, back_ms, graph_ms, [">= 80% of copy bandwidth"])
    frac_graph, frac_back = graphed["extra_info"]["graph_frac_copy_bw"], graphed["extra_info"]["frac_copy_bw"]
    path = tmp_path / "bench.json"
    path.write_text(json.dumps({"benchmarks": [graphed, _mixed("compiled", SPEED, 1.0),
                                               _mixed("fused", SPEED, 0.1, None, SPEED_TARGETS)]}))
    assert summarize.main([str(path)]) == 0
    out = capsys.readouterr().out
    line = _target_lines(out)[2]
    assert ("NOT met" in line) == (frac_graph < 0.8), line
    assert f"{100 * frac_graph:.0f}% of 3000 GB/s as a CUDA graph, judged on it; {100 * frac_back:.0f}% back to back" in line
    assert "met (10.0x)" in _target_lines(out)[1]  # compiled 1.0 ms over fused 0.1 ms
    row = next(r.split() for r in out.splitlines() if r.startswith("fwdbwd") and "256x64x32x32" in r and "fused" in r)
    assert row[6] == f"{100 * frac_back:.1f}%" and row[-1] == f"{100 * frac_graph:.1f}%"
    ungraphed = _mixed("fused", BAND, back_ms, None, [">= 80% of copy bandwidth"])
    path.write_text(json.dumps({"benchmarks": [ungraphed]}))
    assert summarize.main([str(path)]) == 0
    line = _target_lines(capsys.readouterr().out)[2]
    assert f"{100 * frac_back:.0f}% of 3000 GB/s back to back; no CUDA-graph time: judged on it" in line


def test_the_step_targets_are_judged_on_the_default_graph_step(tmp_path, capsys):
    """Every fused variant's row carries the step targets; the line reads the default (fused_graph),
    fp32, even where a lever is faster (the search-step table shows the levers)."""
    summarize = pytest.importorskip("summarize")
    cfg = "b64-C16-L8-32x32x3-darts-gaussian"
    rows = [_bench(f"test_search_step[{impl}]", ms, kind="search_step", impl=impl, config_name=cfg, time_ms=ms,
                   peak_GiB=peak, targets=["<= 40 ms per step", "peak <= 4.54 GiB"], target_step_met=ms <= 40,
                   target_peak_met=peak <= 4.54)
            for impl, ms, peak in (("fused_graph_sepconv", 35.0, 4.0), ("fused_graph", 45.0, 3.9))]
    path = tmp_path / "bench.json"
    path.write_text(json.dumps({"benchmarks": rows}))
    assert summarize.main([str(path)]) == 0
    step, peak = _target_lines(capsys.readouterr().out)[3:5]
    assert "NOT met (45.0 ms)" in step and "[test_search_step[fused_graph]]" in step
    assert "met (3.90 GiB)" in peak


def test_the_benchmark_records_the_graph_share_and_judges_on_it():
    """test_bench_noisy_mixed_sum.py's CUDA-only fields (its GPU path runs on a lent GPU alone): the
    graph time's share of the copy bandwidth, and the verdict on it rather than on back to back."""
    bench = pytest.importorskip("test_bench_noisy_mixed_sum")
    nbytes = 24 * 256 * 64 * 32 * 32 * 4
    info = {"frac_copy_bw": 0.5, **bench.graph_bandwidth(nbytes, 0.43, 4260.0)}
    assert info["graph_GBps"] == pytest.approx(nbytes / 0.43e-3 / 1e9)
    assert info["graph_frac_copy_bw"] == pytest.approx(info["graph_GBps"] / 4260.0)
    assert bench.bandwidth_verdict(info) == {"target_bw_met": True, "target_bw_judged_on": "CUDA-graph device time"}
    assert bench.graph_bandwidth(nbytes, None, 4260.0) == {}  # the capture failed: no share
    assert bench.bandwidth_verdict({"frac_copy_bw": 0.5}) == {"target_bw_met": False,
                                                              "target_bw_judged_on": "back-to-back calls"}
