"""What each Triton kernel of a search step costs an H100/H200 in registers, spills, shared memory,
occupancy and grid, found on a CPU.

    python benchmarks/kernel_resources.py                                 # fused_graph, fused_graph_sepconv
    python benchmarks/kernel_resources.py --impl fused_graph_sepconv --json resources.json

Why: the step model (step_traffic.py) takes a kernel's time as its bytes over the memory bandwidth,
which holds only for a kernel that keeps the card busy. Three things it cannot see decide whether
one does, and none needs a GPU to find:
- **spills**: a kernel whose tiles need more than 255 registers per thread keeps the rest in local
  memory (spill stores and loads: traffic the byte count misses, at cache latency);
- **occupancy**: registers and shared memory per program bound the programs resident per
  multiprocessor; few resident warps hide little memory latency;
- **grid**: a launch of fewer programs than the card has multiprocessors leaves the rest idle
  (its bytes come at a fraction of the bandwidth).
The script runs one search step of SPEC §6's supernet at the target size (batch 64, 32×32) on the
CPU with every Triton launch recorded, not run, the launchers sizing their grids for MULTIPROCESSORS
(kernels/grid.py: ASSUMED_MULTIPROCESSORS) as on the card; it compiles each distinct launch
(argument types, constexprs, num_warps: tests/gpu_compile.py) for sm_90 down to a cubin, reads its
registers and spills from the `-v` log of the ptxas run that made the cubin (Triton's own), and
prints per kernel: launches, bytes moved (as step_traffic.py counts them), programs per launch,
warps, registers, spill bytes, shared memory, resident programs per multiprocessor and the
occupancy they give, the waves of resident programs a launch takes, how many of its variants run
their products on tensor cores (`mma`: mma.sync / wgmma instructions in the PTX; the rest are fp32
FMA), and the model's time at full and at grid-limited bandwidth (min(1, programs /
multiprocessors) of it).
"""
from __future__ import annotations

import argparse
import collections
import inspect
import json
import math
import multiprocessing
import os
import re
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))

import count_kernels  # noqa: E402  (sets TRITON_INTERPRET before the kernels are defined)
import gpu_compile  # noqa: E402
import step_traffic  # noqa: E402
import torch  # noqa: E402

TARGET = step_traffic.TARGET  # SPEC §6: batch 64, 32×32
MULTIPROCESSORS = 132  # H100 SXM and H200
# sm_90, per multiprocessor: registers, warps, resident programs, shared memory (bytes; 1 KiB of it
# reserved per program), registers a warp is given at a time
SM90 = {"registers": 65536, "warps": 64, "programs": 32, "shared": 228 * 1024, "shared_reserved": 1024,
        "register_unit": 256, "max_registers": 255}


def record_launches(impl: str, batch: int, image: int) -> list[dict]:
    """Every Triton launch of one graph step of impl, in order: its compile spec, its programs and
    its bytes, with the launchers choosing blocks and grids as on a card of MULTIPROCESSORS."""
    import ndarts_kernels
    from ndarts_kernels import grid

    from ndarts import backend

    saved = ndarts_kernels.INTERPRETED, grid.ASSUMED_MULTIPROCESSORS, backend.triton_unavailable_reason
    ndarts_kernels.INTERPRETED, grid.ASSUMED_MULTIPROCESSORS = False, MULTIPROCESSORS
    backend.triton_unavailable_reason = lambda device: None  # CPU tensors, nothing is run
    launches = []
    traffic = step_traffic.KernelTraffic()

    def on_launch(executor, args, kwargs):
        traffic.triton_launch(executor, args, kwargs)
        spec = gpu_compile._spec(executor.fn, args, kwargs)
        launches.append({"spec": spec, "programs": _programs(executor, args, kwargs), "bytes": traffic.kernels[-1][2]})

    try:
        step = count_kernels.graph_step(impl, batch, image)
        with count_kernels.graph_step_context() as counter:
            step()  # optimizer state, lazy buffers: the graph captures a warm step
            counter.on_launch = on_launch
            step()
    finally:
        ndarts_kernels.INTERPRETED, grid.ASSUMED_MULTIPROCESSORS, backend.triton_unavailable_reason = saved
    return launches


def _programs(executor, args, kwargs) -> int:
    """Programs of one launch: its grid, or what its grid function gives for the launch's arguments."""
    g = executor.grid
    if callable(g):
        sig = inspect.signature(executor.fn)
        meta = dict(sig.bind_partial(*args, **{k: v for k, v in kwargs.items() if k in sig.parameters}).arguments)
        g = g({**meta, **kwargs})
    return math.prod(int(d) for d in (g if isinstance(g, (tuple, list)) else (g,)))


def _ptxas_report(ptx: str) -> dict:
    """Registers per thread and spill bytes of one kernel's PTX, from Triton's ptxas (-v)."""
    from triton.backends.nvidia.compiler import get_ptxas, sm_arch_from_capability

    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "k.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        cmd = [get_ptxas(gpu_compile.ARCH).path, "-v", "--regAllocOptLevel=2",
               f"--gpu-name={sm_arch_from_capability(gpu_compile.ARCH)}", src, "-o", os.path.join(tmp, "k.o")]
        log = subprocess.run(cmd, capture_output=True, text=True, check=True).stderr
    report = _parse_ptxas_log(log)
    if report is None:
        raise RuntimeError(f"ptxas -v printed no register count:\n{log}")
    return report


def _parse_ptxas_log(log: str) -> dict | None:
    """Registers and spill bytes from a ptxas -v log of one kernel; None where it holds no count."""
    regs = re.search(r"Used (\d+) registers", log)
    stores = re.search(r"(\d+) bytes spill stores", log)
    loads = re.search(r"(\d+) bytes spill loads", log)
    if regs is None:
        return None
    return {"registers": int(regs.group(1)), "spill_stores": int(stores.group(1)) if stores else 0,
            "spill_loads": int(loads.group(1)) if loads else 0}


def instruction_counts(ptx: str) -> dict:
    """Tensor-core instructions (mma.sync, wgmma) and fp32 FMAs in one kernel's PTX: whether its
    tl.dot products run on tensor cores (TF32, bf16, fp16) or as FMA ("ieee" fp32: kernels/dot_precision.py)."""
    return {"mma": len(re.findall(r"\bw?gmma\.mma_async\.|\bmma\.sync\.", ptx)),
            "fma": len(re.findall(r"\bfma\.rn\.f32\b", ptx))}


def _compiling_process() -> None:
    os.environ.pop("TRITON_INTERPRET", None)


def compile_resources(spec: dict) -> dict:
    """Registers, spills and shared memory of one launch compiled for sm_90 (or its error). The
    registers and spills come from the ptxas -v log of Triton's own cubin stage (Triton prints it
    with knobs.nvidia.dump_ptxas_log); a kernel found in Triton's cache prints none, and its PTX
    goes through ptxas -v once more."""
    import contextlib
    import io

    from triton import knobs

    log = io.StringIO()
    try:
        with contextlib.redirect_stdout(log):
            knobs.nvidia.dump_ptxas_log = True
            try:
                kernel = gpu_compile.compile_spec(spec)
            finally:
                knobs.nvidia.dump_ptxas_log = False
        ptx = kernel.asm["ptx"]
        report = _parse_ptxas_log(log.getvalue()) or _ptxas_report(ptx)
        return {**report, "shared": int(kernel.metadata.shared), **instruction_counts(ptx)}
    except Exception as e:  # reported in the table, not raised: one kernel must not hide the others
        return {"error": f"{type(e).__name__}: {str(e).strip().splitlines()[-1] if str(e).strip() else ''}"}


def resident_programs(registers: int, warps: int, shared: int) -> int:
    """Programs of this size resident on one sm_90 multiprocessor (its registers, warps, shared memory)."""
    per_warp = math.ceil(registers * 32 / SM90["register_unit"]) * SM90["register_unit"]
    by_registers = SM90["registers"] // (per_warp * warps)
    by_shared = SM90["shared"] // (shared + SM90["shared_reserved"])
    return max(0, min(by_registers, by_shared, SM90["warps"] // warps, SM90["programs"]))


def _key(spec: dict) -> str:
    return json.dumps(spec, sort_keys=True, default=str)


def kernel_table(launches: list[dict], compiled: dict, bandwidth: float, t_min: float) -> list[dict]:
    """One row per kernel name: its launches' bytes and modelled times summed, its compiled variants'
    worst registers, spills and occupancy."""
    rows = collections.OrderedDict()
    for launch in launches:
        spec, res = launch["spec"], compiled[_key(launch["spec"])]
        row = rows.setdefault(spec["kernel"], {
            "kernel": spec["kernel"], "launches": 0, "variants": set(), "bytes": 0, "model_ms": 0.0,
            "grid_model_ms": 0.0, "min_programs": None, "max_programs": 0, "warps": set(), "max_registers": 0,
            "spill_bytes": 0, "max_shared": 0, "min_occupancy": None, "waves": [], "errors": set(),
            "mma_variants": set()})
        row["launches"] += 1
        row["variants"].add(_key(spec))
        row["bytes"] += launch["bytes"]
        full = max(t_min, launch["bytes"] / bandwidth)
        row["model_ms"] += full * 1e3
        fill = min(1.0, launch["programs"] / MULTIPROCESSORS)
        row["grid_model_ms"] += max(t_min, launch["bytes"] / (bandwidth * fill)) * 1e3
        row["min_programs"] = launch["programs"] if row["min_programs"] is None else min(row["min_programs"], launch["programs"])
        row["max_programs"] = max(row["max_programs"], launch["programs"])
        row["warps"].add(spec["num_warps"])
        if "error" in res:
            row["errors"].add(res["error"])
            continue
        row["max_registers"] = max(row["max_registers"], res["registers"])
        row["spill_bytes"] = max(row["spill_bytes"], res["spill_stores"] + res["spill_loads"])
        row["max_shared"] = max(row["max_shared"], res["shared"])
        if res["mma"]:
            row["mma_variants"].add(_key(spec))
        resident = resident_programs(res["registers"], spec["num_warps"], res["shared"])
        occ = resident * spec["num_warps"] / SM90["warps"]
        row["min_occupancy"] = occ if row["min_occupancy"] is None else min(row["min_occupancy"], occ)
        # waves of resident programs the launch takes (4.1: a fifth, nearly empty wave)
        row["waves"].append(launch["programs"] / (MULTIPROCESSORS * resident) if resident else math.inf)
    out = []
    for row in rows.values():
        waves = row.pop("waves")
        row["mma_variants"] = len(row["mma_variants"])  # of len(variants): on tensor cores
        out.append({**row, "variants": _variants(launches, compiled, row["variants"]), "warps": sorted(row["warps"]),
                    "errors": sorted(row["errors"]), "GB": row["bytes"] / 1e9,
                    "min_waves": min(waves, default=None), "max_waves": max(waves, default=None)})
    return sorted(out, key=lambda r: -r["grid_model_ms"])


def _variants(launches: list[dict], compiled: dict, keys: set) -> list[dict]:
    """Each compiled variant of one kernel: its constexprs, warps, resources, launches and bytes."""
    out = {}
    for launch in launches:
        key = _key(launch["spec"])
        if key in keys:
            v = out.setdefault(key, {"spec": launch["spec"], "constexprs": launch["spec"]["constexprs"],
                                     "num_warps": launch["spec"]["num_warps"],
                                     **compiled[key], "launches": 0, "bytes": 0, "programs": set()})
            v["launches"] += 1
            v["bytes"] += launch["bytes"]
            v["programs"].add(launch["programs"])
    return [{**v, "programs": sorted(v["programs"])} for v in sorted(out.values(), key=lambda v: -v["bytes"])]


def resources(impls: list[str], batch: int, image: int, bandwidth: float, t_min: float, workers: int) -> list[dict]:
    """The table of each impl's graph step. The distinct launches of all impls are compiled once,
    in one pool: the steps share most of their kernels' variants."""
    from concurrent.futures import ProcessPoolExecutor

    recorded = []
    for impl in impls:
        t0 = time.perf_counter()
        recorded.append((impl, record_launches(impl, batch, image), time.perf_counter() - t0))
    specs = {_key(launch["spec"]): launch["spec"] for _, launches, _ in recorded for launch in launches}
    keys = sorted(specs)
    t1 = time.perf_counter()
    # fresh processes that define the kernels for the GPU: TRITON_INTERPRET is unset in them before
    # they first import ndarts_kernels (this process's kernels are the interpreter's)
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                             initializer=_compiling_process) as pool:
        compiled = dict(zip(keys, pool.map(compile_resources, [specs[k] for k in keys])))
    compile_s = time.perf_counter() - t1
    results = []
    for impl, launches, record_s in recorded:
        table = kernel_table(launches, compiled, bandwidth, t_min)
        results.append({
            "impl": impl, "batch": batch, "image": image, "multiprocessors": MULTIPROCESSORS,
            "launches": len(launches), "distinct_launches": len({_key(launch["spec"]) for launch in launches}),
            "record_s": record_s, "compile_s": compile_s, "compiled_with": len(impls), "compiled_launches": len(keys),
            "bandwidth": bandwidth, "t_min": t_min, "model_ms": sum(r["model_ms"] for r in table),
            "grid_model_ms": sum(r["grid_model_ms"] for r in table), "kernels": table})
    return results


def print_report(r: dict, show_variants: bool = False) -> None:
    print(f"\n{r['impl']}: {r['launches']} Triton launches ({r['distinct_launches']} distinct) per step at "
          f"b{r['batch']} {r['image']}x{r['image']}, {r['multiprocessors']} SMs; Triton kernels' model "
          f"{r['model_ms']:.1f} ms at full bandwidth, {r['grid_model_ms']:.1f} ms grid-limited "
          f"(recorded in {r['record_s']:.0f} s; {r['compiled_launches']} distinct launches of {r['compiled_with']} "
          f"step(s) compiled in {r['compile_s']:.0f} s)")
    print(f"  {'kernel':34} {'launch':>6} {'GB':>6} {'programs':>13} {'waves':>11} {'warps':>5} {'regs':>4} "
          f"{'spill B':>7} {'smem KB':>7} {'occ %':>5} {'mma':>5} {'ms':>6} {'grid ms':>7}")
    for k in r["kernels"]:
        programs = f"{k['min_programs']}-{k['max_programs']}" if k["min_programs"] != k["max_programs"] \
            else str(k["max_programs"])
        occ = "-" if k["min_occupancy"] is None else f"{100 * k['min_occupancy']:.0f}"
        waves = "-" if k["min_waves"] is None else f"{k['min_waves']:.1f}-{k['max_waves']:.1f}"
        mma = f"{k['mma_variants']}/{len(k['variants'])}" if k["mma_variants"] else "-"
        print(f"  {k['kernel'][:34]:34} {k['launches']:6d} {k['GB']:6.2f} {programs:>13} {waves:>11} "
              f"{'/'.join(map(str, k['warps'])):>5} {k['max_registers']:4d} {k['spill_bytes']:7d} "
              f"{k['max_shared'] / 1024:7.1f} {occ:>5} {mma:>5} {k['model_ms']:6.2f} {k['grid_model_ms']:7.2f}")
        for e in k["errors"]:
            print(f"    FAILED to compile: {e}")
        for v in k["variants"] if show_variants else ():
            if "error" in v:
                continue
            occ = resident_programs(v["registers"], v["num_warps"], v["shared"]) * v["num_warps"] / SM90["warps"]
            consts = " ".join(f"{n}={c}" for n, c in v["constexprs"].items() if n != "INDEX_64")
            print(f"    {v['launches']:4d}× {v['bytes'] / 1e9:6.2f} GB  {v['num_warps']} warps {v['registers']:3d} regs "
                  f"{v['spill_stores'] + v['spill_loads']:5d} B spilled {100 * occ:3.0f} % occ {v['mma']:4d} mma "
                  f"{v['fma']:5d} fma  {consts}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--impl", nargs="+", default=["fused_graph", "fused_graph_sepconv"],
                        help="variants of benchmarks/test_bench_search_step.py")
    parser.add_argument("--batch", type=int, default=TARGET[0])
    parser.add_argument("--image", type=int, default=TARGET[1])
    parser.add_argument("--bandwidth", type=float, default=step_traffic.BANDWIDTH, help="bytes/s of a streaming kernel")
    parser.add_argument("--t-min", type=float, default=step_traffic.T_MIN, help="seconds: the least a kernel takes")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="compiling processes")
    parser.add_argument("--variants", action="store_true", help="a line per compiled variant of each kernel")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--conv-precision", choices=["tf32", "ieee"],
                        help="PyTorch's fp32 precision for convolutions while the step is recorded, which the "
                             "fused convs' products follow (kernels/dot_precision.py; default: as PyTorch has it, tf32)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.conv_precision:
        torch.backends.cudnn.conv.fp32_precision = args.conv_precision
    results = resources(args.impl, args.batch, args.image, args.bandwidth, args.t_min, args.workers)
    for r in results:
        print_report(r, args.variants)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 1 if any(k["errors"] for r in results for k in r["kernels"]) else 0


if __name__ == "__main__":
    sys.exit(main())
