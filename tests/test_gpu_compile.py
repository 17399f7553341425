"""Every Triton kernel compiles for an H100/H200 (sm_90), checked on a CPU (tests/gpu_compile.py).

The interpreter, which runs the kernels in the other CPU tests, accepted two kernels that Triton's
compiler rejects (found by this check, 2026-11-29): the multiplicative-noise variant of the mixed
sums (two returns of different types behind a constexpr branch) and the int64-index variant for
tensors of ≥ 2^31 elements (int64 vs int32 returns). Both would have failed on the first GPU call.
"""
import json
import os
import subprocess
import sys

import pytest

SCRIPT = os.path.join(os.path.dirname(__file__), "gpu_compile.py")


def _jit_kernels() -> set:
    """(module, name) of every @triton.jit kernel with a grid launch in ndarts_kernels: a `_..._kernel`
    (in every module of the package: a new kernel file is covered without being listed)."""
    import ndarts_kernels

    root = os.path.dirname(ndarts_kernels.__file__)
    names = set()
    modules = sorted(f[:-3] for f in os.listdir(root) if f.endswith(".py") and f != "__init__.py")
    assert {"noisy_mixed_sum", "noisy_group_sum", "batch_norm", "pools"} <= set(modules)
    for module in modules:
        with open(os.path.join(root, f"{module}.py")) as f:
            for line in f:
                if line.startswith("def _") and "_kernel(" in line:
                    names.add((f"ndarts_kernels.{module}", line[4:line.index("(")]))
    return names


def _parameters(module: str, kernel: str) -> list:
    import importlib
    import inspect

    return list(inspect.signature(getattr(importlib.import_module(module), kernel).fn).parameters)


def _run(*args, env_update):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(env_update)
    return subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True, env=env, timeout=1200)


def test_every_kernel_compiles_for_sm90(tmp_path):
    """Compiles a cover of the captured launches (tests/gpu_compile.py): every feature value by
    default, every pair of them with NDARTS_COMPILE_COVER=pairwise, all launches with =all."""
    pytest.importorskip("triton.backends.nvidia")
    specs = tmp_path / "specs.json"
    cap = _run("capture", str(specs), env_update={"TRITON_INTERPRET": "1"})
    assert cap.returncode == 0, cap.stdout + cap.stderr
    captured = json.loads(specs.read_text())
    kernels = {(s["module"], s["kernel"]) for s in captured}
    # the workload reaches every kernel, and each in its int64-index variant where it has one
    assert kernels >= _jit_kernels(), sorted(_jit_kernels() - kernels)
    assert any(s["constexprs"].get("MULT") for s in captured)
    # the sums' backward kernels without dW (a w step's), with and without multiplicative noise
    no_dw = {(s["kernel"], s["constexprs"].get("MULT")) for s in captured if s["constexprs"].get("WGRAD") is False}
    assert no_dw >= {(k, m) for k in ("_noisy_mixed_sum_backward_kernel", "_group_backward_kernel")
                     for m in (False, True)}, sorted(no_dw)
    # the decay scale read on the device, by each noise kernel both ways (--noise-decay's captured step)
    scaled = {(s["kernel"], s["constexprs"].get("MULT")) for s in captured if s["constexprs"].get("SCALED")}
    assert scaled >= {(k, False) for k in ("_noisy_mixed_sum_forward_kernel", "_noisy_mixed_sum_backward_kernel",
                                           "_group_forward_kernel", "_group_backward_kernel")}, sorted(scaled)
    assert ("_noisy_mixed_sum_forward_kernel", True) in scaled
    # the depthwise weight gradient of relu(x) (a sep conv's dw2 keeping bn1's output)
    assert any(s["constexprs"].get("RELU_INPUT") for s in captured)
    # the conv kernels' products in both precisions (kernels/dot_precision.py), TF32 by default
    precisions = {(s["kernel"], s["constexprs"]["DOT_PRECISION"]) for s in captured if "DOT_PRECISION" in s["constexprs"]}
    assert precisions == {(k, p) for k in ("_pw_conv_kernel", "_pw_conv_wgrad_kernel", "_sep_conv_fwd_kernel",
                                           "_sep_conv_bwd_kernel") for p in ("tf32", "ieee")}, sorted(precisions)
    with_int64 = {k for m, k in _jit_kernels() if "INDEX_64" in _parameters(m, k) and k != "_unit_noise_kernel"}
    assert {s["kernel"] for s in captured if s["constexprs"].get("INDEX_64")} >= with_int64
    cover = os.environ.get("NDARTS_COMPILE_COVER", "values")
    out = _run("compile", "--cover", cover, str(specs), env_update={"TRITON_CACHE_DIR": str(tmp_path / "triton_cache")})
    assert out.returncode == 0, out.stdout + out.stderr
    n = len(_gpu_compile().COVERS[cover](captured))
    assert f"{cover} cover: {n} of {len(captured)} launches" in out.stdout
    assert f"compiled {n} of {n} launches" in out.stdout


def _gpu_compile():
    sys.path.insert(0, os.path.dirname(SCRIPT))
    import gpu_compile

    return gpu_compile


@pytest.mark.parametrize("cover,arity", [("pairwise", 2), ("values", 1)])
def test_a_cover_keeps_every_combination_of_features(cover, arity, fresh_seed):
    """Random launches of three kernels: the cover is a subset, deterministic, smaller than the
    whole, and every combination of `arity` compile-time features that one launch had (a pair, or
    a single value), one chosen launch has; a kernel with one launch keeps it. The value cover is
    the smaller one, and a pair cover holds every value."""
    import itertools
    import random

    gc = _gpu_compile()
    rng = random.Random(fresh_seed)
    specs = []
    for kernel, n in (("_a_kernel", 60), ("_b_kernel", 25), ("_c_kernel", 1)):
        for _ in range(n):
            specs.append({"module": "m", "kernel": kernel, "num_warps": rng.choice([4, 8]),
                          "signature": {"x": rng.choice(["*fp32", "*bf16"]), "n": rng.choice(["i32", "i64"]),
                                        "BLOCK": "constexpr", "MODE": "constexpr"},
                          "constexprs": {"BLOCK": rng.choice([64, 128, 256, 512]), "MODE": rng.choice([0, 1, 2]),
                                         **({"FLAG": rng.random() < 0.5} if kernel == "_a_kernel" else {})}})
    specs = [json.loads(s) for s in dict.fromkeys(json.dumps(s, sort_keys=True) for s in specs)]
    chosen = gc.COVERS[cover](specs)
    assert chosen == gc.COVERS[cover]([dict(s) for s in specs])
    assert all(c in specs for c in chosen) and len(chosen) < len(specs)
    for kernel in ("_a_kernel", "_b_kernel", "_c_kernel"):
        def combinations(launches, k):
            return {p for s in launches if s["kernel"] == kernel
                    for p in itertools.combinations(sorted(gc._features(s)), k)}
        for k in range(1, arity + 1):
            assert combinations(chosen, k) == combinations(specs, k), (kernel, k)
    assert sum(s["kernel"] == "_c_kernel" for s in chosen) == 1
    assert len(gc.value_cover(specs)) < len(gc.pairwise_cover(specs))
