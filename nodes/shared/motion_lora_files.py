"""MotionDirector's LoRA files: where they live, how a pair is saved (numbered, both or neither) and read.

- spatial, ``models/loras/<name>_NNNNN_spatial.safetensors``: ComfyUI's standard LoRA keys
  (``diffusion_model.<module>.lora_up.weight`` ``(out, r)``, ``.lora_down.weight`` ``(r, in)``, ``.alpha`` = r);
- temporal, ``models/video_edit_motion_lora/<name>_NNNNN_temporal.safetensors``: the same keys per Linear of the
  temporal layers, named by their path there; a temporal LoRA trained on AnimateDiff's motion module goes to
  ``models/animatediff_motion_lora/`` in AnimateDiff-Evolved's motion-LoRA format
  (``<block>.attention_blocks.N.processor.<to_q|to_k|to_v|to_out>_lora.<down|up>.weight``, ΔW = up @ down).
Metadata: ``video_edit_format`` = ``motiondirector_spatial/1`` or ``motiondirector_temporal/1``, ``rank``; the
spatial file also ``spatial_sets``: 1 for one shared set (standard keys), N for one set per training video (keys
under ``video<k>.``, which only VE Load/Apply Motion LoRA read).
"""

from __future__ import annotations


import os

import folder_paths

from ...kernels.lora import split_spatial_sets
from .animatediff import ADE_LORA_FOLDER, is_ade_motion_lora
from .files import (PICKLE_EXTENSIONS, file_stem, model_folder, numbered_paths, read_safetensors, register_model_folder,
                    save_safetensors_group)

SPATIAL_FOLDER = "loras"
TEMPORAL_FOLDER = "video_edit_motion_lora"
SPATIAL_PREFIX = "diffusion_model."
FORMATS = {"spatial": "motiondirector_spatial/1", "temporal": "motiondirector_temporal/1",
           "animatediff": "motiondirector_animatediff_motion_lora/1"}

# Pickled files are listed so that choosing one explains why it is refused, instead of it silently not showing.
register_model_folder(TEMPORAL_FOLDER, {".safetensors", *PICKLE_EXTENSIONS})


def save_motion_lora(spatial: dict, temporal: dict, name: str, metadata: dict | None = None) -> tuple[str, str]:
    """Write ``<name>_NNNNN_spatial`` into models/loras and ``<name>_NNNNN_temporal`` into
    models/video_edit_motion_lora (models/animatediff_motion_lora for an AnimateDiff motion LoRA) under the first
    number free in both: both files appear, or neither. Returns both paths."""
    stem = file_stem(name, "motion", "filename", "VE_SaveMotionLoRA", ".safetensors")
    temporal_folder = ade_lora_folder() if is_ade_motion_lora(temporal) else model_folder(TEMPORAL_FOLDER)
    kinds = {"spatial": (spatial, model_folder(SPATIAL_FOLDER)), "temporal": (temporal, temporal_folder)}
    paths = numbered_paths(stem, [(folder, f"{kind}.safetensors") for kind, (_, folder) in kinds.items()])
    files = []
    for (kind, (tensors, _)), path in zip(kinds.items(), paths):
        rank = next(v.shape[0] for k, v in tensors.items() if k.endswith((".lora_down.weight", "_lora.down.weight")))
        fmt = FORMATS["animatediff" if kind == "temporal" and is_ade_motion_lora(tensors) else kind]
        info = {**(metadata or {}), "video_edit_format": fmt, "rank": str(rank)}
        if kind == "spatial":
            info["spatial_sets"] = str(len(split_spatial_sets(tensors, "spatial_lora")))
        files.append((tensors, info, path))
    save_safetensors_group(files, "VE_SaveMotionLoRA")
    return paths[0], paths[1]


def ade_lora_folder() -> str:
    """ComfyUI's ``models/animatediff_motion_lora``, where AnimateDiff-Evolved's Load AnimateDiff LoRA looks (ADE
    registers it, after its own pack folder; registered here too, for an ADE installed later or not yet loaded)."""
    path = os.path.join(folder_paths.models_dir, ADE_LORA_FOLDER)
    folder_paths.add_model_folder_path(ADE_LORA_FOLDER, path)
    folder_paths.folder_names_and_paths[ADE_LORA_FOLDER][1].add(".safetensors")
    return path


def read_lora_file(folder: str, name: str, input_name: str) -> dict:
    """Tensors of a LoRA file in ``folder``; pickled formats are refused without being opened, corrupt or
    non-finite files with an error naming the input."""
    path = folder_paths.get_full_path(folder, name)
    if path is None:
        raise FileNotFoundError(f"{input_name}: {name!r} is not in models/{folder}/. Save one with VE Save Motion LoRA.")
    return read_safetensors(path, input_name)[0]
