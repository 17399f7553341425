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
