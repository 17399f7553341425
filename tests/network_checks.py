"""A check shared by the tests that compare two search networks computing the same function."""
import torch


def assert_same_forward_backward(nets, x, out_tol, grad_tol=(1e-5, 1e-4), buffer_tol=None, seed=None):
    """Runs both nets on x, backpropagates logsumexp(out).sum(), and asserts that the second net's
    output, parameter gradients and (with buffer_tol) buffers equal the first's; tolerances are
    (atol, rtol). seed: torch is re-seeded before each net, so that noise draws match."""
    results = []
    for net in nets:
        net.zero_grad(set_to_none=True)
        if seed is not None:
            torch.manual_seed(seed)
        out = net(x)
        out.logsumexp(1).sum().backward()
        params = dict(net.named_parameters())
        # the persistent buffers (BatchNorm statistics), by name
        buffers = [(k, v.clone()) for k, v in net.state_dict().items() if k not in params]
        results.append((out.detach(), [p.grad for p in net.parameters()], buffers))
    (o1, g1, b1), (o2, g2, b2) = results
    torch.testing.assert_close(o2, o1, atol=out_tol[0], rtol=out_tol[1])
    for a, b in zip(g2, g1):
        torch.testing.assert_close(a, b, atol=grad_tol[0], rtol=grad_tol[1])
    if buffer_tol is not None:
        assert [k for k, _ in b2] == [k for k, _ in b1]
        for (name, a), (_, b) in zip(b2, b1):
            torch.testing.assert_close(a, b, atol=buffer_tol[0], rtol=buffer_tol[1], msg=name)


def random_running_stats(net) -> None:
    """Every BatchNorm's running statistics of a SearchNetwork drawn at random, far from (0, 1),
    the pool BatchNorms of the edges leaving one node alike: the states a search makes (those BNs see
    the same input), the only ones a node-sharing network loads (SearchCell._unshareable_pool_stats)."""
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d) and m.track_running_stats:
                m.running_mean.normal_()
                m.running_var.uniform_(0.3, 3.0)
        for cell in net.cells:
            for j in set(cell._sources):
                edges = [op for op, src in zip(cell._ops, cell._sources) if src == j]
                for i in getattr(edges[0], "_pools", ()):
                    first = edges[0]._ops[i][-1]
                    for op in edges[1:]:
                        op._ops[i][-1].running_mean.copy_(first.running_mean)
                        op._ops[i][-1].running_var.copy_(first.running_var)
