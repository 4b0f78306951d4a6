"""Figure helpers shared by the report's plots: Agg-backed figures (no pyplot global state, safe
in servers and threads), PNG saving, stable colours per site and per class."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

__all__ = ["color_cycle", "new_figure", "save_figure"]


def new_figure(ncols: int = 1, nrows: int = 1, panel_size: tuple[float, float] = (5.0, 4.0)) -> tuple[Figure, list[Axes]]:
    """A figure with an Agg canvas and ``nrows × ncols`` axes, returned flat in row-major order."""
    fig = Figure(figsize=(panel_size[0] * ncols, panel_size[1] * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, list(np.asarray(axes).reshape(-1))


def save_figure(fig: Figure, path: str | Path, dpi: int = 100) -> Path:
    """Write ``fig`` as PNG to ``path`` (parent folders created) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=dpi)
    return path


def color_cycle(names: Sequence[str]) -> dict[str, tuple[float, float, float, float]]:
    """One colour per name, in order (tab10, then tab20 beyond ten names)."""
    from matplotlib import colormaps

    cmap = colormaps["tab10" if len(names) <= 10 else "tab20"]
    return {name: cmap(i % cmap.N) for i, name in enumerate(names)}
