"""benchmarks/gpu_check.sh on a machine without a GPU: its shell parses, its environment step
imports ndarts from the tree (the kernels compiled, not interpreted), and it stops with exit code
2 naming the missing device, before any GPU step. A GPU session is short: a script that fails
there on a typo costs the session's one run."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.sh"


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU machine the script runs every GPU step")
def test_gpu_check_stops_at_the_missing_device(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "OUT")}
    env.update(PYTHON=sys.executable, OUT=str(tmp_path / "out"), TMPDIR=str(tmp_path), NDARTS_COMMIT="test")
    run = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=120)
    out = run.stdout + run.stderr
    assert run.returncode == 2, out
    assert "no CUDA device: stopping" in out
    assert "| commit test" in out and "kernels interpreted: False" in out, out
    env_txt = (tmp_path / "out" / "env.txt").read_text()
    assert f"torch {torch.__version__}" in env_txt
    assert "GPU tests" not in out  # nothing after the device check ran


@pytest.mark.parametrize("overrides", [
    dict(cuda_graph=True, triton_convs="auto", epochs=1),  # test_triton_convs_auto_... (its epochs override)
    dict(cuda_graph=True, deterministic=True, epochs=1),  # test_deterministic_search_repeats_bitwise
    dict(cuda_graph=True, space="nas-bench-201", cells_per_stage=2),
    dict(cuda_graph=True, noise_decay=True),
    dict(cuda_graph=True, eval_batch_size=64),
])
def test_the_gpu_tests_search_settings_build_here(tmp_path, overrides):
    """The GPU tests' searches (tests/test_gpu.py) only run on a lent GPU: their settings must at
    least make a valid SearchConfig with each test's overrides (an `epochs` given twice was a
    TypeError there, unseen until a GPU run)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from test_gpu import search_config

    cfg = search_config(tmp_path, "x", device="cpu", **overrides)
    cfg.validate()
    assert all(getattr(cfg, k) == v for k, v in overrides.items())
    assert cfg.dataset == "digits" and cfg.fused


def _calls_that_do_not_bind(path: Path) -> list:
    """(line, callee, error) for each call in `path`'s functions whose arguments do not fit the
    callee's signature: callees the module defines or imports (inside the function too)."""
    import ast
    import importlib
    import inspect

    tree = ast.parse(path.read_text())
    module = importlib.import_module(path.stem)
    found = []
    for fn in (n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)):
        names = {n: o for n, o in vars(module).items() if callable(o)}
        for node in ast.walk(fn):
            if isinstance(node, ast.ImportFrom) and node.module:
                imported = importlib.import_module(node.module)
                names.update({a.asname or a.name: getattr(imported, a.name, None) for a in node.names})
        for node in ast.walk(fn):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and callable(names.get(node.func.id))):
                continue
            if any(isinstance(a, ast.Starred) for a in node.args) or any(k.arg is None for k in node.keywords):
                continue  # *args / **kwargs: not checked
            try:
                inspect.signature(names[node.func.id]).bind_partial(
                    *node.args, **{k.arg: k.value for k in node.keywords})
            except TypeError as e:
                found.append((node.lineno, node.func.id, str(e)))
            except ValueError:  # a builtin without a signature
                pass
    return found


@pytest.mark.parametrize("path", ["tests/test_gpu.py", "benchmarks/test_bench_search_step.py",
                                  "benchmarks/test_bench_search_loop.py", "benchmarks/test_bench_noisy_mixed_sum.py"])
def test_gpu_only_code_calls_match_their_targets(path):
    """The GPU tests, and the benchmarks' CUDA-graph paths, run only on a lent GPU: each call of a
    helper or an ndarts function there must at least fit its signature (names, counts of
    arguments), checked here without running it."""
    root = Path(__file__).resolve().parents[1]
    sys.path[:0] = [str(root / "tests"), str(root / "benchmarks")]
    assert _calls_that_do_not_bind(root / path) == []
