"""VE_PlotLoss: the loss curves of a tuning or training run as an image, previewed in the node."""

from __future__ import annotations

import numpy as np
import torch
from comfy_api.latest import io, ui
from PIL import Image, ImageDraw

WIDTH, HEIGHT, MARGIN = 640, 360, 48
COLOURS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14)]


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


def plot_losses(curves: dict[str, list[float]]) -> np.ndarray:
    """A white ``HEIGHT x WIDTH`` RGB plot (uint8) of each curve against its step, with the value range and legend."""
    image = Image.new("RGB", (WIDTH, HEIGHT), "white")
    draw = ImageDraw.Draw(image)
    values = [v for curve in curves.values() for v in curve]
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
    draw.text(((left + right) // 2 - 30, bottom + 6), f"step (1..{steps})", fill="black")
    for k, (name, curve) in enumerate(curves.items()):
        colour = COLOURS[k % len(COLOURS)]
        points = [point(i, v) for i, v in enumerate(curve)]
        if len(points) > 1:
            draw.line(points, fill=colour, width=2)
        for x, y in points[-1:] if len(points) > 1 else points:
            draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colour)
        draw.text((right - 150, top + 14 * k), f"{name}: {curve[-1]:.4g}", fill=colour)
    return np.asarray(image)


class PlotLoss(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="VE_PlotLoss",
            display_name="Plot Loss (Video Edit)",
            category="video_edit/training",
            description="Draws the loss of every step of VE One-Shot Tune or VE Train MotionDirector (each of its "
                        "losses as its own curve) and previews it, so you can see whether tuning converges.",
            inputs=[io.LossMap.Input("loss")],
            outputs=[io.Image.Output(display_name="image")],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, loss) -> io.NodeOutput:
        image = torch.from_numpy(plot_losses(loss_curves(loss))).float().div(255.0)[None]
        return io.NodeOutput(image, ui=ui.PreviewImage(image, cls=cls))


NODES = [PlotLoss]
