"""--deterministic (ndarts.determinism, ndarts.losses): the settings, the ops it swaps in, the CLIs.

The swapped-in ops (a mean for the global pool, window means for the auxiliary head's 2×2 pool,
a masked cross entropy) must give PyTorch's values and gradients; the runs must repeat bit for bit
and record the flag. On CUDA, tests/test_gpu.py runs two searches and compares them bitwise.
"""
import json
import os

import pytest
import torch
import torch.nn.functional as F

from ndarts import search, train
from ndarts.determinism import (
    CUBLAS_WORKSPACE,
    DeterminismState,
    GlobalAvgPool,
    adaptive_avg_pool_2x2,
    deterministic_mode,
    gather_inverse,
    unique_gather,
)
from ndarts.losses import CrossEntropy, masked_cross_entropy


@pytest.fixture
def restored():
    """Whatever a test turns on, the process's settings are as before afterwards."""
    before = DeterminismState.current()
    yield
    before.restore()


@pytest.fixture
def deterministic(restored):
    deterministic_mode()


def _reference_grads(fn_a, fn_b, *inputs, tol):
    """fn_a and fn_b agree on the inputs (fresh random values) in value and in each input's gradient."""
    outs, g = [], None
    for fn in (fn_a, fn_b):
        leaves = [x.detach().clone().requires_grad_(x.is_floating_point()) for x in inputs]
        y = fn(*leaves)
        g = torch.randn_like(y) if g is None else g  # one upstream gradient for both
        (y * g).sum().backward(inputs=[x for x in leaves if x.requires_grad])
        outs.append((y.detach(), [x.grad for x in leaves if x.requires_grad]))
    (ya, ga), (yb, gb) = outs
    torch.testing.assert_close(ya, yb, **tol)
    for a, b in zip(ga, gb):
        torch.testing.assert_close(a, b, **tol)


def test_deterministic_mode_sets_every_setting_and_restore_puts_them_back(restored, monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    torch.backends.cudnn.benchmark = True
    original = DeterminismState.current()
    before = deterministic_mode()
    assert before == original
    assert torch.are_deterministic_algorithms_enabled() and not torch.is_deterministic_algorithms_warn_only_enabled()
    assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
    assert not torch.utils.deterministic.fill_uninitialized_memory
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == CUBLAS_WORKSPACE
    before.restore()
    assert DeterminismState.current() == original and "CUBLAS_WORKSPACE_CONFIG" not in os.environ


@pytest.mark.parametrize("given,kept", [(":16:8", ":16:8"), (":4096:2", CUBLAS_WORKSPACE)])
def test_a_reproducible_cublas_setting_is_kept_another_replaced(restored, monkeypatch, given, kept):
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", given)
    deterministic_mode().restore()
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == given
    deterministic_mode()
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == kept


@pytest.mark.parametrize("dtype,tol", [(torch.float32, dict(atol=2e-6, rtol=2e-6)),
                                       (torch.float64, dict(atol=1e-12, rtol=1e-12))])
@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.37])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_masked_cross_entropy_equals_torch(dtype, tol, smoothing, reduction):
    n, c = 13, 7
    logits = torch.randn(n, c, dtype=dtype) * 3
    target = torch.randint(0, c, (n,))
    _reference_grads(lambda x, t: masked_cross_entropy(x, t, smoothing, reduction),
                     lambda x, t: F.cross_entropy(x, t, label_smoothing=smoothing, reduction=reduction),
                     logits, target, tol=tol)


def test_masked_cross_entropy_names_bad_input():
    with pytest.raises(ValueError, match="reduction must be one of"):
        masked_cross_entropy(torch.randn(3, 4), torch.zeros(3, dtype=torch.long), reduction="max")
    with pytest.raises(ValueError, match=r"logits \[N, C\] and target \[N\], got \(3, 4\) and \(2,\)"):
        masked_cross_entropy(torch.randn(3, 4), torch.zeros(2, dtype=torch.long))


def test_cross_entropy_module_uses_no_nll_loss_in_deterministic_mode(deterministic, monkeypatch):
    """PyTorch refuses nll_loss's CUDA backward in deterministic mode: the loop's loss must not call it."""
    logits, target = torch.randn(9, 5, requires_grad=True), torch.randint(0, 5, (9,))
    expected = F.cross_entropy(logits, target, label_smoothing=0.2)

    def refused(*args, **kwargs):
        raise AssertionError("F.cross_entropy called in deterministic mode")

    monkeypatch.setattr(F, "cross_entropy", refused)
    loss = CrossEntropy(label_smoothing=0.2)(logits, target)
    torch.testing.assert_close(loss, expected, atol=2e-6, rtol=2e-6)
    loss.backward()
    assert torch.isfinite(logits.grad).all()


@pytest.mark.parametrize("on", [False, True])
@pytest.mark.parametrize("shape,channels_last", [((3, 5, 7, 9), False), ((2, 6, 4, 4), True), ((4, 3, 1, 5), False)])
def test_global_avg_pool_equals_adaptive_pooling(restored, on, shape, channels_last):
    if on:
        deterministic_mode()
    x = torch.randn(shape) + 2.0
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    _reference_grads(GlobalAvgPool(), lambda t: F.adaptive_avg_pool2d(t, 1), x, tol=dict(atol=1e-6, rtol=1e-6))


@pytest.mark.parametrize("on", [False, True])
@pytest.mark.parametrize("hw", [(5, 7), (2, 2), (9, 4), (1, 3), (3, 3)])
def test_auxiliary_heads_2x2_pool_equals_adaptive_pooling(restored, on, hw):
    """Odd sides make the four windows overlap (the case PyTorch's CUDA backward handles with atomics)."""
    if on:
        deterministic_mode()
    x = torch.randn(3, 4, *hw)
    _reference_grads(adaptive_avg_pool_2x2, lambda t: F.adaptive_avg_pool2d(t, 2), x, tol=dict(atol=1e-6, rtol=1e-6))


@pytest.mark.parametrize("shape,dim,index", [((7,), 0, [6, 0, 3]), ((4, 8), 1, [1, 2, 3, 5, 6, 7]),
                                             ((3, 5, 2), -2, [4, 0]), ((5,), 0, [2, 4, 0, 1, 3])])
def test_unique_gather_equals_index_select_with_its_gradient(shape, dim, index):
    """Each gathered slot's gradient is the upstream one, every other slot's exactly 0 (PyTorch's values)."""
    x = torch.randn(shape, dtype=torch.float64)
    idx = torch.tensor(index)
    inverse = gather_inverse(index, shape[dim])
    _reference_grads(lambda t: unique_gather(t, dim, idx, inverse), lambda t: t.index_select(dim, idx), x,
                     tol=dict(atol=0, rtol=0))


def test_unique_gather_is_twice_differentiable():
    """Second-order DARTS and the Hessian differentiate the α step's gradient again."""
    x = torch.randn(6, dtype=torch.float64, requires_grad=True)
    idx, inverse = torch.tensor([4, 1, 2]), gather_inverse([4, 1, 2], 6)
    torch.autograd.gradcheck(lambda t: unique_gather(t, 0, idx, inverse).pow(3), (x,))
    torch.autograd.gradgradcheck(lambda t: unique_gather(t, 0, idx, inverse).pow(3), (x,))


@pytest.mark.parametrize("index,size", [([1, 1], 4), ([0, 4], 4), ([-1], 3)])
def test_gather_inverse_refuses_repeated_or_outside_indices(index, size):
    with pytest.raises(ValueError, match="must be distinct and in"):
        gather_inverse(index, size)


TINY_SEARCH = ["--init-channels", "4", "--batch-size", "16", "--max-steps", "3", "--report-freq", "0", "--epochs", "1"]
DARTS_CELLS = ["--layers", "3"]  # the DARTS spaces (NAS-Bench-201's refuses --layers)


@pytest.mark.parametrize("flags", [DARTS_CELLS, ["--space", "nas-bench-201", "--cells-per-stage", "1"],
                                   [*DARTS_CELLS, "--order", "second", "--hessian-every", "1"]])
def test_deterministic_search_repeats_and_records_the_flag(restored, tmp_path, flags):
    """Second order and the Hessian differentiate the masked loss and the weights' gathers twice."""
    runs = []
    for name in ("a", "b"):
        search.main([*TINY_SEARCH, *flags, "--deterministic", "--fused", "--out", str(tmp_path / name)])
        assert torch.are_deterministic_algorithms_enabled()  # process-wide, as cudnn.benchmark is
        assert json.loads((tmp_path / name / "config.json").read_text())["deterministic"] is True
        assert ", deterministic algorithms" in (tmp_path / name / "log.txt").read_text()
        record = json.loads((tmp_path / name / "metrics.jsonl").read_text())
        alphas = {k: v for k, v in record.items() if k.startswith("alphas")}
        assert alphas and ("hessian_eigenvalue" in record) == ("--hessian-every" in flags)
        runs.append((alphas, record["train_loss"], record.get("hessian_eigenvalue"),
                     (tmp_path / name / "genotype.json").read_text()))
    assert runs[0] == runs[1]


@pytest.mark.parametrize("flags,message", [
    (["--cudnn-benchmark"], "--deterministic and --cudnn-benchmark"),
    (["--triton-convs", "auto"], "--deterministic and --triton-convs auto"),
])
def test_deterministic_search_refuses_timing_based_choices(restored, tmp_path, capsys, flags, message):
    with pytest.raises(SystemExit) as exc:
        search.main([*TINY_SEARCH, *DARTS_CELLS, "--deterministic", *flags, "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and message in err and "Traceback" not in err
    assert not (tmp_path / "x").exists() and not torch.are_deterministic_algorithms_enabled()


@pytest.mark.parametrize("cli", [search, train])
def test_a_failed_set_up_leaves_deterministic_mode_off(restored, tmp_path, capsys, cli):
    """The mode is turned on before the data are loaded; a missing dataset undoes it (a notebook
    that calls main() goes on as it was), and no run directory is left."""
    with pytest.raises(SystemExit) as exc:
        cli.main(["--dataset", "cifar10", "--data", str(tmp_path / "missing"), "--deterministic",
                  "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "does not exist" in err and "Traceback" not in err
    assert not torch.are_deterministic_algorithms_enabled() and not torch.backends.cudnn.deterministic
    assert not (tmp_path / "x").exists()


def test_deterministic_training_repeats_with_the_auxiliary_head(restored, tmp_path):
    """8×8 digits reach the auxiliary head as 2×2 maps: its adaptive pool runs (adaptive_avg_pool_2x2)."""
    finals = []
    for name in ("a", "b"):
        train.main(["--init-channels", "4", "--layers", "3", "--batch-size", "16", "--max-steps", "2", "--epochs", "1",
                    "--deterministic", "--out", str(tmp_path / name)])
        assert json.loads((tmp_path / name / "config.json").read_text())["deterministic"] is True
        assert ", deterministic algorithms" in (tmp_path / name / "log.txt").read_text()
        state = torch.load(tmp_path / name / "checkpoint.pt", map_location="cpu", weights_only=False)["model"]
        finals.append(state)
    assert finals[0].keys() == finals[1].keys()
    assert all(torch.equal(finals[0][k], finals[1][k]) for k in finals[0])
