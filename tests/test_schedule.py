"""The diagonal schedule as a pure function: coverage, dependencies, step count."""

from __future__ import annotations

import pytest

from rmt.inference.schedule import diagonal_schedule


@pytest.mark.parametrize(("segments", "layers"), [(1, 1), (1, 4), (5, 1), (3, 4), (4, 3), (7, 7), (10, 2)])
def test_every_cell_once_after_its_dependencies(segments, layers):
    steps = diagonal_schedule(segments, layers)
    assert len(steps) == segments + layers - 1
    when = {}
    for t, cells in enumerate(steps):
        assert cells, "no step is empty"
        for cell in cells:
            assert cell not in when, f"{cell} scheduled twice"
            when[cell] = t
            segment, layer = cell
            assert segment + layer == t
    assert set(when) == {(s, layer) for s in range(segments) for layer in range(layers)}
    for (s, layer), t in when.items():
        if layer > 0:
            assert when[(s, layer - 1)] < t  # its input
        if s > 0:
            assert when[(s - 1, layer)] < t  # its layer's memory


def test_cells_of_a_step_are_a_contiguous_layer_range():
    assert diagonal_schedule(3, 4) == [
        [(0, 0)],
        [(1, 0), (0, 1)],
        [(2, 0), (1, 1), (0, 2)],
        [(2, 1), (1, 2), (0, 3)],
        [(2, 2), (1, 3)],
        [(2, 3)],
    ]
    for cells in diagonal_schedule(6, 4):
        layers = [layer for _, layer in cells]
        assert layers == list(range(layers[0], layers[-1] + 1))


def test_rejects_empty_grids():
    with pytest.raises(ValueError):
        diagonal_schedule(0, 3)
