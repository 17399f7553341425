"""The searcher builds the SPEC's recipe: Adam(3e-4, betas (0.5, 0.999), wd 1e-3) for α, grad clip 5,
cosine lr to lr_min stepped after each epoch (epoch 0 trains at the full rate), the α half (not the
w half) for α steps and the epoch's evaluation, and the evaluation in eval mode (no noise, running
BatchNorm statistics)."""
import json

import torch

from ndarts.searcher import SearchConfig, Searcher


def _cfg(out, **kw):
    base = dict(dataset="digits", layers=3, init_channels=4, batch_size=16, max_steps=1, epochs=2,
                report_freq=0, out=str(out))
    base.update(kw)
    return SearchConfig(**base)


def test_default_recipe_constants():
    d = SearchConfig()
    assert (d.grad_clip, d.arch_learning_rate, d.arch_weight_decay, d.learning_rate, d.learning_rate_min,
            d.momentum, d.weight_decay, d.train_portion, d.order) == (5.0, 3e-4, 1e-3, 0.05, 0.001, 0.9, 3e-4,
                                                                      0.5, "first")


def test_alpha_optimizer_and_halves(tmp_path):
    s = Searcher(_cfg(tmp_path / "r"))
    (a,) = s.a_opt.param_groups
    assert isinstance(s.a_opt, torch.optim.Adam)
    assert (a["lr"], a["betas"], a["weight_decay"]) == (3e-4, (0.5, 0.999), 1e-3)
    w_half = set(s.train_stream.indices.tolist())
    a_half = set(s.val_stream.indices.tolist())
    assert w_half and a_half and not (w_half & a_half)
    assert set(s.eval_stream.indices.tolist()) == a_half  # DARTS's infer() runs on the α half
    assert len(w_half) + len(a_half) == len(s.spec.train)


def test_each_epoch_trains_at_the_rate_it_records(tmp_path, monkeypatch):
    """The w optimizer's rate while an epoch trains is the cosine rate of that epoch (0.05 first)."""
    s = Searcher(_cfg(tmp_path / "r", epochs=3))
    seen = []
    real = Searcher._train_epoch

    def spy(self, epoch, lr, scale):
        seen.append(self.w_opt.param_groups[0]["lr"])
        return real(self, epoch, lr, scale)

    monkeypatch.setattr(Searcher, "_train_epoch", spy)
    s.run_search()
    lrs = [json.loads(line)["lr"] for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert seen == lrs and seen[0] == 0.05 and seen[1] < 0.05


def test_evaluation_runs_in_eval_mode_and_restores_training(tmp_path, monkeypatch):
    s = Searcher(_cfg(tmp_path / "r"))
    modes = []
    real_forward = type(s.model).forward

    def spy(self, x):
        modes.append(self.training)
        return real_forward(self, x)

    monkeypatch.setattr(type(s.model), "forward", spy)
    s.evaluate(s.eval_stream, 0)
    assert modes and not any(modes)
    assert s.model.training
