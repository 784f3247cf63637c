"""The two steps every rmt plot shares: getting pyplot without a display, and saving a figure safely.

- `pyplot()`: `matplotlib.pyplot` on the non-interactive Agg backend. matplotlib is imported here, on first use,
  because importing it costs about a second and most commands draw nothing.
- `save_figure(figure, path)`: lays the figure out, renders it in memory and writes the file atomically (the old
  plot stays whole if rendering fails or the process dies), then closes the figure so that long benchmark loops do
  not accumulate open figures.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rmt.files import write_atomic

if TYPE_CHECKING:
    from matplotlib.figure import Figure

FIGURE_DPI = 120


def pyplot() -> Any:
    """`matplotlib.pyplot`, with the Agg backend selected before its first import."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(figure: Figure, path: str | os.PathLike) -> None:
    """Tight layout, then `path` (format from its suffix, parent folders created) written atomically; the figure is
    closed afterwards, also when saving fails."""
    path = Path(path)
    try:
        figure.tight_layout()
        buffer = io.BytesIO()
        figure.savefig(buffer, format=path.suffix.lstrip(".") or "png", dpi=FIGURE_DPI)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, buffer.getvalue())
    finally:
        pyplot().close(figure)
