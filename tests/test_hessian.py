"""The power-iteration Hessian eigenvalue (ndarts.hessian) against the exact one on a tiny network.

Reference mixed ops: exact HVPs (double backward), compared on the real DARTS space (ReLU,
max-pool). Fused mixed ops have no double backward: there ndarts.hessian takes central differences
of ∇_α L (step 1e-3), and a ReLU or max-pool switching inside that step makes the quotient jump
while the exact Hessian ignores the kink; so the fused case is compared on a network whose loss is
smooth in α (ReLUs replaced by Softplus, no max-pool).
"""
import pytest
import torch
import torch.nn as nn
from torch.func import functional_call

from ndarts.hessian import dominant_eigenvalue
from ndarts.noise import NoiseConfig
from ndarts.operations import DARTS_PRIMITIVES
from ndarts.search_model import SearchNetwork


SMOOTH_PRIMITIVES = ("avg_pool_3x3", "skip_connect", "sep_conv_3x3", "dil_conv_3x3")


def search_network(smooth: bool, fused: bool):
    model = SearchNetwork(C=2, num_classes=3, layers=3, primitives=SMOOTH_PRIMITIVES if smooth else DARTS_PRIMITIVES,
                          steps=2, multiplier=2, in_channels=1, noise=NoiseConfig(kind="none"),
                          fused=fused, backend="torch",
                          # the smooth variant swaps the ops' ReLU modules for Softplus: no shared F.relu
                          share_node_ops=not smooth).double()
    if not smooth:
        return model
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.ReLU):
                setattr(parent, name, nn.Softplus())
    assert not any(isinstance(m, nn.ReLU) for m in model.modules())
    return model


def exact_hessian(model, criterion, x, y):
    """Full Hessian of L(x, y) w.r.t. the flattened (alphas_normal, alphas_reduce), train mode."""
    an, ar = model.alphas_normal, model.alphas_reduce
    params = {n: p.detach() for n, p in model.named_parameters() if not n.startswith("alphas_")}
    buffers = {n: b.clone() for n, b in model.named_buffers()}  # train-mode BN updates copies only

    def loss(flat):
        a, b = flat[:an.numel()].view_as(an), flat[an.numel():].view_as(ar)
        out = functional_call(model, {**params, **buffers, "alphas_normal": a, "alphas_reduce": b}, (x,))
        return criterion(out, y)

    flat = torch.cat([an.detach().flatten(), ar.detach().flatten()])
    return torch.autograd.functional.hessian(loss, flat)


@pytest.mark.parametrize("smooth,seed", [(True, 0), (True, 1), (False, 0), (False, 1)])
def test_dominant_eigenvalue_matches_exact(smooth, seed):
    """smooth: fused ops, finite-difference HVPs; else reference ops, exact HVPs, real DARTS space."""
    torch.manual_seed(seed)
    model = search_network(smooth, fused=smooth)
    with torch.no_grad():  # away from the uniform point, so the Hessian has structure
        for a in model.arch_parameters():
            a.normal_(0.0, 0.5)
    model.train()
    x = torch.randn(4, 1, 4, 4, dtype=torch.float64)
    y = torch.randint(0, 3, (4,))
    criterion = nn.CrossEntropyLoss()

    twin = search_network(smooth, fused=False)  # the fused op has no double backward
    twin.load_state_dict(model.state_dict())
    twin.train()
    H = exact_hessian(twin, criterion, x, y)
    assert torch.allclose(H, H.T, atol=1e-8)
    evals = torch.linalg.eigvalsh(H)
    by_magnitude = evals[evals.abs().argsort(descending=True)]
    exact = float(by_magnitude[0])
    assert abs(exact) > 1e-4  # a non-trivial Hessian

    buffers_before = [b.clone() for b in model.buffers()]
    alphas_before = [a.detach().clone() for a in model.arch_parameters()]
    approx = dominant_eigenvalue(model, criterion, x, y, iters=200, tol=1e-8, seed=seed)
    assert approx == pytest.approx(exact, rel=2e-3), (approx, by_magnitude[:3].tolist())
    # measuring leaves α and the BatchNorm statistics as they were
    assert all(torch.equal(a, b) for a, b in zip(model.arch_parameters(), alphas_before))
    assert all(torch.equal(a, b) for a, b in zip(model.buffers(), buffers_before))


def test_search_logs_the_eigenvalue_and_counts_its_time_in_the_epoch(tmp_path, monkeypatch, capsys):
    """--hessian-every: the eigenvalue on the epoch's log line (and log.txt), not only in
    metrics.jsonl, and the epoch's seconds include the measurement (made to take ≥ 0.5 s here)."""
    import json
    import time

    import ndarts.hessian
    from ndarts.search import main

    real = ndarts.hessian.dominant_eigenvalue

    def slow(*args, **kwargs):
        value = real(*args, **kwargs)
        time.sleep(0.5)
        return value

    monkeypatch.setattr(ndarts.hessian, "dominant_eigenvalue", slow)
    out = tmp_path / "run"
    main(["--layers", "3", "--init-channels", "4", "--batch-size", "16", "--max-steps", "2", "--report-freq", "0",
          "--epochs", "1", "--hessian-every", "1", "--out", str(out)])
    (record,) = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert record["hessian_seconds"] >= 0.5 and record["seconds"] >= record["hessian_seconds"]
    shown = f"hessian eigenvalue {record['hessian_eigenvalue']:.4g} ({record['hessian_seconds']:.1f}s)"
    (epoch_line,) = [line for line in (out / "log.txt").read_text().splitlines() if " epoch 1/1 " in line]
    assert shown in epoch_line and epoch_line.endswith(f"| {record['seconds']:.1f}s")
    assert shown in capsys.readouterr().out


@pytest.mark.parametrize("fused", [False, True])
def test_measuring_leaves_the_rng_as_it_found_it(fused):
    """The measurement's forwards draw ε (reference ops) or Philox seeds (fused ops) even at noise
    scale 0: the monitor must give them back, or the search it watches takes other steps."""
    torch.manual_seed(0)
    model = SearchNetwork(C=2, num_classes=3, layers=3, primitives=DARTS_PRIMITIVES, steps=2, multiplier=2,
                          in_channels=1, noise=NoiseConfig(), fused=fused, backend="torch")
    x, y = torch.randn(4, 1, 4, 4), torch.randint(0, 3, (4,))
    before = torch.get_rng_state()
    dominant_eigenvalue(model, nn.CrossEntropyLoss(), x, y, iters=2)
    assert torch.equal(torch.get_rng_state(), before)


def test_a_search_with_the_measurement_takes_the_same_steps(tmp_path):
    """--hessian-every only watches: α, the losses and the genotype are bitwise those of a search
    without it (3 epochs, so the measurement sits between epochs that go on drawing noise)."""
    import json

    from ndarts.search import main

    runs = []
    for name, extra in (("plain", []), ("watched", ["--hessian-every", "1"])):
        out = tmp_path / name
        main(["--layers", "3", "--init-channels", "4", "--batch-size", "16", "--max-steps", "2", "--report-freq", "0",
              "--epochs", "3", "--seed", "2", "--out", str(out), *extra])
        records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        runs.append(([{k: v for k, v in r.items() if k.startswith(("alphas", "train_", "val_", "genotype"))}
                      for r in records], (out / "genotype.json").read_text()))
    assert "hessian_eigenvalue" in records[-1]
    assert runs[0] == runs[1]


def test_measuring_on_an_image_folder_stream_leaves_the_rng(tmp_path):
    """An image folder's DataLoader and its random crops draw from torch's RNG: measure_on_stream
    fetches the batch inside the forked RNGs too."""
    import numpy as np
    from PIL import Image

    from ndarts.data import BatchStream, load_dataset
    from ndarts.hessian import measure_on_stream

    for cls in ("a", "b", "c"):
        (tmp_path / "train" / cls).mkdir(parents=True)
        Image.fromarray(np.zeros((6, 6, 3), np.uint8)).save(tmp_path / "train" / cls / "0.png")
    spec = load_dataset("imagefolder", str(tmp_path), image_size=4)
    model = SearchNetwork(C=2, num_classes=3, layers=3, primitives=DARTS_PRIMITIVES, steps=2, multiplier=2,
                          in_channels=3, noise=NoiseConfig(), backend="torch")
    before = torch.get_rng_state()
    measure_on_stream(model, nn.CrossEntropyLoss(), BatchStream(spec.train, range(3), 3, 0, 1), "cpu", iters=1)
    assert torch.equal(torch.get_rng_state(), before)
