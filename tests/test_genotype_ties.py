"""Genotype derivation on exact ties (DARTS's parse: sorted() is stable, so among incoming edges of
equal strength the lower input index is kept first; on an edge the first of equal ops wins).

tests/test_genotype.py's hand-built weights have a random floor, so no two edges ever tie there:
a derivation that broke ties toward the later input passed them."""
import torch

from ndarts.genotype import derive_cell
from ndarts.operations import DARTS_PRIMITIVES, NOISYDARTS_PRIMITIVES


def test_equal_edges_keep_the_lower_inputs_in_order():
    p = NOISYDARTS_PRIMITIVES
    w = torch.full((14, len(p)), 0.1)  # every edge, every op: one exact tie everywhere
    cell = derive_cell(w, p, 4)
    assert [j for _, j in cell] == [0, 1, 0, 1, 0, 1, 0, 1]
    assert all(op == p[0] for op, _ in cell)  # the first op of equal weights


def test_a_tie_below_the_strongest_edge_goes_to_the_lower_input(fresh_seed):
    p = DARTS_PRIMITIVES
    w = torch.rand(14, len(p)) * 0.01
    w[:, p.index("none")] = 0.9  # never counts
    # node 5 (edges 9..13, inputs 0..4): input 3 strongest, inputs 1 and 4 tie for second
    w[12, p.index("sep_conv_3x3")] = 0.8
    w[10, p.index("dil_conv_3x3")] = 0.5
    w[13, p.index("max_pool_3x3")] = 0.5
    cell = derive_cell(w, p, 4)
    assert cell[6:] == (("sep_conv_3x3", 3), ("dil_conv_3x3", 1))


def test_concat_is_the_last_multiplier_nodes(fresh_seed):
    """derive_genotype's concat follows the cell's: its last `multiplier` nodes (DARTS's
    range(2 + steps - multiplier, steps + 2)), not always 2..steps+1."""
    from ndarts.genotype import derive_genotype

    p = NOISYDARTS_PRIMITIVES
    w = torch.softmax(torch.randn(14, len(p)), -1)
    g = derive_genotype(w, w, p, steps=4, multiplier=3)
    assert g.normal_concat == g.reduce_concat == (3, 4, 5)
    assert derive_genotype(w, w, p, steps=4, multiplier=4).normal_concat == (2, 3, 4, 5)
