"""--triton-convs auto (ndarts.conv_tuning): the fastest candidate is chosen, failures are reported
and skipped, and the search after the tuning is the one a run given the chosen variant makes."""
import json
import time

import pytest
import torch

from ndarts import conv_tuning
from ndarts.conv_tuning import synthetic_batch, tune_triton_convs
from ndarts.errors import NdartsError
from ndarts.search import main
from ndarts.searcher import SearchConfig, Searcher


class _Step:
    def __init__(self, seconds=0.0, fail_at_call=None):
        self.seconds, self.fail_at_call, self.calls = seconds, fail_at_call, 0

    def __call__(self, x, y, xv, yv, lr):
        self.calls += 1
        if self.calls == self.fail_at_call:
            raise RuntimeError("CUDA error: an illegal memory access was encountered\nmore")
        time.sleep(self.seconds)


def test_the_fastest_candidate_is_chosen_and_failures_are_reported_not_raised():
    steps = {"slow": _Step(0.03), "fast": _Step(0.0), "breaks": _Step(0.0, fail_at_call=2)}

    def build(name):
        if name == "no-compile":
            raise ValueError("the kernel does not compile for this card")
        return steps[name]

    batch = synthetic_batch(2, 1, 4, 3, torch.device("cpu"))
    result = tune_triton_convs(["slow", "no-compile", "fast", "breaks"], build, batch, 0.1, torch.device("cpu"),
                               warmup=1, repeats=3)
    assert result.choice == "fast"
    assert set(result.seconds) == {"slow", "fast"} and result.seconds["slow"] >= 0.03 > result.seconds["fast"]
    assert steps["slow"].calls == steps["fast"].calls == 4  # warm-up + repeats
    assert result.failures == {"no-compile": "ValueError: the kernel does not compile for this card",
                               "breaks": "RuntimeError: CUDA error: an illegal memory access was encountered"}
    summary = result.summary()
    assert summary.startswith("--triton-convs auto: fast (") and "slow 3" in summary and "breaks failed" in summary


def test_every_candidate_failing_is_one_clear_error():
    def build(name):
        raise RuntimeError(f"{name} is broken")

    batch = synthetic_batch(2, 1, 4, 3, torch.device("cpu"))
    with pytest.raises(NdartsError, match="every candidate failed.*a is broken.*choose --triton-convs none"):
        tune_triton_convs(["a", "b"], build, batch, 0.1, torch.device("cpu"), warmup=0, repeats=1)


def test_the_synthetic_batch_has_the_search_shapes_and_draws_nothing_from_the_global_rng():
    state = torch.get_rng_state()
    x, y, xv, yv = synthetic_batch(5, 3, 7, 10, torch.device("cpu"))
    assert torch.equal(torch.get_rng_state(), state)
    assert x.shape == xv.shape == (5, 3, 7, 7) and y.shape == yv.shape == (5,)
    assert y.dtype == torch.long and 0 <= int(y.min()) and int(y.max()) < 10 and not torch.equal(x, xv)


def _cfg(out, **kw):
    base = dict(dataset="digits", layers=1, steps=2, init_channels=2, batch_size=2, max_steps=1, epochs=1,
                report_freq=0, out=str(out), fused=True, backend="triton", eval_batch_size=2)
    base.update(kw)
    return SearchConfig(**base)


def test_auto_times_the_candidates_then_searches_as_a_run_given_the_choice(tmp_path, monkeypatch):
    """In the interpreter (--backend triton: the Triton convs run eagerly), two candidates, one call
    each: the chosen one is logged with both times, and the search after the tuning equals, bitwise,
    a run started with --triton-convs <choice> (the tuning's networks and steps drew nothing from the
    run's RNG streams)."""
    monkeypatch.setattr("ndarts.searcher.AUTO_CANDIDATES", ("none", "depthwise-wgrad"))
    monkeypatch.setitem(conv_tuning.TUNING_CALLS, "eager", {"warmup": 0, "repeats": 1})
    tuned = Searcher(_cfg(tmp_path / "auto", triton_convs="auto"))
    log = (tmp_path / "auto" / "log.txt").read_text()
    assert f"--triton-convs auto: {tuned.triton_convs} (per search step: none " in log
    assert "depthwise-wgrad " in log and "failed" not in log
    assert json.loads((tmp_path / "auto" / "config.json").read_text())["triton_convs"] == "auto"
    tuned.run_search()
    direct = Searcher(_cfg(tmp_path / "direct", triton_convs=tuned.triton_convs))
    direct.run_search()
    for a, b in zip(tuned.model.parameters(), direct.model.parameters(), strict=True):
        assert torch.equal(a, b)

    # resumed: the variant the run chose (config.json), not a new timing that might choose another
    assert json.loads((tmp_path / "auto" / "config.json").read_text())["triton_convs_chosen"] == tuned.triton_convs
    monkeypatch.setattr("ndarts.searcher.tune_triton_convs", _never)
    resumed = Searcher(_cfg(tmp_path / "auto", triton_convs="auto", epochs=2, resume=True))
    assert resumed.triton_convs == tuned.triton_convs and resumed.start_epoch == 1
    log = (tmp_path / "auto" / "log.txt").read_text()
    assert f"--triton-convs auto: {tuned.triton_convs}, as this run chose before" in log


def _never(*args, **kwargs):
    raise AssertionError("nothing to time here")


def test_auto_without_the_triton_kernels_is_none_untimed(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("ndarts.searcher.tune_triton_convs", _never)
    s = Searcher(_cfg(tmp_path / "torch", backend="torch"))
    s.cfg.triton_convs = "auto"
    assert s._choose_triton_convs() == "none" == s.cfg.triton_convs_chosen
    with pytest.raises(NdartsError, match="triton_convs_chosen must be one of"):
        Searcher(_cfg(tmp_path / "bad", triton_convs="auto", triton_convs_chosen="winograd"))
    main(["--layers", "2", "--init-channels", "2", "--batch-size", "4", "--max-steps", "1", "--epochs", "1",
          "--eval-batch-size", "4", "--fused", "--triton-convs", "auto", "--out", str(tmp_path / "cli")])
    assert "--triton-convs auto: none (the search kernels run on the torch backend on cpu)" in capsys.readouterr().out


def test_an_explicit_variant_that_changes_nothing_says_so(tmp_path, capsys):
    args = ["--layers", "2", "--init-channels", "2", "--batch-size", "4", "--max-steps", "1", "--epochs", "1",
            "--eval-batch-size", "4", "--fused"]
    main([*args, "--triton-convs", "separable", "--out", str(tmp_path / "sep")])
    assert ("note: --triton-convs separable changes nothing here "
            "(the search kernels run on the torch backend on cpu)") in capsys.readouterr().out
    main([*args, "--triton-convs", "none", "--out", str(tmp_path / "none")])
    assert "--triton-convs" not in capsys.readouterr().out
