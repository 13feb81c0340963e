"""Curves drawn as an IMAGE the node previews: loss curves (VE Plot Loss), per-frame metrics (VE Edit Metrics), in
type large enough to read at the node's size; and the one-line loss summary the training nodes show."""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

WIDTH, HEIGHT, MARGIN = 640, 360, 96
COLOURS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14)]
TEXT_SIZE = 22  # pixels: the plot is shown about 0.6x in a node, so about 13 px on screen


def text_font() -> ImageFont.ImageFont:
    """A scalable font at TEXT_SIZE (Pillow 10.1 and newer); older Pillow has only its small bitmap font."""
    try:
        return ImageFont.load_default(size=TEXT_SIZE)
    except TypeError:
        return ImageFont.load_default()


def loss_curves(loss: dict) -> dict[str, list[float]]:
    """The curves of a LOSS_MAP worth drawing: every named list of numbers; 'loss' is left out where it only
    repeats another curve (MotionDirector's 'loss' is its temporal loss)."""
    curves = {name: [float(v) for v in values] for name, values in loss.items()
              if isinstance(values, (list, tuple)) and values and all(isinstance(v, (int, float)) for v in values)}
    if "loss" in curves and any(curves["loss"] == v for k, v in curves.items() if k != "loss"):
        del curves["loss"]
    if not curves:
        raise ValueError("loss: no loss values to plot; connect the loss output of VE One-Shot Tune or VE Train "
                         "MotionDirector.")
    return curves



def loss_summary(loss: dict) -> str:
    """Each loss curve's last value and the mean of its last 10 steps, one line."""
    return "; ".join(f"{name}: last {curve[-1]:.4g}, mean of last {min(10, len(curve))} "
                     f"{sum(curve[-10:]) / min(10, len(curve)):.4g}" for name, curve in loss_curves(loss).items())


def plot_curves(curves: dict[str, list[float]], axis: str, legend: list[str] | None = None) -> torch.Tensor:
    """A white ``HEIGHT x WIDTH`` plot, as a one-image IMAGE batch, of each curve against its index (1..n, named
    ``axis``), with the value range and a legend: each curve's last value, or the given ``legend`` lines."""
    image = Image.new("RGB", (WIDTH, HEIGHT), "white")
    draw = ImageDraw.Draw(image)
    font = text_font()
    values = [v for curve in curves.values() for v in curve if math.isfinite(v)] or [0.0]
    low, high = min(values), max(values)
    span = (high - low) or max(abs(high), 1.0)  # a flat curve is drawn mid-height
    steps = max(len(curve) for curve in curves.values())
    left, top, right, bottom = MARGIN, 16, WIDTH - 16, HEIGHT - MARGIN // 2 - 4

    def point(i, v):
        x = left + (right - left) * (i / (steps - 1) if steps > 1 else 0.5)
        y = bottom - (bottom - top) * ((v - low) / span if high > low else 0.5)
        return x, y

    draw.line([(left, top), (left, bottom), (right, bottom)], fill="black", width=1)
    draw.text((4, top), f"{high:.4g}", fill="black", font=font)
    draw.text((4, bottom - TEXT_SIZE), f"{low:.4g}", fill="black", font=font)
    draw.text(((left + right) // 2 - 60, bottom + 8), f"{axis} (1..{steps})", fill="black", font=font)
    for k, (name, curve) in enumerate(curves.items()):
        colour = COLOURS[k % len(COLOURS)]
        points = [point(i, v) for i, v in enumerate(curve) if math.isfinite(v)]  # NaN: a masked step
        if len(points) > 1:
            draw.line(points, fill=colour, width=2)
        for x, y in points[-1:] if len(points) > 1 else points:
            draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colour)
        label = legend[k] if legend else f"{name}: {curve[-1]:.4g}"
        draw.text((right - draw.textlength(label, font=font) - 8, top + (TEXT_SIZE + 4) * k), label, fill=colour,
                  font=font)
    return torch.from_numpy(np.array(image)).float().div(255.0)[None]
