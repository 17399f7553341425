"""ndarts.finite_watch: the first non-finite step per quantity, kept on the device; and the search
loop naming the step where a run diverged, with no host sync per step."""
import math
import random

import pytest
import torch

from ndarts.finite_watch import FiniteWatch
from ndarts.searcher import Divergence, SearchConfig, Searcher


def test_first_bad_step_and_its_name(fresh_seed):
    names = ("loss", "grad", "alpha")
    watch = FiniteWatch(names)
    steps = 30
    bad = {name: random.randrange(steps) for name in random.sample(names, 2)}  # two go bad, one never
    first = min(bad.values())
    for step in range(steps):
        values = []
        for name in names:
            v = torch.randn(random.choice([(), (3, 5)]))
            if name in bad and step >= bad[name]:
                v.view(-1)[random.randrange(v.numel())] = random.choice([math.nan, math.inf, -math.inf])
            values.append(v)
        watch.update(step, values)
        got = watch.first_bad()
        if step < first:
            assert got is None
        else:  # the earliest, and it stays the earliest after later bad steps
            assert got[1] == first and bad[got[0]] == first
    watch.reset()
    assert watch.first_bad() is None
    with pytest.raises(ValueError, match="2 values for 3 names"):
        watch.update(0, [torch.zeros(()), torch.zeros(())])


def test_search_names_the_first_diverged_step(tmp_path, monkeypatch):
    """Checked at the end of the epoch (no progress lines): the message names the step where the
    training loss first went non-finite, not the step where it was read."""
    cfg = SearchConfig(layers=3, init_channels=4, batch_size=8, epochs=1, max_steps=6, report_freq=0,
                       out=str(tmp_path / "run"))
    s = Searcher(cfg)
    bad_step = random.randrange(1, 5)
    real = s.criterion.forward
    calls = {"n": 0}

    def criterion(logits, y):  # the w step's loss (every second call: α step first) goes NaN from bad_step
        calls["n"] += 1
        loss = real(logits, y)
        return loss * math.nan if calls["n"] // 2 >= bad_step + 1 and calls["n"] % 2 == 0 else loss

    monkeypatch.setattr(s.criterion, "forward", criterion)
    with pytest.raises(Divergence, match=rf"non-finite training loss at epoch 1, step {bad_step + 1}:") as exc:
        s.run_search()
    # no epoch finished: the run directory goes, and the message says so (no --resume to suggest)
    assert "nothing of the run is kept" in str(exc.value) and "--resume" not in str(exc.value)
    assert not (tmp_path / "run").exists()
