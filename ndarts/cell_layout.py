"""Which cells of DARTS's networks (search and evaluation) are reduction cells, and a note for a
network too short to hold a normal cell."""

from __future__ import annotations


def reduction_cells(layers: int) -> set[int]:
    """The cells DARTS's networks make reduction cells (search and evaluation): layers//3 and 2·layers//3."""
    return {layers // 3, 2 * layers // 3}


def no_normal_cell_note(layers: int, consequence: str) -> str | None:
    """A note for a network of fewer than 3 cells: all of them are reduction cells, none is normal."""
    if len(reduction_cells(layers)) < layers:
        return None
    return (f"note: --layers {layers} makes every cell a reduction cell (DARTS's reductions are cells "
            f"layers//3 and 2·layers//3): no normal cell, {consequence}; use --layers 3 or more")
