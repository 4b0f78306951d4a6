"""t-SNE maps of embeddings (van der Maaten & Hinton, JMLR 2008; scikit-learn's ``TSNE``),
coloured by site and by label: the picture that shows whether the encoder separates sites
(a site effect) more than it separates labels.

UMAP is not used: umap-learn is not a project dependency.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from fedecho.report.figure import color_cycle, new_figure

__all__ = ["MIN_TSNE_POINTS", "plot_tsne", "tsne_embedding"]

#: fewer points than this give no meaningful neighbourhoods
MIN_TSNE_POINTS = 5


def tsne_embedding(
    embeddings: np.ndarray, seed: int = 0, max_points: int = 2000, threads: int | None = 1
) -> tuple[np.ndarray, np.ndarray]:
    """2-D t-SNE coordinates (M, 2) of ``embeddings`` (N, D) and the row indices (M,) they belong to.

    Above ``max_points`` rows, a subset of ``max_points`` is drawn with ``np.random.default_rng(seed)``
    (t-SNE cost grows with N). Perplexity is ``min(30, (M - 1) / 3)`` (it must stay below M).
    Deterministic for a seed. ValueError below :data:`MIN_TSNE_POINTS` rows.

    ``threads`` caps the OpenMP/BLAS threads (None: the library default). One thread is the
    default because scikit-learn's Barnes–Hut t-SNE spin-waits its threads: on a busy 2-core
    machine 500 points took 21.9 s with the default threads and 2.4 s with one.
    """
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    x = np.asarray(embeddings, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"embeddings must have shape (N, D), got {x.shape}")
    if len(x) < MIN_TSNE_POINTS:
        raise ValueError(f"t-SNE needs at least {MIN_TSNE_POINTS} embeddings, got {len(x)}")
    rng = np.random.default_rng(seed)
    index = np.sort(rng.choice(len(x), max_points, replace=False)) if len(x) > max_points else np.arange(len(x))
    perplexity = min(30.0, (len(index) - 1) / 3)
    with threadpool_limits(limits=threads):
        coords = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(x[index])
    return coords, index


def plot_tsne(
    embeddings: np.ndarray,
    labels: np.ndarray,
    sites: np.ndarray | None = None,
    *,
    label_name: str = "label",
    seed: int = 0,
    max_points: int = 2000,
) -> Figure:
    """t-SNE of ``embeddings`` (N, D) in two panels, coloured by site (``sites`` (N,) str) and by
    label (``labels`` (N,): strings -> one colour per class; numbers -> a colour scale, e.g. EF %).
    Without ``sites`` only the label panel is drawn.
    """
    coords, index = tsne_embedding(embeddings, seed=seed, max_points=max_points)
    labels = np.asarray(labels)[index]
    panels: list[tuple[str, np.ndarray]] = []
    if sites is not None:
        panels.append(("site", np.asarray(sites).astype(str)[index]))
    panels.append((label_name, labels))
    fig, axes = new_figure(ncols=len(panels), panel_size=(5.0, 4.5))
    for ax, (title, values) in zip(axes, panels, strict=True):
        if values.dtype.kind in "fiu" and title != "site":
            points = ax.scatter(coords[:, 0], coords[:, 1], c=values.astype(np.float64), cmap="viridis", s=12)
            fig.colorbar(points, ax=ax, shrink=0.8, label=label_name)
        else:
            _categorical(ax, coords, values.astype(str))
        ax.set_title(f"t-SNE by {title} (n = {len(coords)})")
        ax.set_xticks([])
        ax.set_yticks([])
    return fig


def _categorical(ax: Axes, coords: np.ndarray, values: np.ndarray) -> None:
    categories: Sequence[str] = sorted(set(values.tolist()))
    colors = color_cycle(categories)
    for category in categories:
        chosen = values == category
        ax.scatter(coords[chosen, 0], coords[chosen, 1], s=12, color=colors[category], label=category, alpha=0.8)
    ax.legend(fontsize="x-small", markerscale=1.5, loc="best")
