"""rmt.plotting: figures are written whole or not at all, and closed either way; the by-length plots draw partial
results without warnings."""

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


def test_by_length_plots_with_a_task_not_run_yet_give_no_warning(tmp_path):
    """Plots are redrawn as cells finish: a task whose panel is still empty must not make matplotlib warn."""
    import warnings

    from rmt.eval.by_length import plot_heatmap, plot_methods

    cells = {f"qa1/{n}/{m}": {"accuracy": 0.5, "ci95": [0.3, 0.7]} for n in ("0k", "1k") for m in ("memory",)}
    results = {"tasks": ["qa1", "qa2"], "lengths": ["0k", "1k"], "methods": ["memory"], "cells": cells}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plot_methods(results, tmp_path / "accuracy.png")
        plot_heatmap({**results, "num_facts": [2, 10]}, "memory", tmp_path / "heatmap.png")
    assert (tmp_path / "accuracy.png").stat().st_size > 0 and (tmp_path / "heatmap.png").stat().st_size > 0
