"""A short table of ndarts benchmark results from pytest-benchmark JSON files.

    python benchmarks/summarize.py [--steps STEPS.tsv] bench.json [more.json ...]

Mixed-op sum rows: time per call (CUDA events over back-to-back calls on a GPU, wall-clock median
on a CPU), effective GB/s from the minimal bytes, its fraction of the copy bandwidth measured in
the same run, and speedups at equal (mode, shape, dtype): against the faster eager implementation
and against torch.compile. Search-step rows: ms per step, peak memory, ratio to the plain DARTS
MixedOp. Depthwise- and pointwise-conv rows (one table each): each part (fwd, dgrad, wgrad) of
PyTorch's and the Triton kernels side by side. Then the targets of issue 4 with their status
(never a failure: a report), each listed: one without rows says "not measured" and, given
gpu_check.sh's step record (--steps), why (its step skipped, cut at its limit, failed, not run yet).
"""
from __future__ import annotations

import json
import sys


def load(paths):
    rows, machines = [], []
    for path in paths:
        try:
            with open(path) as f:
                data = json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            print(f"[summarize] skipping {path}: {e}")
            continue
        machines.append(data.get("machine_info", {}).get("ndarts", {}))
        for b in data.get("benchmarks", []):
            info = dict(b.get("extra_info", {}))
            if "kind" not in info:
                continue
            info["name"] = b["name"]
            info.setdefault("time_ms", b["stats"]["median"] * 1e3)
            rows.append(info)
    return rows, machines


def _fmt(x, spec, none="-"):
    return none if x is None else format(x, spec)


def _graph_frac(r):
    """A row's share of the copy bandwidth in device time (its CUDA-graph time), or None: the recorded
    field, else from graph_ms (JSON written before the field existed)."""
    if r.get("graph_frac_copy_bw") is not None:
        return r["graph_frac_copy_bw"]
    if r.get("graph_ms") and r.get("min_bytes") and r.get("copy_GBps"):
        return r["min_bytes"] / (r["graph_ms"] * 1e-3) / 1e9 / r["copy_GBps"]
    return None


def _speedups(cases):
    """Sets x_eager, x_eager_graph and x_compile on each row of {case: {impl: row}}: against the
    faster eager impl back to back, against it as CUDA graphs, and against torch.compile, at equal
    (mode, shape, dtype). Idempotent: the target lines read what the table computed."""
    for impls in cases.values():
        eager = [impls[k]["time_ms"] for k in ("eager_darts", "eager_ref") if k in impls]
        eager_graph = [impls[k]["graph_ms"] for k in ("eager_darts", "eager_ref") if impls.get(k, {}).get("graph_ms")]
        compiled = impls.get("compiled", {}).get("time_ms")
        for r in impls.values():
            t, g = r["time_ms"], r.get("graph_ms")
            r["x_eager"] = min(eager) / t if eager else None
            r["x_eager_graph"] = min(eager_graph) / g if eager_graph and g else None
            r["x_compile"] = compiled / t if compiled else None


def _mixed_cases(rows):
    """{(mode, shape, dtype): {impl: row}} of the mixed-sum rows, the speedups set."""
    cases = {}
    for r in rows:
        cases.setdefault((r["mode"], tuple(r["shape"]), r["dtype"]), {})[r["impl"]] = r
    _speedups(cases)
    return cases


def mixed_sum_table(rows):
    """Per case and impl: time back to back, GB/s and its share of the copy bandwidth, the speedups,
    and the CUDA-graph time with its share of the copy bandwidth (device time, no launch overhead)."""
    cases = _mixed_cases(rows)
    lines = [f"{'mode':6} {'shape':>14} {'dtype':8} {'impl':11} {'ms':>9} {'GB/s':>8} {'%copy':>6} "
             f"{'x eager':>8} {'x compile':>9} {'graph ms':>9} {'%copy gr':>8}"]
    for (mode, shape, dtype), impls in sorted(cases.items(), key=lambda kv: (kv[0][0] != "fwdbwd", kv[0][1], kv[0][2])):
        for impl in ("fused", "eager_darts", "eager_ref", "compiled"):
            r = impls.get(impl)
            if r is None:
                continue
            gfrac = _graph_frac(r)
            lines.append(f"{mode:6} {'x'.join(map(str, shape)):>14} {dtype:8} {impl:11} {r['time_ms']:9.3f} "
                         f"{r['GBps']:8.1f} {100 * r['frac_copy_bw']:5.1f}% {_fmt(r['x_eager'], '8.2f'):>8} "
                         f"{_fmt(r['x_compile'], '9.2f'):>9} {_fmt(r.get('graph_ms'), '9.3f'):>9} "
                         f"{'-' if gfrac is None else format(100 * gfrac, '7.1f') + '%':>8}")
    return lines


def search_step_table(rows):
    """Per config, each variant's time and peak, against the plain DARTS MixedOp and against the
    default graph step (fused_graph: a lever's column > 1 means it beats the default)."""
    lines = [f"{'config':34} {'impl':24} {'ms/step':>10} {'peak GiB':>9} {'x plain':>8} {'x default':>10}"]
    by_cfg = {}
    for r in rows:
        by_cfg.setdefault(r["config_name"], {})[r["impl"]] = r
    for cfg, impls in by_cfg.items():
        plain = impls.get("plain", {}).get("time_ms")
        default = impls.get("fused_graph", {}).get("time_ms")
        for impl in sorted(impls, key=lambda k: (k != "plain", k)):
            r = impls.get(impl)
            if r is None:
                continue
            # > 1: faster than the plain DARTS MixedOp / than the default graph step
            r["x_plain"] = plain / r["time_ms"] if plain else None
            x_default = default / r["time_ms"] if default else None
            lines.append(f"{cfg:34} {impl:24} {r['time_ms']:10.1f} {_fmt(r.get('peak_GiB'), '9.2f'):>9} "
                         f"{_fmt(r['x_plain'], '8.2f'):>8} {_fmt(x_default, '10.2f'):>10}")
    return lines


# the order of a conv-parts table's rows: forward, input gradient, weight gradient; both: the fused
# dw + 1×1 pair's w-step backward (input and weight gradients)
PART_ORDER = {"fwd": 0, "dgrad": 1, "wgrad": 2, "both": 3}


def _ms(r):
    """A row's time: CUDA-graph device time where measured (as the graphed step runs it), else per
    call; None for a missing row."""
    return None if r is None else (r.get("graph_ms") or r["time_ms"])


def _by_case(rows):
    """{(shape, geometry, part): {impl: row}}: the rows of a conv benchmark, per case."""
    cases = {}
    for r in rows:
        cases.setdefault((tuple(r["shape"]), r["geometry"], r["part"]), {})[r["impl"]] = r
    return cases


def conv_parts_table(rows):
    """Per shape, geometry and part of a conv-parts benchmark (depthwise, pointwise, separable): each impl's
    time (CUDA-graph device time where measured, as the step runs; else per call), its GB/s share
    of the copy bandwidth, and torch / triton."""
    cases = _by_case(rows)
    gw = max(len("geom"), *(len(geom) for _, geom, _ in cases))  # depthwise 'sep3', pointwise 'g8 16>16'
    lines = [f"{'shape':>14} {'geom':{gw}} {'part':6} {'torch ms':>9} {'%copy':>6} {'triton ms':>10} {'%copy':>6} "
             f"{'x torch':>8}"]

    def pct(r):
        t = _ms(r)
        return None if t is None else 100 * r["min_bytes"] / (t * 1e-3) / 1e9 / r["copy_GBps"]

    for (shape, geom, part), impls in sorted(cases.items(), key=lambda kv: (kv[0][0], kv[0][1], PART_ORDER[kv[0][2]])):
        t, tr = impls.get("torch"), impls.get("triton")
        speedup = _ms(t) / _ms(tr) if t and tr and _ms(tr) else None
        lines.append(f"{'x'.join(map(str, shape)):>14} {geom:{gw}} {part:6} {_fmt(_ms(t), '9.4f'):>9} "
                     f"{_fmt(pct(t), '5.1f'):>5}% {_fmt(_ms(tr), '10.4f'):>10} {_fmt(pct(tr), '5.1f'):>5}% "
                     f"{_fmt(speedup, '8.2f'):>8}")
    return lines


def versus_table(rows, base: str, other: str, base_label: str, other_label: str, ratio_label: str):
    """Per shape, geometry and part of a benchmark of two impls: base's time, other's, and
    base / other (> 1: other is the faster)."""
    lines = [f"{'shape':>14} {'geom':5} {'part':7} {base_label:>13} {other_label:>13} {ratio_label:>10}"]
    for (shape, geom, part), impls in sorted(_by_case(rows).items()):
        ta, tb = (_ms(impls.get(i)) for i in (base, other))
        lines.append(f"{'x'.join(map(str, shape)):>14} {geom:5} {part:7} {_fmt(ta, '13.4f'):>13} {_fmt(tb, '13.4f'):>13} "
                     f"{_fmt(ta / tb if ta and tb else None, '10.2f'):>10}")
    return lines


def one_phase_table(rows):
    """test_bench_strided_dilated_conv.py: the dilated conv's time, the one-phase conv's, and their
    ratio (> 1: the one-phase conv is the faster)."""
    return versus_table(rows, "dilated", "one_phase", "dilated ms", "one-phase ms", "x dilated")


def forward_form_table(rows):
    """test_bench_depthwise_cpu_grads.py: PyTorch's gradient part, the forward conv's, and their
    ratio (> 1: the forward conv is the faster)."""
    return versus_table(rows, "torch", "forward", "torch ms", "forward ms", "x torch")


def tile_sweep_table(rows):
    """A kernel's launch-parameter sweep (the fused dw + 1×1 kernels' tiles, the group sums'
    blocks): per part, each (tile elements, warps) pair's time
    (CUDA-graph device time where measured), fastest first; `*`: the kernels' default when measured."""
    lines = [f"{'part':6} {'tile':>6} {'warps':>5} {'ms':>9} {'%copy':>6}"]
    for r in sorted(rows, key=lambda r: (PART_ORDER[r["part"]], _ms(r))):
        ms = _ms(r)
        pct = 100 * r["min_bytes"] / (ms * 1e-3) / 1e9 / r["copy_GBps"]
        mark = "*" if r["default_tile"] else " "
        lines.append(f"{r['part']:6} {r['tile'][0]:>6} {r['tile'][1]:>5} {ms:>9.4f} {pct:>5.1f}% {mark}")
    return lines


def stage_table(rows):
    """A conv stage's four pairs launched one by one vs in one launch of each kernel, per part (ms:
    CUDA-graph device time where measured; x > 1: the stage launch faster)."""
    by_part = {}
    for r in rows:
        by_part.setdefault(r["part"], {})[r["impl"]] = _ms(r)
    lines = [f"{'part':6} {'per pair ms':>12} {'stage ms':>9} {'x':>6}"]
    for part in sorted(by_part, key=PART_ORDER.get):
        per_pair, stage = by_part[part].get("per_pair"), by_part[part].get("stage")
        speedup = per_pair / stage if per_pair and stage else None
        lines.append(f"{part:6} {_fmt(per_pair, '12.4f'):>12} {_fmt(stage, '9.4f'):>9} {_fmt(speedup, '6.2f'):>6}")
    return lines


def search_loop_table(rows):
    """The search loop per step against the bare step of the same run, the evaluation, what the graph
    step's new learning rate costs (once an epoch: a fill) and what a capture costs (once a search),
    the projection."""
    lines = [f"{'config':34} {'impl':12} {'loop ms':>8} {'step ms':>8} {'+ loop':>7} {'eval us/img':>11} "
             f"{'new lr s':>8} {'capture s':>9} {'50 epochs':>10} {'of it eval':>10}"]
    for r in rows:
        lines.append(f"{r['config_name']:34} {r['impl']:12} {r['loop_step_ms']:8.1f} {r['bare_step_ms']:8.1f} "
                     f"{r['loop_overhead_ms']:7.1f} {1e3 * r['eval_ms_per_image']:11.1f} "
                     f"{r.get('recapture_s', 0.0):8.2f} {_fmt(r.get('capture_s'), '9.2f'):>9} "
                     f"{r['projected_search_min']:7.1f} min "
                     f"{_fmt(r.get('projected_eval_min'), '6.1f'):>6} min")
    return lines


def cifar_batches_table(rows):
    lines = [f"{'impl':14} {'batch':>5} {'ms':>8}"]
    for r in sorted(rows, key=lambda r: r["time_ms"]):
        lines.append(f"{r['impl']:14} {r['batch']:5d} {r['time_ms']:8.3f}")
    return lines


# The targets of issue 4, each listed whether measured or not (a skipped benchmark must not drop its
# targets silently): (the word a row's `targets` entry contains, the line's label, the gpu_check.sh
# steps whose rows it needs: the first gives the row, the last the baseline). Then the loop's.
ISSUE_TARGETS = (
    ("eager", "fused fwd+bwd >= 10x eager (64x16x32x32 fp32)", ("bench_sum",)),
    ("torch.compile", "fused fwd+bwd >= 5x torch.compile (same)", ("bench_sum", "bench_compile_target")),
    ("copy bandwidth", "fused fwd+bwd >= 80% of copy bw (256x64x32x32)", ("bench_sum",)),
    ("ms per step", "search step <= 40 ms (b64 C16 8 cells)", ("bench_step",)),
    ("peak", "its peak memory <= 60% of 7.57 GiB", ("bench_step",)),
)
LOOP_TARGETS = (("50-epoch search", "the 50-epoch search <= 15 min (CIFAR-10)", ("bench_loop",)),)


def load_steps(path):
    """gpu_check.sh's step record (lines of name, exit code, 'skipped' or 'running', seconds, limit)
    as {name: (rc, seconds, limit)}, a step's last line winning; None without a record."""
    if not path:
        return None
    steps = {}
    try:
        with open(path) as f:
            for line in f:
                fields = line.rstrip("\n").split("\t")
                if len(fields) == 4:
                    steps[fields[0]] = tuple(fields[1:])
    except OSError:
        pass
    return steps


def why_missing(name, steps, baseline=False):
    """Why step `name` gave no row (or no `baseline` row) for a target: read from the step record."""
    if steps is None:
        return f"no {'baseline ' if baseline else ''}row: GPU only, or its benchmark's JSON was not given"
    if name not in steps:
        return f"{name} not run yet"
    rc, secs, limit = steps[name]
    if rc == "running":
        return f"{name} still running when the table was written: see {name}.log"
    if rc == "skipped":
        return f"{name} skipped: the script's time budget was spent"
    if rc in ("124", "137"):
        return f"{name} stopped at its {limit} s limit before this case"
    if rc == "0":
        return f"{name} ran but gave no such row: see {name}.log"
    return f"{name} failed (exit {rc} after {secs} s): see {name}.log"


def _judged_row(rows):
    """The row a target is judged on: fp32 before bf16, the default graph step before the levers
    (their rows carry the step targets too; the search-step table shows them), then the fastest."""
    return min(rows, key=lambda r: (r.get("dtype", "float32") != "float32", r.get("impl") != "fused_graph",
                                    r["time_ms"]))


def _met(ok, text):
    return ("met" if ok else "NOT met") + f" ({text})"


def _bandwidth_status(r):
    """The copy-bandwidth target, judged on device time (the CUDA graph's: back-to-back calls add the
    host's launch overhead, which is not the kernels' bandwidth), back to back beside it."""
    back, graph = r["frac_copy_bw"], _graph_frac(r)
    copy = f"of {r['copy_GBps']:.0f} GB/s"
    if graph is None:
        return _met(back >= 0.8, f"{100 * back:.0f}% {copy} back to back; no CUDA-graph time: judged on it")
    return _met(graph >= 0.8, f"{100 * graph:.0f}% {copy} as a CUDA graph, judged on it; "
                              f"{100 * back:.0f}% back to back")


def target_status(key, r):
    """(status text, or None where the row lacks the value) of one target on its row."""
    if key == "eager":
        if r.get("x_eager") is None:
            return None
        graph = f"; {r['x_eager_graph']:.1f}x as CUDA graphs" if r.get("x_eager_graph") else ""
        return _met(r["x_eager"] >= 10, f"{r['x_eager']:.1f}x back to back{graph}")
    if key == "torch.compile":
        return None if r.get("x_compile") is None else _met(r["x_compile"] >= 5, f"{r['x_compile']:.1f}x")
    if key == "copy bandwidth":
        return _bandwidth_status(r)
    if key == "ms per step":
        return _met(r.get("target_step_met"), f"{r['time_ms']:.1f} ms")
    if key == "peak":
        peak = r.get("peak_GiB")
        return None if peak is None else _met(r.get("target_peak_met"), f"{peak:.2f} GiB")
    if key == "50-epoch search":
        minutes = r["projected_search_min"]
        return _met(minutes <= 15, f"{minutes:.1f} min projected")
    return "?"


def target_lines(rows, steps=None):
    """One line per target of ISSUE_TARGETS and LOOP_TARGETS: met / NOT met with its figures and the
    row it is judged on, or 'not measured' and why (from gpu_check.sh's step record `steps`)."""
    _mixed_cases([r for r in rows if r.get("kind") == "mixed_sum"])
    lines = []
    for key, label, needs in ISSUE_TARGETS + LOOP_TARGETS:
        carrying = [r for r in rows if any(key in t for t in r.get("targets", []))]
        row = _judged_row(carrying) if carrying else None
        status = None if row is None else target_status(key, row)
        if status is None:
            name = needs[0] if row is None else needs[-1]
            status = f"not measured ({why_missing(name, steps, baseline=row is not None)})"
        lines.append(f"  {label:48} {status}" + (f"  [{row['name']}]" if row is not None else ""))
    return lines


def parse_args(argv):
    """(JSON paths, step record path or None); None where nothing was given (print the usage)."""
    import argparse

    ap = argparse.ArgumentParser(add_help=False)
    ap.add_argument("--steps", default=None)
    ap.add_argument("paths", nargs="*")
    args = ap.parse_args(argv)
    if not args.paths and not args.steps:
        return None
    return args.paths, args.steps


def machine_lines(machines):
    """One line per distinct machine record: each JSON of a run carries the same one."""
    lines = []
    for m in machines:
        if m:
            line = (f"device: {m.get('device')} | torch {m.get('torch')} | triton {m.get('triton')} | "
                    f"commit {m.get('commit')}"
                    + (f" | threads {m['torch_threads']} | loadavg {m.get('loadavg')}" if "torch_threads" in m else ""))
            if line not in lines:
                lines.append(line)
    return lines


def main(argv):
    parsed = parse_args(argv)
    if parsed is None:
        print(__doc__)
        return 2
    paths, steps_path = parsed
    rows, machines = load(paths)
    for line in machine_lines(machines):
        print(line)
    mixed = [r for r in rows if r["kind"] == "mixed_sum"]
    steps = [r for r in rows if r["kind"] == "search_step"]
    depthwise = [r for r in rows if r["kind"] == "depthwise_conv"]
    pointwise = [r for r in rows if r["kind"] == "pointwise_conv"]
    separable = [r for r in rows if r["kind"] == "separable_conv"]
    tiles = [r for r in rows if r["kind"] == "separable_conv_tile"]
    # the precision sweep as conv parts, one geometry per precision ('sep3 g8x16 tf32')
    precisions = [{**r, "geometry": f"{r['geometry']} {r['precision']}"} for r in rows
                  if r["kind"] == "separable_conv_precision"]
    stages = [r for r in rows if r["kind"] == "separable_stage"]
    group_blocks = [r for r in rows if r["kind"] == "group_sum_block"]
    loops = [r for r in rows if r["kind"] == "search_loop"]
    one_phase = [r for r in rows if r["kind"] == "strided_dilated_conv"]
    forward_forms = [r for r in rows if r["kind"] == "depthwise_cpu_grads"]
    data = [r for r in rows if r["kind"] == "cifar_batches"]
    copy = {round(r["copy_GBps"], 1) for r in mixed + depthwise + pointwise + separable}
    if copy:
        print(f"copy bandwidth (read + write), measured in the run: {', '.join(f'{c:.1f}' for c in sorted(copy))} GB/s")
    if mixed:
        print("\nnoisy mixed-op sum, 7 operands (6 ops + noisy skip)")
        print("\n".join(mixed_sum_table(mixed)))
    if steps:
        print("\nsearch step (alpha step + w step, first order)")
        print("\n".join(search_step_table(steps)))
    if loops:
        print("\nsearch loop (ms per step with its data, meter and checks vs the bare step, same run; the epoch's "
              "evaluation; projected to 50 CIFAR-10 epochs, of which the evaluations: --eval-every N saves (N-1)/N of them)")
        print("\n".join(search_loop_table(loops)))
    if data:
        print("\na search step's two augmented CIFAR batches, made on the device (ms)")
        print("\n".join(cifar_batches_table(data)))
    if depthwise:
        print("\ndepthwise conv parts, fp32, stride 1 (ms: CUDA-graph replay where measured; x torch > 1: triton faster)")
        print("\n".join(conv_parts_table(depthwise)))
    if one_phase:
        print("\na reduction cell's dil convs (stride 2, edge-major stage), dilated vs undilated on the one phase of "
              "the input they read, fp32 (ms: CUDA-graph replay where measured; x dilated > 1: one phase faster)")
        print("\n".join(one_phase_table(one_phase)))
    if forward_forms:
        print("\na depthwise conv's gradients on a CPU, PyTorch's vs as forward convolutions (ndarts.depthwise_cpu_grads), "
              "fp32, NHWC, stride 1 (x torch > 1: the forward conv faster)")
        print("\n".join(forward_form_table(forward_forms)))
    if pointwise:
        print("\npointwise (1x1) conv parts, fp32 (geom 'gG CI>CO': G groups of CI channels in, CO out; "
              "ms: CUDA-graph replay where measured; x torch > 1: triton faster)")
        print("\n".join(conv_parts_table(pointwise)))
    if separable:
        print("\ndepthwise + 1x1 conv pair, PyTorch's two convs vs the fused kernels, fp32 (dgrad: the alpha step's "
              "backward; both: the w step's, dx and both weight gradients; ms: CUDA-graph replay where measured)")
        print("\n".join(conv_parts_table(separable)))
    if precisions:
        print("\ndepthwise + 1x1 conv pair, fp32 products rounded to TF32 (PyTorch's default for convolutions) "
              "and not (ieee), each impl (ms: CUDA-graph replay where measured)")
        print("\n".join(conv_parts_table(precisions)))
    if tiles:
        print(f"\nfused dw + 1x1 kernels, tile sweep at {tiles[0]['geometry']} {'x'.join(map(str, tiles[0]['shape']))} "
              "(tile elements, warps; * the default)")
        print("\n".join(tile_sweep_table(tiles)))
    if stages:
        print(f"\na conv stage's four pairs ({stages[0]['geometry']}, {'x'.join(map(str, stages[0]['shape']))}), "
              "one launch per pair vs one per stage (ms: CUDA-graph replay where measured)")
        print("\n".join(stage_table(stages)))
    if group_blocks:
        print(f"\ngroup sums, block sweep at {group_blocks[0]['geometry']} {'x'.join(map(str, group_blocks[0]['shape']))} "
              "(block elements, warps; * the default; dgrad: the w step's backward, both: the alpha step's)")
        print("\n".join(tile_sweep_table(group_blocks)))
    print("\ntargets (issue 4; recorded, not asserted)")
    print("\n".join(target_lines(mixed + steps + loops, load_steps(steps_path))))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
