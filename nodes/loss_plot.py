"""VE_PlotLoss: the loss curves of a tuning or training run as an image, previewed in the node."""

from __future__ import annotations

from comfy_api.latest import io, ui

from .plots import plot_curves
from .socket_types import VideoEditNode
from .schema_fields import TUNE_A_VIDEO, MOTIONDIRECTOR, VIDEO_EDIT, search_aliases


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


class PlotLoss(VideoEditNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="VE_PlotLoss",
            display_name="VE Plot Loss",
            category="video_edit/video",
            **search_aliases(VIDEO_EDIT, TUNE_A_VIDEO, MOTIONDIRECTOR, ("loss curve", "training loss")),
            description="Draws the loss of every step of VE One-Shot Tune or VE Train MotionDirector (each of its "
                        "losses as its own curve) and previews it, so you can see whether tuning converges.",
            inputs=[io.LossMap.Input("loss", tooltip="The loss output of VE One-Shot Tune or VE Train MotionDirector.")],
            outputs=[io.Image.Output(display_name="image", tooltip="The plot (previewed in the node).")],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, loss) -> io.NodeOutput:
        image = plot_curves(loss_curves(loss), "step")
        return io.NodeOutput(image, ui=ui.PreviewImage(image, cls=cls))


NODES = [PlotLoss]
