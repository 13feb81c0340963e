"""Motion LoRAs (MotionDirector): apply, save and load a spatial and a temporal LoRA with separate strengths.

The spatial LoRA (ComfyUI's standard LoRA keys, alpha = rank so ComfyUI's alpha/rank factor is 1) covers the
self-attention and feed-forward Linears of every spatial transformer block: core *LoraLoaderModelOnly* applies it
identically. The temporal LoRA covers the Linears of the temporal layers (VE_InflateUNet), named by their path
there, e.g. ``input_blocks.1.1.transformer_blocks.0.attn_temp.to_q``, and is applied as weight patches on the
temporal layers' own ModelPatcher. The file format: nodes/shared/motion_lora_files.py.
"""

from __future__ import annotations

import comfy.lora
import folder_paths
from comfy_api.latest import io, ui

from ..kernels.lora import check_lora_tensors, linear_targets, spatial_targets, split_spatial_sets
from .shared.animatediff import is_ade_motion_lora
from .shared.inputs import advising, require_unet
from .shared.patcher import add_weight_patches
from .shared.motion_lora_files import SPATIAL_FOLDER, SPATIAL_PREFIX, TEMPORAL_FOLDER, read_lora_file, save_motion_lora
from .shared.socket_types import MotionLoRA, VideoEditNode
from .shared.video_unet import require_inflated, temporal_patcher
from .shared.schema_fields import MOTIONDIRECTOR_ALIASES, search_aliases

NONE = "none"


def _shapes(linears: dict, prefix: str = "") -> dict[str, tuple[int, int]]:
    return {prefix + path: (m.out_features, m.in_features) for path, m in linears.items()}


def spatial_lora_shapes(model) -> dict[str, tuple[int, int]]:
    """Spatial LoRA module key (``diffusion_model.<path>``) -> (out, in) for this MODEL."""
    return _shapes(spatial_targets(require_unet(model)), SPATIAL_PREFIX)


def temporal_lora_shapes(model, input_name: str = "model") -> dict[str, tuple[int, int]]:
    """Temporal LoRA module key (path in the temporal layers) -> (out, in) for this inflated MODEL."""
    inflation = require_inflated(model, input_name, "temporal motion LoRAs live on the temporal layers")
    return _shapes(linear_targets(inflation.layers))


def _lora_patches(tensors: dict, shapes: dict, what: str) -> dict:
    """Check the LoRA fits exactly, then parse it with ComfyUI's own LoRA reader (so strengths mean the same)."""
    check_lora_tensors(tensors, shapes, what)
    return comfy.lora.load_lora(tensors, {module: f"{module}.weight" for module in shapes}, log_missing=False)


def spatial_set_of(spatial: dict, spatial_set: int, spatial_name: str) -> tuple[dict, str]:
    """The spatial LoRA set ``spatial_set`` of a file or LoRA output, and a line saying what it holds."""
    with advising("It was not saved by VE Save Motion LoRA: save the LoRAs again with it."):
        sets = split_spatial_sets(spatial, spatial_name)
    if not 0 <= spatial_set < len(sets):
        held = "one shared set" if len(sets) == 1 else f"{len(sets)} sets, one per training video"
        raise ValueError(f"spatial_set: {spatial_name} holds {held}; use a spatial_set from 0 to {len(sets) - 1}.")
    if len(sets) == 1:
        return sets[0], "spatial: one shared set"
    return sets[spatial_set], f"spatial: set {spatial_set} of {len(sets)} (one per training video)"


def strength_input(name: str, default: float):
    """A LoRA strength, as core Load LoRA offers it."""
    return io.Float.Input(name, default=default, min=-10.0, max=10.0, step=0.01,
                          tooltip="How strongly the LoRA applies (official MotionDirector inference: spatial 0, "
                                  "temporal 1).")


def spatial_set_input():
    """Which video's spatial set to apply, for spatial LoRAs trained with one set per video."""
    return io.Int.Input("spatial_set", default=0, min=0, max=1023, optional=True,
                        tooltip="For spatial LoRAs trained with one set per video (official): whose set to "
                                "apply, 0 = the first video's. A shared set is set 0.")


def apply_motion_lora(model, spatial: dict | None, spatial_strength: float, temporal: dict | None,
                      temporal_strength: float, spatial_name: str = "spatial_lora", temporal_name: str = "temporal_lora",
                      spatial_set: int = 0):
    """A clone of ``model`` with the spatial LoRA (set ``spatial_set`` of a per-video file) patched into the UNet and
    the temporal one into the temporal layers, each at its own strength (ΔW = strength · up @ down). A strength of
    0 adds nothing."""
    clone = model.clone()
    if spatial is not None:
        chosen, _ = spatial_set_of(spatial, spatial_set, spatial_name)
        patches = _lora_patches(chosen, spatial_lora_shapes(model), spatial_name)
        if spatial_strength != 0:
            add_weight_patches(clone, patches, spatial_strength)
    if temporal is not None:
        if is_ade_motion_lora(temporal):
            raise ValueError(f"{temporal_name}: it was trained on the AnimateDiff motion module; save it with VE Save "
                             "Motion LoRA and load it with AnimateDiff-Evolved's Load AnimateDiff LoRA.")
        patches = _lora_patches(temporal, temporal_lora_shapes(model), temporal_name)
        if temporal_strength != 0:
            accepted = set(temporal_patcher(clone).add_patches(patches, temporal_strength))
            if accepted != set(patches):
                raise RuntimeError(f"{temporal_name}: {len(set(patches) - accepted)} patches did not reach the temporal layers.")
    return clone


class ApplyMotionLoRA(VideoEditNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="VE_ApplyMotionLoRA",
            display_name="VE Apply Motion LoRA",
            category="video_edit/motiondirector",
            **search_aliases(MOTIONDIRECTOR_ALIASES, ("apply lora",)),
            description=("Applies the LoRAs from VE Train MotionDirector without saving them: the spatial LoRA "
                         "(appearance) into the UNet and the temporal LoRA (motion) into the temporal layers, each "
                         "with its own strength. MotionDirector generates with the temporal LoRA only (spatial 0)."),
            inputs=[
                io.Model.Input("model", tooltip="The inflated model the LoRAs were trained on."),
                io.LoraModel.Input("spatial_lora", optional=True, tooltip="VE Train MotionDirector's spatial_lora."),
                strength_input("spatial_strength", 0.0),
                MotionLoRA.Input("temporal_lora", optional=True, tooltip="VE Train MotionDirector's temporal_lora."),
                strength_input("temporal_strength", 1.0),
                spatial_set_input(),
            ],
            outputs=[io.Model.Output(display_name="model", tooltip="The model with the LoRAs applied, for the "
                                                                  "sampler.")],
        )

    @classmethod
    def execute(cls, model, spatial_strength, temporal_strength, spatial_lora=None, temporal_lora=None,
                spatial_set=0) -> io.NodeOutput:
        return io.NodeOutput(apply_motion_lora(model, spatial_lora, spatial_strength, temporal_lora, temporal_strength,
                                               spatial_set=spatial_set))


class SaveMotionLoRA(VideoEditNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="VE_SaveMotionLoRA",
            display_name="VE Save Motion LoRA",
            category="video_edit/motiondirector",
            **search_aliases(MOTIONDIRECTOR_ALIASES, ("save lora",)),
            description=(f"Saves the spatial LoRA as models/{SPATIAL_FOLDER}/<filename>_00001_spatial.safetensors "
                         f"(standard LoRA keys: core Load LoRA can use it) and the temporal LoRA as "
                         f"models/{TEMPORAL_FOLDER}/<filename>_00001_temporal.safetensors, under the next number free "
                         f"in both folders (nothing is overwritten). Both files are written, or neither. A temporal "
                         f"LoRA trained on the AnimateDiff motion module goes to models/animatediff_motion_lora/ in "
                         f"AnimateDiff-Evolved's motion-LoRA format, for its Load AnimateDiff LoRA."),
            inputs=[
                io.LoraModel.Input("spatial_lora", tooltip="VE Train MotionDirector's spatial_lora."),
                MotionLoRA.Input("temporal_lora", tooltip="VE Train MotionDirector's temporal_lora."),
                io.String.Input("filename", default="motion",
                                tooltip="File name prefix; a number free in both folders is appended."),
            ],
            outputs=[io.String.Output(display_name="spatial_path", tooltip="Absolute path of the spatial file (shown)."),
                     io.String.Output(display_name="temporal_path", tooltip="Absolute path of the temporal file "
                                                                            "(shown).")],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, spatial_lora, temporal_lora, filename) -> io.NodeOutput:
        spatial_path, temporal_path = save_motion_lora(spatial_lora, temporal_lora, filename)
        held = spatial_set_of(spatial_lora, 0, "spatial_lora")[1]
        return io.NodeOutput(spatial_path, temporal_path, ui={"text": [f"{spatial_path} ({held})", temporal_path]})


class LoadMotionLoRA(VideoEditNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="VE_LoadMotionLoRA",
            display_name="VE Load Motion LoRA",
            category="video_edit/motiondirector",
            **search_aliases(MOTIONDIRECTOR_ALIASES, ("load lora",)),
            description=("Applies saved MotionDirector LoRAs to an inflated MODEL, each with its own strength: the "
                         "spatial LoRA (appearance of the training clips) and the temporal LoRA (their motion). "
                         "Official inference uses the temporal LoRA only (spatial strength 0). A spatial file trained with "
                         "one set per video applies the set of video spatial_set. Strength 0 leaves the model "
                         "exactly as it was. Files that do not fit the model are refused."),
            inputs=[
                io.Model.Input("model", tooltip="The inflated model (VE Inflate UNet) the LoRAs were trained on."),
                io.Combo.Input("spatial_file", options=[NONE] + folder_paths.get_filename_list(SPATIAL_FOLDER),
                               tooltip=f"A *_spatial file in models/{SPATIAL_FOLDER}/ (VE Save Motion LoRA)."),
                strength_input("spatial_strength", 0.0),
                io.Combo.Input("temporal_file", options=[NONE] + folder_paths.get_filename_list(TEMPORAL_FOLDER),
                               tooltip=f"A *_temporal file in models/{TEMPORAL_FOLDER}/ (VE Save Motion LoRA)."),
                strength_input("temporal_strength", 1.0),
                spatial_set_input(),
            ],
            outputs=[io.Model.Output(display_name="model", tooltip="The model with the LoRAs applied, for the "
                                                                  "sampler.")],
        )

    @classmethod
    def execute(cls, model, spatial_file, spatial_strength, temporal_file, temporal_strength,
                spatial_set=0) -> io.NodeOutput:
        spatial = None if spatial_file == NONE else read_lora_file(SPATIAL_FOLDER, spatial_file, "spatial_file")
        temporal = None if temporal_file == NONE else read_lora_file(TEMPORAL_FOLDER, temporal_file, "temporal_file")
        patched = apply_motion_lora(model, spatial, spatial_strength, temporal, temporal_strength, "spatial_file",
                                    "temporal_file", spatial_set)
        held = spatial_set_of(spatial, spatial_set, "spatial_file")[1] if spatial is not None else "spatial: none"
        return io.NodeOutput(patched, ui=ui.PreviewText(held))


NODES = [ApplyMotionLoRA, SaveMotionLoRA, LoadMotionLoRA]
