"""The tiny search network the architect and search-step tests share: C 2, 3 cells, 5 classes,
2-channel 6×6 inputs, no noise, float64 unless asked; its loss and DARTS's w optimizer."""
import torch

from ndarts import NoiseConfig
from ndarts.search_model import SearchNetwork


def tiny_search_parts(dtype=torch.float64, primitives=None, spread_alpha=False):
    """(network, criterion, w optimizer: SGD(0.05, momentum 0.9, wd 3e-4)). primitives: the
    network's default where None; spread_alpha: α drawn from N(0, 0.5²) instead of DARTS's 1e-3 scale,
    so that the ops' weights differ."""
    kw = {} if primitives is None else {"primitives": primitives}
    net = SearchNetwork(C=2, num_classes=5, layers=3, noise=NoiseConfig(kind="none"), in_channels=2, **kw).to(dtype)
    if spread_alpha:
        with torch.no_grad():
            for a in net.arch_parameters():
                a.normal_(0, 0.5)
    crit = torch.nn.CrossEntropyLoss()
    w_opt = torch.optim.SGD(net.weight_parameters(), 0.05, momentum=0.9, weight_decay=3e-4)
    return net, crit, w_opt


def tiny_batch(dtype=torch.float64, shift=0.0):
    """A batch of 4 inputs (plus `shift`) and labels for tiny_search_parts' network."""
    return torch.randn(4, 2, 6, 6, dtype=dtype) + shift, torch.randint(5, (4,))
