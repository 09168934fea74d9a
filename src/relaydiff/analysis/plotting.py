"""matplotlib figures: the one way they are made and written (Agg backend, atomic PNG), and the
loss curves of training runs."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..io.files import atomic_writer

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def new_figure(**kwargs: Any) -> tuple[Figure, Any]:
    """``plt.subplots(**kwargs)`` on the file-only Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(**kwargs)


def save_figure(fig: Figure, path: str | Path) -> None:
    """Lay out ``fig``, write it as a PNG atomically (:func:`relaydiff.io.files.atomic_writer`)
    and close it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    with atomic_writer(path) as f:
        fig.savefig(f, format="png")
    plt.close(fig)


def plot_loss_curves(curves: Mapping[str, Sequence[tuple[int, float]]]) -> Figure:
    """One panel per training run (name → ``(images seen, loss)`` points), side by side with
    their own axes: stages differ in loss scale and in images seen. A run without logged points
    still gets its panel, saying so."""
    fig, axes = new_figure(ncols=len(curves), figsize=(4.2 * len(curves), 3.4), dpi=120,
                           squeeze=False)
    for ax, (name, points) in zip(axes[0], curves.items(), strict=True):
        ax.set_title(name)
        ax.set_xlabel("training images seen")
        ax.set_ylabel("loss (λ-weighted, mean per pixel)")
        ax.grid(alpha=0.3)
        if points:
            x, y = zip(*points, strict=True)
            ax.plot(x, y, marker="." if len(points) < 20 else None)
            ax.set_yscale("log")
        else:
            ax.text(0.5, 0.5, "no loss logged yet", ha="center", va="center",
                    transform=ax.transAxes)
    return fig
