"""Curves drawn as an IMAGE the node previews: loss curves (VE_PlotLoss), per-frame metrics (VE_EditMetrics)."""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image, ImageDraw

WIDTH, HEIGHT, MARGIN = 640, 360, 48
COLOURS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14)]


def plot_curves(curves: dict[str, list[float]], axis: str, legend: list[str] | None = None) -> torch.Tensor:
    """A white ``HEIGHT x WIDTH`` plot, as a one-image IMAGE batch, of each curve against its index (1..n, named
    ``axis``), with the value range and a legend: each curve's last value, or the given ``legend`` lines."""
    image = Image.new("RGB", (WIDTH, HEIGHT), "white")
    draw = ImageDraw.Draw(image)
    values = [v for curve in curves.values() for v in curve if math.isfinite(v)] or [0.0]
    low, high = min(values), max(values)
    span = (high - low) or max(abs(high), 1.0)  # a flat curve is drawn mid-height
    steps = max(len(curve) for curve in curves.values())
    left, top, right, bottom = MARGIN, 16, WIDTH - 16, HEIGHT - MARGIN // 2

    def point(i, v):
        x = left + (right - left) * (i / (steps - 1) if steps > 1 else 0.5)
        y = bottom - (bottom - top) * ((v - low) / span if high > low else 0.5)
        return x, y

    draw.line([(left, top), (left, bottom), (right, bottom)], fill="black", width=1)
    draw.text((4, top), f"{high:.4g}", fill="black")
    draw.text((4, bottom - 10), f"{low:.4g}", fill="black")
    draw.text(((left + right) // 2 - 30, bottom + 6), f"{axis} (1..{steps})", fill="black")
    for k, (name, curve) in enumerate(curves.items()):
        colour = COLOURS[k % len(COLOURS)]
        points = [point(i, v) for i, v in enumerate(curve) if math.isfinite(v)]  # NaN: a masked step
        if len(points) > 1:
            draw.line(points, fill=colour, width=2)
        for x, y in points[-1:] if len(points) > 1 else points:
            draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colour)
        label = legend[k] if legend else f"{name}: {curve[-1]:.4g}"
        draw.text((right - 6 * len(label) - 8, top + 14 * k), label, fill=colour)
    return torch.from_numpy(np.array(image)).float().div(255.0)[None]
