"""The second-order step's virtual (unrolled) model w' runs its
validation forward on its own copy of the BatchNorm running statistics (DARTS builds a new model),
so the real model's buffers are moved only by forwards of the real model."""
import copy

import torch

from ndarts import DARTS_PRIMITIVES, NoiseConfig
from ndarts.architect import Architect
from ndarts.search_model import SearchNetwork


def test_the_virtual_forward_leaves_the_real_batchnorm_buffers(fresh_seed):
    net = SearchNetwork(C=2, num_classes=5, layers=3, primitives=DARTS_PRIMITIVES,
                        noise=NoiseConfig(kind="none"), in_channels=2).double()
    crit = torch.nn.CrossEntropyLoss()
    w_opt = torch.optim.SGD(net.weight_parameters(), 0.05, momentum=0.9, weight_decay=3e-4)
    a_opt = torch.optim.Adam(net.arch_parameters(), 3e-4)
    arch = Architect(net, a_opt, w_opt, crit, "second")
    x, y = torch.randn(4, 2, 6, 6, dtype=torch.float64), torch.randint(5, (4,))
    xv, yv = torch.randn(4, 2, 6, 6, dtype=torch.float64) + 3.0, torch.randint(5, (4,))
    # without the Hessian term's two forwards at w ± R·v, the only real-model forward in the step
    # is the one on the training batch at w that makes ∇_w L_train for w'
    arch.hessian_vector_product = lambda vector, *a, **k: [torch.zeros_like(t) for t in arch.alphas]
    ref = copy.deepcopy(net)
    with torch.no_grad():
        ref(x)
    arch.step(x, y, xv, yv, 0.05)
    want = dict(ref.named_buffers())
    got = dict(net.named_buffers())
    assert want.keys() == got.keys() and any("running_mean" in n for n in got)
    for n, b in got.items():
        torch.testing.assert_close(b, want[n], rtol=1e-12, atol=1e-12, msg=n)
