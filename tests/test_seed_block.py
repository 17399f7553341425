"""SeedBlock: the Philox seeds of a forward pass's fused sums, drawn in one kernel."""
import pytest
import torch

from ndarts import DARTS_PRIMITIVES, NoiseConfig
from ndarts import mixed_op as mixed_op_module
from ndarts.fused_sum import SEED_HIGH, SeedBlock
from ndarts.search_model import SearchNetwork


def test_takes_distinct_views_then_draws_a_new_block(fresh_seed):
    block = SeedBlock("cpu", 3)
    first = block.seeds
    taken = [block.take() for _ in range(3)]
    assert all(t.shape == (1,) and t.dtype == torch.int64 for t in taken)
    # views of the block, in order: no kernel per seed
    assert [t.data_ptr() for t in taken] == [first.data_ptr() + 8 * i for i in range(3)]
    fourth = block.take()
    assert block.seeds is not first and fourth.data_ptr() == block.seeds.data_ptr()
    values = torch.cat([first, block.seeds])
    assert bool(((values >= 0) & (values < SEED_HIGH)).all())


def test_bad_size_is_clear():
    with pytest.raises(ValueError, match="size"):
        SeedBlock("cpu", 0)


def _randint_calls(net, x) -> int:
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        net(x)
    return sum(1 for e in prof.events() if e.name == "aten::randint")


@pytest.mark.parametrize("share_node_ops", [True, False])
@pytest.mark.parametrize("position", ["output", "input"])
def test_one_draw_per_training_forward_and_a_distinct_seed_per_sum(monkeypatch, share_node_ops, position):
    net = SearchNetwork(C=4, num_classes=5, layers=3, primitives=DARTS_PRIMITIVES, fused=True,
                        noise=NoiseConfig(reduction_position=position), share_node_ops=share_node_ops)
    x = torch.randn(2, 3, 8, 8)
    seeds = []
    real = mixed_op_module.noisy_mixed_sum

    def recording(*args, seed=None, **kwargs):
        seeds.append(seed)
        return real(*args, seed=seed, **kwargs)

    monkeypatch.setattr(mixed_op_module, "noisy_mixed_sum", recording)
    assert _randint_calls(net, x) == 1
    edges = sum(len(c._ops) for c in net.cells)
    # the paper's variant adds a noisy sum on the input of each reduction edge's FactorizedReduce
    extra = sum(op.stride == 2 for c in net.cells for op in c._ops) if position == "input" else 0
    assert len(seeds) == edges + extra
    assert all(s is not None for s in seeds)
    values = torch.cat(seeds)
    assert len(set(values.tolist())) == len(seeds)  # every sum its own noise stream
    net.eval()
    assert _randint_calls(net, x) == 0  # no noise in eval: no seeds at all


def test_same_torch_seed_same_noise_other_seed_other_noise():
    torch.manual_seed(0)
    net = SearchNetwork(C=4, num_classes=5, layers=3, fused=True, noise=NoiseConfig(lam=1.0))
    x = torch.randn(2, 3, 8, 8)
    outs = []
    for seed in (7, 7, 8):
        torch.manual_seed(seed)
        with torch.no_grad():
            outs.append(net(x))
    torch.testing.assert_close(outs[1], outs[0], atol=0, rtol=0)
    assert (outs[2] - outs[0]).abs().max() > 1e-4
