"""VE_SaveTuned / VE_LoadTuned: what one-shot tuning changed, as one small safetensors file.

File layout (``models/video_edit_tuned/*.safetensors``):
- ``query_delta.<model key>``: the tuned change of each query projection, e.g.
  ``query_delta.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight`` (fp32);
- ``temporal.<block path>.{norm_temp,attn_temp}...``: the temporal layers (fp32);
- ``motion_query_delta.<motion module path>.to_q``: with VE One-Shot Tune's motion_module "tune its queries", the
  tuned change of AnimateDiff-Evolved's motion module's temporal query projections (fp32; loading needs the MODEL
  through Use Evolved Sampling with that motion module);
- metadata ``video_edit_format`` = "tune_a_video/1", ``frame_groupnorm``, ``temporal_mask`` and ``temporal_window``
  (absent in older files: none, 0), and the tuning's ``frames``, ``height``, ``width``, ``steps``,
  ``learning_rate``, ``seed``, ``prompt``.

Saves are numbered (``<filename>_00001_.safetensors``, ...) so a finished tuning is never overwritten.

VE_LoadTuned also takes an official Tune-A-Video / FateZero checkpoint's UNet (``unet/diffusion_pytorch_model.safetensors``
in a subfolder, kernels/official_tav.py) and converts it against the base MODEL: the query deltas are the official
``to_q`` weights minus the base's, the temporal layers are taken as they are, every other weight must be the base's.
The official folder carries no settings: frame-spanning GroupNorm (the official inflated ResNets), no temporal mask.
Pickled files are listed so that choosing one explains how to convert it; they are never opened.
"""

from __future__ import annotations

import json
import os

import folder_paths
import torch
from comfy_api.latest import io

from ..kernels.official_tav import SAME_WEIGHT_TOLERANCE, is_official_unet3d, split_official_unet, weight_difference
from ..kernels.temporal import TemporalMask
from .shared.animatediff import apply_tuned_weights
from .shared.comfy_internals import diffusers_to_ldm_unet_keys, unpatched_unet_weights
from .shared.files import PICKLE_EXTENSIONS, file_stem, model_folder, numbered_paths, read_safetensors, register_model_folder, save_safetensors_group
from .shared.patcher import PatcherKeys
from .shared.video_unet import TunedWeights
from .shared.socket_types import VideoEditNode
from .shared.schema_fields import TUNE_A_VIDEO_ALIASES, DREAMIX_ALIASES, search_aliases

FOLDER = "video_edit_tuned"
FORMAT = "tune_a_video/1"
QUERY_PREFIX = "query_delta."
TEMPORAL_PREFIX = "temporal."
MOTION_QUERY_PREFIX = "motion_query_delta."

OFFICIAL_BASES = "Tune-A-Video: SD 1.4, FateZero: SD 1.5"

# Pickled files are listed so that choosing one explains why it is refused and how to convert it.
register_model_folder(FOLDER, {".safetensors", *PICKLE_EXTENSIONS})


def save_tuned(tuned: TunedWeights, path: str):
    """Write ``tuned`` to ``path`` atomically; an existing file is never replaced."""
    tensors = {QUERY_PREFIX + k: v for k, v in tuned.query_deltas.items()}
    tensors.update({TEMPORAL_PREFIX + k: v for k, v in tuned.temporal.items()})
    tensors.update({MOTION_QUERY_PREFIX + k: v for k, v in tuned.motion_query_deltas.items()})
    metadata = {k: json.dumps(v) for k, v in tuned.metadata.items()}
    metadata.update(video_edit_format=FORMAT, frame_groupnorm=json.dumps(tuned.frame_groupnorm),
                    temporal_mask=json.dumps(tuned.mask.mode), temporal_window=json.dumps(tuned.mask.window))
    save_safetensors_group([(tensors, metadata, path)], "VE_SaveTuned")


def load_tuned(path: str, input_name: str = "tuned_file") -> TunedWeights:
    """The tuning saved in ``path``; ValueError naming ``input_name`` and the file for a corrupt, foreign or
    non-finite file, one holding non-float tensors, or one with invalid metadata."""
    tensors, metadata = read_safetensors(path, input_name)
    return pack_tuning(tensors, metadata, os.path.basename(path), input_name)


def pack_tuning(tensors: dict, metadata: dict, name: str, input_name: str) -> TunedWeights:
    """The tuning held by a file saved by VE Save Tuned Model (``load_tuned``)."""
    if metadata.get("video_edit_format") != FORMAT:
        raise ValueError(f"{input_name}: {name} is not a Tune-A-Video file saved by VE Save Tuned Model "
                         f"(format {metadata.get('video_edit_format')!r}, expected {FORMAT!r}) nor an official "
                         "Tune-A-Video UNet (a diffusers UNet with attn_temp layers, unet/diffusion_pytorch_model."
                         "safetensors). Pick one of those.")
    try:
        info = {k: json.loads(v) for k, v in metadata.items() if k != "video_edit_format"}
        mask = TemporalMask(str(info.pop("temporal_mask", "none")), int(info.pop("temporal_window", 0)))
        frame_groupnorm = info.pop("frame_groupnorm", True)
        if not isinstance(frame_groupnorm, bool):
            raise ValueError(f"frame_groupnorm: {frame_groupnorm!r} is not true or false")
    except (ValueError, TypeError) as error:  # JSON errors are ValueErrors too
        raise ValueError(f"{input_name}: {name} has invalid metadata ({str(error).rstrip('.')}); it was not written "
                         "by VE Save Tuned Model or was edited since. Save the tuning again, or pick another file.") from None
    return TunedWeights(
        query_deltas={k[len(QUERY_PREFIX):]: v for k, v in tensors.items() if k.startswith(QUERY_PREFIX)},
        temporal={k[len(TEMPORAL_PREFIX):]: v for k, v in tensors.items() if k.startswith(TEMPORAL_PREFIX)},
        motion_query_deltas={k[len(MOTION_QUERY_PREFIX):]: v for k, v in tensors.items()
                             if k.startswith(MOTION_QUERY_PREFIX)},
        frame_groupnorm=frame_groupnorm,
        mask=mask,
        metadata=info,
    )


def official_tuning(model, tensors: dict, name: str, input_name: str = "tuned_file") -> TunedWeights:
    """The tuning an official Tune-A-Video UNet (diffusers names) holds, relative to ``model``'s UNet: query deltas
    against the base's query weights, the temporal layers as they are; ValueError naming ``input_name`` when it was
    tuned from another base or does not fit this UNet's layout."""
    base = unpatched_unet_weights(model)
    # ComfyUI's map also names layers this UNet lacks (label_emb, skip connections of equal-width ResNets).
    mapping = {key: ldm for key, ldm in diffusers_to_ldm_unet_keys(model).items() if ldm in base}
    split = split_official_unet(tensors, mapping)
    if split.unknown:
        raise ValueError(f"{input_name}: {name} holds {split.unknown[0]}, which has no place in the MODEL's UNet "
                         f"({len(split.unknown)} such weights); it was tuned for another UNet layout. Connect the base "
                         f"it was tuned from ({OFFICIAL_BASES}).")
    official = {**split.queries, **split.kept}
    missing = sorted(set(base) - set(official))
    if missing:
        raise ValueError(f"{input_name}: {name} lacks the UNet weight {missing[0]} ({len(missing)} missing in all); "
                         "the file is incomplete. Download the checkpoint's unet folder again.")
    for key, weight in official.items():
        if weight.shape != base[key].shape:
            raise another_base(input_name, name, f"its {key} has shape {tuple(weight.shape)}, the MODEL's "
                                                 f"{tuple(base[key].shape)}")
    for key, weight in split.kept.items():
        difference = weight_difference(weight, base[key])
        if difference > SAME_WEIGHT_TOLERANCE:
            raise another_base(input_name, name, f"its {key} differs from the MODEL's (relative difference "
                                                 f"{difference:.2g})")
    return TunedWeights(
        query_deltas={f"diffusion_model.{key}": weight.float() - base[key].detach().to("cpu", torch.float32)
                      for key, weight in split.queries.items()},
        temporal={key: value.float() for key, value in split.temporal.items()},
        frame_groupnorm=True,
        metadata={"official_checkpoint": name},
    )


def another_base(input_name: str, name: str, evidence: str) -> ValueError:
    return ValueError(f"{input_name}: {name} was tuned from another base model than the MODEL connected: {evidence}; "
                      f"connect the base it was tuned from ({OFFICIAL_BASES}).")


def load_any_tuning(model, path: str, shown_name: str, input_name: str = "tuned_file") -> TunedWeights:
    """The tuning in ``path`` (``shown_name`` in messages): a file saved by VE Save Tuned Model, or an official
    Tune-A-Video UNet converted against ``model``."""
    tensors, metadata = read_safetensors(path, input_name)
    if "video_edit_format" not in metadata and is_official_unet3d(tensors):
        return official_tuning(model, tensors, shown_name, input_name)
    return pack_tuning(tensors, metadata, shown_name, input_name)


class SaveTuned(VideoEditNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="VE_SaveTuned",
            display_name="VE Save Tuned Model",
            category="video_edit/tune_a_video",
            **search_aliases(TUNE_A_VIDEO_ALIASES, DREAMIX_ALIASES, ("save tuned",)),
            description=(f"Saves only what one-shot tuning changed (query deltas and temporal layers, a few hundred MB for "
                         f"SD1.5) as models/{FOLDER}/<filename>_00001_.safetensors (the next free number, so nothing "
                         f"is overwritten), with the tuning's settings as metadata. Atomic write."),
            inputs=[
                io.Model.Input("model", tooltip="The output of VE One-Shot Tune (or VE Load Tuned Model)."),
                io.String.Input("filename", default="tuned_clip",
                                tooltip="File name prefix; a number is appended (_00001_, _00002_, ...)."),
                io.String.Input("prompt", default="", tooltip="The source prompt, kept in the file's metadata."),
            ],
            outputs=[io.String.Output(display_name="path", tooltip="Absolute path of the saved file (shown in the node).")],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, model, filename, prompt) -> io.NodeOutput:
        tuned = model.get_attachment(PatcherKeys.TUNING)
        if tuned is None:
            raise ValueError("model: it carries no tuning; connect the MODEL output of VE One-Shot Tune.")
        stem = file_stem(filename, "tuned_clip", "filename", "VE_SaveTuned", ".safetensors")
        (path,) = numbered_paths(stem, [(model_folder(FOLDER), ".safetensors")])
        tuned = TunedWeights(tuned.query_deltas, tuned.temporal, tuned.frame_groupnorm,
                             {**tuned.metadata, "prompt": prompt}, tuned.mask, tuned.motion_query_deltas)
        save_tuned(tuned, path)
        return io.NodeOutput(path, ui={"text": [path]})


class LoadTuned(VideoEditNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="VE_LoadTuned",
            display_name="VE Load Tuned Model",
            category="video_edit/tune_a_video",
            **search_aliases(TUNE_A_VIDEO_ALIASES, DREAMIX_ALIASES, ("load tuned",)),
            description=("Applies a file saved by VE Save Tuned Model to a MODEL (the checkpoint it was tuned on): inflates it "
                         "with the tuned temporal layers and patches the query projections. Reproduces the tuned "
                         "model exactly, without training. Also takes an official Tune-A-Video / FateZero checkpoint's "
                         "unet/diffusion_pytorch_model.safetensors on its base model (Tune-A-Video: SD 1.4, FateZero: "
                         "SD 1.5); connect VE Sparse-Causal Attention after it, as the official model attends."),
            inputs=[
                io.Model.Input("model", tooltip="The checkpoint the file was tuned on (core Load Checkpoint), not inflated."),
                io.Combo.Input("tuned_file", options=folder_paths.get_filename_list(FOLDER),
                               tooltip=f"A file in models/{FOLDER}/ written by VE Save Tuned Model, or an official "
                                       "checkpoint's UNet in a subfolder (<name>/unet/diffusion_pytorch_model."
                                       "safetensors). Pickled files (.bin, .ckpt, .pt) are refused with the command "
                                       "that converts them."),
            ],
            outputs=[io.Model.Output(display_name="model", tooltip="The tuned video MODEL, for the sampler or VE DDIM "
                                                                  "Invert.")],
        )

    @classmethod
    def execute(cls, model, tuned_file) -> io.NodeOutput:
        path = folder_paths.get_full_path(FOLDER, tuned_file)
        if path is None:
            raise FileNotFoundError(f"tuned_file: {tuned_file!r} is not in models/{FOLDER}/. Save one with VE Save Tuned Model.")
        tuned = load_any_tuning(model, path, tuned_file)
        return io.NodeOutput(apply_tuned_weights(model, tuned, f"tuned_file: {tuned_file}"))


NODES = [SaveTuned, LoadTuned]
