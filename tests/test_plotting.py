"""rmt.plotting: figures are written whole or not at all, and closed either way."""

from __future__ import annotations

import pytest

from rmt.plotting import pyplot, save_figure


def test_save_figure_writes_a_png_in_a_new_folder_and_closes_the_figure(tmp_path):
    plt = pyplot()
    figure, axes = plt.subplots()
    axes.plot([0, 1], [1, 0])
    path = tmp_path / "nested" / "curve.png"
    save_figure(figure, path)
    assert path.read_bytes().startswith(b"\x89PNG")
    assert not plt.fignum_exists(figure.number)
    assert [p.name for p in path.parent.iterdir()] == ["curve.png"]


def test_a_failed_save_keeps_the_old_plot_and_closes_the_figure(tmp_path):
    plt = pyplot()
    path = tmp_path / "curve.png"
    path.write_bytes(b"old plot")
    figure, axes = plt.subplots()
    axes.set_title("$\\unknowncommand$")  # mathtext fails only when the figure is rendered
    with pytest.raises(ValueError):
        save_figure(figure, path)
    assert path.read_bytes() == b"old plot"
    assert not plt.fignum_exists(figure.number)
    assert [p.name for p in tmp_path.iterdir()] == ["curve.png"]
