"""benchmarks/gpu_check.sh on a machine without a GPU: its shell parses, its environment step
imports ndarts from the tree (the kernels compiled, not interpreted), and it stops with exit code
2 naming the missing device, before any GPU step. A GPU session is short: a script that fails
there on a typo costs the session's one run."""
import os
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.sh"


def _archive(out_dir: Path) -> dict:
    """{name: text} of the files in $OUT/gpu_check.tgz."""
    with tarfile.open(out_dir / "gpu_check.tgz") as tar:
        return {Path(m.name).name: tar.extractfile(m).read().decode() for m in tar.getmembers() if m.isfile()}


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU machine the script runs every GPU step")
def test_gpu_check_stops_at_the_missing_device(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "OUT")}
    env.update(PYTHON=sys.executable, OUT=str(tmp_path / "out"), TMPDIR=str(tmp_path), NDARTS_COMMIT="test")
    run = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=120)
    out = run.stdout + run.stderr
    assert run.returncode == 2, out
    assert "no CUDA device: stopping" in out
    assert "| commit test" in out and "kernels interpreted: False" in out, out
    assert "GPU tests" not in out  # nothing after the device check ran
    # $OUT holds the table and the archive, nothing loose: what the device tool returns (8 files at most)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["gpu_check.tgz", "summary.txt"]
    assert f"torch {torch.__version__}" in _archive(tmp_path / "out")["env.txt"]
    summary = (tmp_path / "out" / "summary.txt").read_text()
    assert summary.count("not measured (bench_") == 6, summary  # every target listed, none run yet


def _script() -> str:
    return SCRIPT.read_text()


def _step_position(text: str, name: str) -> int:
    """Where the script runs step `name` (its run_logged / bench call)."""
    match = re.search(rf"^[^#\n]*(?:bench|run_logged) {name} ", text, re.M)
    assert match, name
    return match.start()


def test_the_targets_steps_run_first():
    """Issue 4's targets (the mixed-op sum's cases, torch.compile's baseline, the search step) run
    before anything that could spend their time; the GPU tests and the rest after them."""
    text = _script()
    order = ["bench_sum", "bench_compile_target", "bench_step", "gpu_tests", "bench_step_rest", "bench_loop",
             "bench_dwconv", "profile", "bench_sum_rest", "bench_compile_rest"]
    positions = [_step_position(text, name) for name in order]
    assert positions == sorted(positions)
    assert positions[2] < text.index("benchmarks/warm_triton_cache.py --exclude fused_graph")  # after the targets
    # the compiled baseline runs whatever GPU_CHECK_COMPILE says: it only governs the other compile cases
    gate = text[text.index('if [ "${GPU_CHECK_COMPILE:-1}" = 0 ]'):]
    assert "bench_compile_target" not in gate and "bench_compile_rest" in gate
    assert _step_position(text, "bench_compile_target") < text.index('if [ "${GPU_CHECK_COMPILE')


def test_the_targets_fit_the_budget_in_the_worst_case():
    """With every step using its whole default limit, the three target steps end inside the budget
    (less the reserve and ~20 s for the card and environment checks): the rest absorbs the cuts."""
    text = _script()
    budget = int(re.search(r'BUDGET="\$\{GPU_CHECK_BUDGET_S:-(\d+)\}"', text).group(1))
    reserve = int(re.search(r"^RESERVE=(\d+)", text, re.M).group(1))
    limits = {var: int(v) for var, v in re.findall(r"\$\{(GPU_\w+_LIMIT_S):-(\d+)\}", text)}
    targets = limits["GPU_SUM_LIMIT_S"] + limits["GPU_COMPILE_TARGET_LIMIT_S"] + limits["GPU_STEP_TARGET_LIMIT_S"]
    assert 20 + targets + limits["GPU_TESTS_LIMIT_S"] <= budget - reserve
    assert budget + 15 + 30 <= 600  # the kill-after of a step and the final report, in the device's 600 s


def _selection(text: str, name: str) -> list:
    """The pytest arguments of benchmark step `name` in the script (its continued lines joined)."""
    start = _step_position(text, name)
    line_end = start
    while text[line_end:text.index("\n", line_end)].rstrip().endswith("\\"):
        line_end = text.index("\n", line_end) + 1
    call = text[start:text.index("\n", line_end)].replace("\\\n", " ")
    args = shlex.split(call.split("||")[0])
    return [a for a in args[args.index(name) + 3:]]


def _collected(args: list) -> set:
    root = SCRIPT.parents[1]
    run = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", *args], cwd=root,
                         capture_output=True, text=True, timeout=300)
    return {line.split("::", 1)[1] for line in run.stdout.splitlines() if "::" in line}


def test_the_target_steps_select_the_target_cases():
    """The script's selections (by marker, so independent of the GPU's shapes) pick the fp32 fwd+bwd
    cases at the target shapes first, the compiled one of the >= 5x target next, and the 'rest'
    steps pick everything else, nothing twice; likewise the search step's target variants and the issue's eager rows."""
    from bench_common import BANDWIDTH_SHAPE, SPEEDUP_SHAPE, shape_id

    text = _script()
    sum_file = "benchmarks/test_bench_noisy_mixed_sum.py"
    picked = {name: _collected(_selection(text, name)) for name in
              ("bench_sum", "bench_compile_target", "bench_sum_rest", "bench_compile_rest")}
    every = _collected([sum_file])
    speed, band = (f"fwdbwd-float32-{shape_id(s)}" for s in (SPEEDUP_SHAPE, BANDWIDTH_SHAPE))
    assert picked["bench_sum"] == {f"test_mixed_sum[{case}-{impl}]" for case in (speed, band)
                                   for impl in ("fused", "eager_darts", "eager_ref")}
    assert picked["bench_compile_target"] == {f"test_mixed_sum_compiled[{speed}]"}
    assert sum(len(p) for p in picked.values()) == len(every) and set().union(*picked.values()) == every
    step_file = "benchmarks/test_bench_search_step.py"
    target, rest = _collected(_selection(text, "bench_step")), _collected(_selection(text, "bench_step_rest"))
    assert target == {f"test_search_step[{impl}]" for impl in ("plain", "fused_graph", "fused", "reference")}
    assert not target & rest and target | rest == _collected([step_file])


def _label(tmp_path: Path, git_dir: bool, dirty: bool, given: str = "") -> str:
    """The commit label the script records, in a copy of it run with a stand-in python that stops
    at the device check: in a git repository (clean or with a changed file) or none."""
    repo = tmp_path / "repo"
    (repo / "benchmarks").mkdir(parents=True)
    (repo / "benchmarks" / "gpu_check.sh").write_text(_script())
    (repo / "file.txt").write_text("committed\n")
    fake = tmp_path / "python"
    fake.write_text('#!/usr/bin/env bash\ncase "$*" in *is_available*) exit 1;; esac\n'
                    '[ "$1" = - ] && echo "| commit $NDARTS_COMMIT"\nexit 0\n')
    fake.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_") and k not in ("OUT", "NDARTS_COMMIT")}
    env.update(HOME=str(tmp_path), GIT_CONFIG_NOSYSTEM="1", PYTHON=str(fake), OUT=str(tmp_path / "out"),
               TMPDIR=str(tmp_path), **({"NDARTS_COMMIT": given} if given else {}))
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
    if git_dir:
        for args in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "x"]):
            subprocess.run(git + args, check=True, env=env, capture_output=True)
    if dirty:
        (repo / "file.txt").write_text("changed\n")
    run = subprocess.run(["bash", str(repo / "benchmarks" / "gpu_check.sh")], env=env, capture_output=True,
                         text=True, timeout=60)
    assert run.returncode == 2, run.stdout + run.stderr
    return re.search(r"\| commit (\S*)", run.stdout).group(1)


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_the_run_label_says_when_the_tree_is_not_its_commit(tmp_path):
    head = _label(tmp_path / "clean", git_dir=True, dirty=False)
    assert re.fullmatch(r"[0-9a-f]{4,40}", head)
    assert re.fullmatch(r"[0-9a-f]{4,40}-dirty", _label(tmp_path / "dirty", git_dir=True, dirty=True))
    assert _label(tmp_path / "given", git_dir=True, dirty=True, given="abc1234") == "abc1234-dirty"
    # the device's copy has no .git: the caller's label as it is, else 'unknown'
    assert _label(tmp_path / "copy", git_dir=False, dirty=True, given="abc1234") == "abc1234"
    assert _label(tmp_path / "bare", git_dir=False, dirty=False) == "unknown"


def test_python_output_is_unbuffered_and_the_profile_json_is_in_the_archive():
    """A step cut at its limit keeps what its Python printed and, for the profile, the variants it
    finished (profile_step.py rewrites its JSON after each: tests/test_profile_step.py)."""
    text = _script()
    assert re.search(r"^export PYTHONUNBUFFERED=1", text, re.M)
    assert '--json "$WORK/profile.json"' in text


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
