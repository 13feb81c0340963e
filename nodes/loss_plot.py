"""VE_PlotLoss: the loss curves of a tuning or training run as an image, previewed in the node."""

from __future__ import annotations

from comfy_api.latest import io, ui

from .shared.plots import loss_curves, loss_summary, plot_curves
from .shared.socket_types import VideoEditNode
from .shared.schema_fields import TUNE_A_VIDEO_ALIASES, MOTIONDIRECTOR_ALIASES, VIDEO_EDIT_ALIASES, search_aliases


class PlotLoss(VideoEditNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="VE_PlotLoss",
            display_name="VE Plot Loss",
            category="video_edit/video",
            **search_aliases(VIDEO_EDIT_ALIASES, TUNE_A_VIDEO_ALIASES, MOTIONDIRECTOR_ALIASES, ("loss curve", "training loss")),
            description="Draws the loss of every step of VE One-Shot Tune or VE Train MotionDirector (each of its "
                        "losses as its own curve) and previews it, so you can see whether tuning converges.",
            inputs=[io.LossMap.Input("loss", tooltip="The loss output of VE One-Shot Tune or VE Train MotionDirector.")],
            outputs=[io.Image.Output(display_name="image", tooltip="The plot (previewed in the node).")],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, loss) -> io.NodeOutput:
        image = plot_curves(loss_curves(loss), "step")
        return io.NodeOutput(image, ui={**ui.PreviewImage(image, cls=cls).as_dict(), "text": [loss_summary(loss)]})


NODES = [PlotLoss]
