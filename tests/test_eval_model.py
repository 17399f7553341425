"""The DARTS evaluation networks built from genotypes: structure, sizes, small and odd inputs."""
import pytest
import torch

from ndarts.eval_model import (AuxiliaryHeadCIFAR, Cell, NetworkCIFAR, NetworkImageNet, build_network,
                               count_parameters, drop_path)
from ndarts.genotype import Genotype, zoo
from ndarts.operations import FactorizedReduce, Identity, ReLUConvBN


ZOO = zoo()


@pytest.mark.parametrize("name", sorted(ZOO))
def test_every_zoo_genotype_trains_forward_backward(name, fresh_seed):
    model = NetworkCIFAR(4, 10, 4, auxiliary=True, genotype=ZOO[name], in_channels=1, drop_path_prob=0.2)
    model.train()
    x = torch.randn(3, 1, 8, 8)
    logits, aux = model(x)
    assert logits.shape == (3, 10) and aux.shape == (3, 10)
    loss = torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1, 2])) + 0.4 * aux.square().mean()
    loss.backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0
    model.eval()
    with torch.no_grad():
        logits_eval, aux_eval = model(x)
    assert aux_eval is None and torch.isfinite(logits_eval).all()


@pytest.mark.parametrize("size", [3, 7, 9])
@pytest.mark.parametrize("name", ["DARTS_V2", "NoisyDARTS-a"])
def test_odd_and_small_inputs(name, size):
    model = NetworkCIFAR(4, 5, 4, auxiliary=True, genotype=ZOO[name], in_channels=2, drop_path_prob=0.1)
    logits, aux = model(torch.randn(2, 2, size, size + 1))
    assert logits.shape == (2, 5) and aux.shape == (2, 5)
    (logits.sum() + aux.sum()).backward()


def test_imagenet_network_small_and_large_inputs():
    model = NetworkImageNet(8, 7, 5, auxiliary=True, genotype=ZOO["DARTS_V2"])
    for size in (16, 33):
        logits, aux = model(torch.randn(2, 3, size, size))
        assert logits.shape == (2, 7) and aux.shape == (2, 7)


def test_darts_v2_cifar_param_count_is_published_3_3m():
    model = NetworkCIFAR(36, 10, 20, auxiliary=True, genotype=ZOO["DARTS_V2"])
    params = count_parameters(model)
    assert 3.2e6 <= params <= 3.45e6, params  # DARTS: 3.3 M (its own count_parameters_in_MB gives 3.349)
    assert count_parameters(model, include_auxiliary=True) > params + 0.4e6  # the tower is real and excluded
    assert count_parameters(NetworkCIFAR(36, 10, 20, False, ZOO["DARTS_V2"])) == params


def test_darts_v2_imagenet_param_count_is_published_4_7m():
    model = NetworkImageNet(48, 1000, 14, auxiliary=True, genotype=ZOO["DARTS_V2"])
    assert 4.6e6 <= count_parameters(model) <= 4.8e6  # DARTS: 4.7 M


def test_structure_matches_darts():
    g = ZOO["DARTS_V2"]
    model = NetworkCIFAR(8, 10, 8, auxiliary=True, genotype=g)
    reductions = [i for i, c in enumerate(model.cells) if c.reduction]
    assert reductions == [8 // 3, 2 * 8 // 3]
    assert model.stem[0].out_channels == 3 * 8
    # preprocess0 is FactorizedReduce exactly after a reduction cell
    for i, cell in enumerate(model.cells):
        after_reduction = i - 1 in reductions
        assert isinstance(cell.preprocess0, FactorizedReduce if after_reduction else ReLUConvBN)
    # the tower reads the output of cell 2·layers//3: C·4·4 channels (C doubled twice, 4 nodes)
    assert model.auxiliary_head.features[2].in_channels == 8 * 4 * 4
    # ops affine, stride 2 only on a reduction cell's edges from the cell inputs
    red = model.cells[reductions[0]]
    for op, (name, j) in zip(red._ops, g.reduce):
        if name == "skip_connect":
            assert isinstance(op, FactorizedReduce if j < 2 else Identity)
    assert all(m.affine for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))


def test_auxiliary_head_uses_darts_pooling_on_8x8():
    head = AuxiliaryHeadCIFAR(6, 4)
    x = torch.randn(2, 6, 8, 8)
    seen = {}

    def record(module, inputs, output):
        seen["shape"] = output.shape

    head.features[1].register_forward_hook(record)
    head(x)
    assert seen["shape"][-2:] == (2, 2)  # DARTS's AvgPool2d(5, stride 3) on its intended map
    seen.clear()
    head(torch.randn(2, 6, 2, 2))  # adaptive pooling elsewhere: the DARTS pool is not called
    assert not seen


def test_drop_path_only_in_training_and_not_on_identity(fresh_seed):
    x = torch.randn(4000, 1, 1, 1).abs() + 1
    y = drop_path(x, 0.3)
    dropped = (y == 0).float().mean()
    assert 0.25 < dropped < 0.35
    assert torch.allclose(y[y != 0], x[y != 0] / 0.7)
    # a cell whose every edge is a skip connection is untouched by drop-path
    g = Genotype(normal=(("skip_connect", 0), ("skip_connect", 1)) * 2, normal_concat=(2, 3),
                 reduce=(("skip_connect", 0), ("skip_connect", 1)) * 2, reduce_concat=(2, 3))
    cell = Cell(g, 4, 4, 4, reduction=False, reduction_prev=False).train()
    s0, s1 = torch.randn(8, 4, 5, 5), torch.randn(8, 4, 5, 5)
    torch.manual_seed(0)
    a = cell(s0, s1, 0.0)
    torch.manual_seed(0)
    b = cell(s0, s1, 0.9)
    assert torch.equal(a, b)


def test_build_network_rejects_unknown():
    with pytest.raises(ValueError, match="unknown network"):
        build_network("resnet", ZOO["DARTS_V2"], 4, 10, 3, False)
