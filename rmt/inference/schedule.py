"""The diagonal schedule of ARMT inference: which (segment, layer) cells can run together.

Cell (s, l) needs cell (s, l - 1) (its input hidden states) and cell (s - 1, l) (layer l's memory after segment
s - 1). Every cell on an anti-diagonal s + l = t depends only on cells of diagonal t - 1, so the S x L grid runs in
L + S - 1 steps instead of S * L: step t holds the cells (t - l, l) for the layers l that have a segment there.
"""

from __future__ import annotations

from rmt.errors import InputError


def layer_range(step: int, num_segments: int, num_layers: int) -> tuple[int, int]:
    """The layers [lo, hi) active at `step`: a contiguous range, layer l working on segment step - l."""
    return max(0, step - num_segments + 1), min(step, num_layers - 1) + 1


def diagonal_schedule(num_segments: int, num_layers: int) -> list[list[tuple[int, int]]]:
    """For each of the num_layers + num_segments - 1 steps, its (segment, layer) cells, in increasing layer order."""
    if num_segments < 1 or num_layers < 1:
        raise InputError(f"need num_segments >= 1 and num_layers >= 1, got {num_segments}, {num_layers}")
    steps = []
    for step in range(num_segments + num_layers - 1):
        lo, hi = layer_range(step, num_segments, num_layers)
        steps.append([(step - layer, layer) for layer in range(lo, hi)])
    return steps
