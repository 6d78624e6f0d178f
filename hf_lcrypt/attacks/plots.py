"""PNG figures of the attack reports: accuracy curves and labelled image grids (matplotlib without pyplot, so that
no display or global figure state is involved)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from .cipher_attacks import _hwc


def plot_image_grid(
    rows: Mapping[str, Sequence[np.ndarray]], path: str | os.PathLike, title: str | None = None
) -> Path:
    """Save a grid of images, one labelled row per entry (e.g. plain / encrypted / jigsaw), as a PNG."""
    from matplotlib.figure import Figure

    ncols = max(len(images) for images in rows.values())
    fig = Figure(figsize=(2.2 * ncols, 2.2 * len(rows) + (0.4 if title else 0)), layout="constrained")
    axes = fig.subplots(len(rows), ncols, squeeze=False)
    for ax_row, (label, images) in zip(axes, rows.items(), strict=True):
        for col, ax in enumerate(ax_row):
            ax.set_xticks([])
            ax.set_yticks([])
            if col < len(images):
                image = _hwc(images[col])
                ax.imshow(image[:, :, 0] if image.shape[2] == 1 else image, cmap="gray", vmin=0, vmax=255)
            else:
                ax.set_axis_off()
        ax_row[0].set_ylabel(label)
    if title:
        fig.suptitle(title)
    path = Path(path)
    fig.savefig(path, dpi=100)
    return path


def plot_curves(
    series: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    xlabel: str,
    ylabel: str,
    title: str,
    path: str | os.PathLike,
    xscale: str = "linear",
) -> Path:
    """Save metric-vs-strength curves, one line per named (xs, ys) series, as a PNG (`xscale` "symlog" for counts
    that span decades from 0)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4), layout="constrained")
    ax = fig.subplots()
    # Dashes and shrinking markers keep series that coincide (a keyed model and its plain twin) all visible.
    for i, (name, (xs, ys)) in enumerate(series.items()):
        ax.plot(xs, ys, marker="o", markersize=7 - 2 * (i % 3), linestyle=("-", "--", ":")[i % 3], label=name)
    ax.set_xscale(xscale)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if series:
        ax.legend()
    path = Path(path)
    fig.savefig(path, dpi=100)
    return path
