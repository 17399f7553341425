"""Every BatchNorm of the search network's cells (the preprocessing ReLUConvBN / FactorizedReduce,
the sep/dil convs, the pools' BatchNorms, the grouped stacks) is affine=False (SPEC §2); only the
stem's BatchNorm is affine (DARTS's model_search.py)."""
import pytest
import torch

from ndarts import DARTS_PRIMITIVES, NOISYDARTS_PRIMITIVES
from ndarts.search_model import SearchNetwork


@pytest.mark.parametrize("kw", [dict(fused=False, share_node_ops=False),
                                dict(fused=False, share_node_ops=True, batch_edge_convs=True),
                                dict(fused=True)])
@pytest.mark.parametrize("primitives", [DARTS_PRIMITIVES, NOISYDARTS_PRIMITIVES])
def test_every_cell_batch_norm_is_affine_free(kw, primitives):
    net = SearchNetwork(C=4, num_classes=10, layers=3, primitives=primitives, in_channels=3, **kw)
    cell_bns = [(n, m) for n, m in net.cells.named_modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert cell_bns
    affine = [n for n, m in cell_bns if m.affine or m.weight is not None or m.bias is not None]
    assert not affine, f"affine BatchNorms in the search cells: {affine[:5]}"
    assert all(m.track_running_stats for _, m in cell_bns)
