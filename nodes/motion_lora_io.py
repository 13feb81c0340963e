"""Motion LoRAs (MotionDirector): apply, save and load a spatial and a temporal LoRA with separate strengths.

Files (safetensors only; ComfyUI's standard LoRA keys, alpha = rank so ComfyUI's alpha/rank factor is 1):
- spatial, ``models/loras/<name>_spatial.safetensors``: ``diffusion_model.<module>.lora_up.weight`` ``(out, r)``,
  ``.lora_down.weight`` ``(r, in)``, ``.alpha`` for the self-attention and feed-forward Linears of every spatial
  transformer block; core *LoraLoaderModelOnly* applies it identically;
- temporal, ``models/video_edit_motion_lora/<name>_temporal.safetensors``: the same three keys per Linear of the
  temporal layers (VE_InflateUNet), named by their path there, e.g.
  ``input_blocks.1.1.transformer_blocks.0.attn_temp.to_q.lora_up.weight``; applied as weight patches on the
  temporal layers' own ModelPatcher.
Metadata: ``video_edit_format`` = ``motiondirector_spatial/1`` or ``motiondirector_temporal/1``, ``rank``.
The pair is saved under one free number (``<name>_00001_spatial`` / ``<name>_00001_temporal``), both or neither.
"""

from __future__ import annotations

import os

import comfy.lora
import folder_paths
from comfy_api.latest import io
from ..kernels.lora import check_lora_tensors, linear_targets, spatial_targets
from .inflate import get_inflation, temporal_patcher
from .files import model_folder, numbered_names, read_safetensors, register_model_folder, save_safetensors_group
from .model_helpers import add_weight_patches, require_sd1_unet

SPATIAL_FOLDER = "loras"
TEMPORAL_FOLDER = "video_edit_motion_lora"
NONE = "none"
SPATIAL_PREFIX = "diffusion_model."
FORMATS = {"spatial": "motiondirector_spatial/1", "temporal": "motiondirector_temporal/1"}

MotionLoRA = io.Custom("VE_MOTION_LORA")

# Pickled files are listed so that choosing one explains why it is refused, instead of it silently not showing.
register_model_folder(TEMPORAL_FOLDER, {".safetensors", ".pt", ".ckpt", ".pth", ".bin"})


def _shapes(linears: dict, prefix: str = "") -> dict[str, tuple[int, int]]:
    return {prefix + path: (m.out_features, m.in_features) for path, m in linears.items()}


def spatial_lora_shapes(model) -> dict[str, tuple[int, int]]:
    """Spatial LoRA module key (``diffusion_model.<path>``) -> (out, in) for this MODEL."""
    return _shapes(spatial_targets(require_sd1_unet(model)), SPATIAL_PREFIX)


def temporal_lora_shapes(model, input_name: str = "model") -> dict[str, tuple[int, int]]:
    """Temporal LoRA module key (path in the temporal layers) -> (out, in) for this inflated MODEL."""
    inflation = get_inflation(model)
    if inflation is None:
        raise ValueError(f"{input_name}: temporal motion LoRAs live on the temporal layers; connect the MODEL "
                         "through 'Inflate UNet for Video' (VE_InflateUNet) first.")
    return _shapes(linear_targets(inflation.layers))


def _lora_patches(tensors: dict, shapes: dict, what: str) -> dict:
    """Check the LoRA fits exactly, then parse it with ComfyUI's own LoRA reader (so strengths mean the same)."""
    check_lora_tensors(tensors, shapes, what)
    return comfy.lora.load_lora(tensors, {module: f"{module}.weight" for module in shapes}, log_missing=False)


def apply_motion_lora(model, spatial: dict | None, spatial_strength: float, temporal: dict | None,
                      temporal_strength: float, spatial_name: str = "spatial_lora", temporal_name: str = "temporal_lora"):
    """A clone of ``model`` with the spatial LoRA patched into the UNet and the temporal one into the temporal
    layers, each at its own strength (ΔW = strength · up @ down). A strength of 0 adds nothing."""
    clone = model.clone()
    if spatial is not None:
        patches = _lora_patches(spatial, spatial_lora_shapes(model), spatial_name)
        if spatial_strength != 0:
            add_weight_patches(clone, patches, spatial_strength)
    if temporal is not None:
        patches = _lora_patches(temporal, temporal_lora_shapes(model), temporal_name)
        if temporal_strength != 0:
            accepted = set(temporal_patcher(clone).add_patches(patches, temporal_strength))
            if accepted != set(patches):
                raise RuntimeError(f"{temporal_name}: {len(set(patches) - accepted)} patches did not reach the temporal layers.")
    return clone


def save_motion_lora(spatial: dict, temporal: dict, name: str, metadata: dict | None = None) -> tuple[str, str]:
    """Write ``<name>_NNNNN_spatial`` into models/loras and ``<name>_NNNNN_temporal`` into
    models/video_edit_motion_lora under the first number free in both: both files appear, or neither. Returns both
    paths."""
    stem = os.path.basename(name.strip()).removesuffix(".safetensors") or "motion"
    folders = {"spatial": model_folder(SPATIAL_FOLDER), "temporal": model_folder(TEMPORAL_FOLDER)}
    taken = [numbered_names(folder, stem, [f"{kind}.safetensors"])[0] for kind, folder in folders.items()]
    counter = max(int(n[len(stem) + 1:len(stem) + 6]) for n in taken)  # a number free in both folders
    files = []
    for kind, tensors in (("spatial", spatial), ("temporal", temporal)):
        rank = next(v.shape[0] for k, v in tensors.items() if k.endswith(".lora_down.weight"))
        path = os.path.join(folders[kind], f"{stem}_{counter:05}_{kind}.safetensors")
        files.append((tensors, {**(metadata or {}), "video_edit_format": FORMATS[kind], "rank": str(rank)}, path))
    save_safetensors_group(files, "VE_SaveMotionLoRA")
    return files[0][2], files[1][2]


def read_lora_file(folder: str, name: str, input_name: str) -> dict:
    """Tensors of a LoRA file in ``folder``; pickled formats are refused without being opened, corrupt or
    non-finite files with an error naming the input."""
    path = folder_paths.get_full_path(folder, name)
    if path is None:
        raise FileNotFoundError(f"{input_name}: {name!r} is not in models/{folder}/. Save one with VE Save Motion LoRA.")
    return read_safetensors(path, input_name)[0]


class ApplyMotionLoRA(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="VE_ApplyMotionLoRA",
            display_name="Apply Motion LoRA (MotionDirector)",
            category="video_edit/motiondirector",
            description=("Applies the LoRAs from VE Train MotionDirector without saving them: the spatial LoRA "
                         "(appearance) into the UNet and the temporal LoRA (motion) into the temporal layers, each "
                         "with its own strength. MotionDirector generates with the temporal LoRA only (spatial 0)."),
            inputs=[
                io.Model.Input("model", tooltip="The inflated model the LoRAs were trained on."),
                io.LoraModel.Input("spatial_lora", optional=True),
                io.Float.Input("spatial_strength", default=0.0, min=-10.0, max=10.0, step=0.01),
                MotionLoRA.Input("temporal_lora", optional=True),
                io.Float.Input("temporal_strength", default=1.0, min=-10.0, max=10.0, step=0.01),
            ],
            outputs=[io.Model.Output()],
        )

    @classmethod
    def execute(cls, model, spatial_strength, temporal_strength, spatial_lora=None, temporal_lora=None) -> io.NodeOutput:
        return io.NodeOutput(apply_motion_lora(model, spatial_lora, spatial_strength, temporal_lora, temporal_strength))


class SaveMotionLoRA(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="VE_SaveMotionLoRA",
            display_name="Save Motion LoRA (MotionDirector)",
            category="video_edit/motiondirector",
            description=(f"Saves the spatial LoRA as models/{SPATIAL_FOLDER}/<filename>_00001_spatial.safetensors "
                         f"(standard LoRA keys: core Load LoRA can use it) and the temporal LoRA as "
                         f"models/{TEMPORAL_FOLDER}/<filename>_00001_temporal.safetensors, under the next number free "
                         f"in both folders (nothing is overwritten). Both files are written, or neither."),
            inputs=[
                io.LoraModel.Input("spatial_lora"),
                MotionLoRA.Input("temporal_lora"),
                io.String.Input("filename", default="motion"),
            ],
            outputs=[io.String.Output(display_name="spatial_path"), io.String.Output(display_name="temporal_path")],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, spatial_lora, temporal_lora, filename) -> io.NodeOutput:
        spatial_path, temporal_path = save_motion_lora(spatial_lora, temporal_lora, filename)
        return io.NodeOutput(spatial_path, temporal_path, ui={"text": [spatial_path, temporal_path]})


class LoadMotionLoRA(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="VE_LoadMotionLoRA",
            display_name="Load Motion LoRA (MotionDirector)",
            category="video_edit/motiondirector",
            description=("Applies saved MotionDirector LoRAs to an inflated MODEL, each with its own strength: the "
                         "spatial LoRA (appearance of the training clips) and the temporal LoRA (their motion). "
                         "Official inference uses the temporal LoRA only (spatial strength 0). Strength 0 leaves "
                         "the model exactly as it was. Files that do not fit the model are refused."),
            inputs=[
                io.Model.Input("model", tooltip="The inflated model (VE_InflateUNet) the LoRAs were trained on."),
                io.Combo.Input("spatial_file", options=[NONE] + folder_paths.get_filename_list(SPATIAL_FOLDER)),
                io.Float.Input("spatial_strength", default=0.0, min=-10.0, max=10.0, step=0.01),
                io.Combo.Input("temporal_file", options=[NONE] + folder_paths.get_filename_list(TEMPORAL_FOLDER)),
                io.Float.Input("temporal_strength", default=1.0, min=-10.0, max=10.0, step=0.01),
            ],
            outputs=[io.Model.Output()],
        )

    @classmethod
    def execute(cls, model, spatial_file, spatial_strength, temporal_file, temporal_strength) -> io.NodeOutput:
        spatial = None if spatial_file == NONE else read_lora_file(SPATIAL_FOLDER, spatial_file, "spatial_file")
        temporal = None if temporal_file == NONE else read_lora_file(TEMPORAL_FOLDER, temporal_file, "temporal_file")
        return io.NodeOutput(apply_motion_lora(model, spatial, spatial_strength, temporal, temporal_strength,
                                               "spatial_file", "temporal_file"))


NODES = [ApplyMotionLoRA, SaveMotionLoRA, LoadMotionLoRA]
