"""The second-order step's virtual (unrolled) model w' runs its
validation forward on its own copy of the BatchNorm running statistics (DARTS builds a new model),
so the real model's buffers are moved only by forwards of the real model."""
import copy

import torch

from ndarts import DARTS_PRIMITIVES
from ndarts.architect import Architect
from tiny_search import tiny_batch, tiny_search_parts


def test_the_virtual_forward_leaves_the_real_batchnorm_buffers(fresh_seed):
    net, crit, w_opt = tiny_search_parts(primitives=DARTS_PRIMITIVES)
    a_opt = torch.optim.Adam(net.arch_parameters(), 3e-4)
    arch = Architect(net, a_opt, w_opt, crit, "second")
    (x, y), (xv, yv) = tiny_batch(), tiny_batch(shift=3.0)
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
