"""AnimateDiff-Evolved (ADE) on the same MODEL as this pack: its motion module sees the right frames in every call.

ADE fixes its motion module's clip length (``video_length``) once per sampling run from the latent's batch, or per
window under its own context options, and reshapes every UNet call by it. This pack also calls the UNet with other
batches: image-model calls (Dreamix image steps, MotionDirector's spatial path), TokenFlow's keyframe pass, VE
Context Windows' windows. A DIFFUSION_MODEL wrapper sets, for each such call and through ADE's own public
surfaces (the motion models in ``transformer_options["ADGS"]``, their ``set_video_length``/``set_sub_idxs``/
``set_effect``, and ``transformer_options["ad_params"]``):
- image-model calls: the motion module's effect 0 (ADE returns its input unchanged: the motion module is off);
- every other call: the clip length = the call's frames per cond/uncond chunk, and under VE Context Windows the
  window's frame indices as ADE's ``sub_idxs`` (ADE's effect and scale masks then index the right frames);
and restores ADE's values after the call. ADE is never imported: without it the wrapper passes every call through.

Refused by name: cross-frame attention with an anchor frame (VE Sparse-Causal Attention, FateZero's fusion) under
ADE's context options (each ADE window would anchor on its own first frame; VE Context Windows keeps the clip's),
and VE Context Windows together with ADE's context options (two windowers, one inside the other).
"""

from __future__ import annotations

import contextlib

from comfy.patcher_extension import PatcherInjection, WrappersMP

from .patcher import PatcherKeys, set_wrapper
from .unet_call import PER_FRAME_OPTION, TEMPORAL_BYPASS
from .video_unet import TunedWeights, apply_tuned
from .windowing import attn1_patches

ADE_STATE = "ADGS"  # transformer_options: ADE's global state during its sampling (motion models by device)
ADE_PARAMS = "ad_params"  # transformer_options: ADE's exposed full_length, context_length, sub_idxs
ADE_CONTEXT_NODE = "AnimateDiff-Evolved's context options (Context Options◆ nodes on Use Evolved Sampling)"


def motion_models(transformer_options, device) -> list:
    """ADE's AnimateDiffModel objects injected for this call (none without ADE's sampling or a motion model)."""
    state = transformer_options.get(ADE_STATE)
    if state is None:
        return []
    group = getattr(state, "motion_models_devices", {}).get(device) or getattr(state, "motion_models", None)
    return [patcher.model for patcher in getattr(group, "models", None) or []]


def ade_windows(transformer_options) -> bool:
    """Whether ADE's own context options window this sampling run."""
    params = transformer_options.get(ADE_PARAMS) or {}
    return bool(params.get("context_length")) and params["context_length"] < params.get("full_length", 0)


def check_windowers(transformer_options):
    """Refuse by name what cannot compose with ADE's context options."""
    if not ade_windows(transformer_options):
        return
    if transformer_options.get("context_window") is not None:
        raise ValueError(f"VE Context Windows and {ADE_CONTEXT_NODE} both window this clip, one inside the other. "
                         "Use one of them: remove the context options from Use Evolved Sampling, or VE Context "
                         "Windows from the model.")
    patches = attn1_patches({"transformer_options": transformer_options})
    if any(hasattr(patch, "anchor_frames") for patch in patches):
        raise ValueError(f"Cross-frame attention with an anchor frame (VE Sparse-Causal Attention, VE FateZero "
                         f"Attention Fusion) under {ADE_CONTEXT_NODE}: each ADE window would anchor on its own first "
                         "frame instead of the clip's. Window with VE Context Windows instead (it keeps the clip's "
                         "anchor frame in every window and gives ADE's motion module each window's frames).")


@contextlib.contextmanager
def motion_module_off(models: list):
    """ADE's effect 0 for one call: its motion modules return their input (the image model's path)."""
    saved = [(m, m.effect_model, m.effect_per_block_list) for m in models]
    for model in models:
        model.set_effect(0.0)
    try:
        yield
    finally:
        for model, effect, per_block in saved:
            model.set_effect(None if isinstance(effect, float) and effect == 1.0 else effect, per_block)


@contextlib.contextmanager
def clip_length(models: list, frames: int, window: list[int] | None, params: dict):
    """ADE's clip length (and window frames) for one call, ADE's own values restored after it."""
    full = params.get("full_length") or frames
    saved = [(m, m.AD_video_length) for m in models]
    for model in models:
        model.set_video_length(frames, full)
        if window is not None:
            model.set_sub_idxs(list(window))
    try:
        yield
    finally:
        for model, length in saved:
            model.set_video_length(length, full)
            if window is not None:
                model.set_sub_idxs(params.get("sub_idxs"))


def _fit_motion_models(executor, x, timesteps, context, y, control, transformer_options, **kwargs):
    """DIFFUSION_MODEL wrapper: ADE's motion module gets this call's frames, or is off on image-model calls."""
    models = motion_models(transformer_options, x.device)
    if not models:
        return executor(x, timesteps, context, y, control, transformer_options, **kwargs)
    check_windowers(transformer_options)
    if TEMPORAL_BYPASS.get() or transformer_options.get(PER_FRAME_OPTION):
        scope = motion_module_off(models)
    else:
        frames = x.shape[0] // len(transformer_options.get("cond_or_uncond") or [0])
        window = transformer_options.get("context_window")
        scope = clip_length(models, frames, None if window is None else window.index_list,
                            transformer_options.get(ADE_PARAMS) or {})
    with scope:
        return executor(x, timesteps, context, y, control, transformer_options, **kwargs)


def fit_motion_module_per_call(model):
    """Make every UNet call of ``model`` (a clone this pack owns) give ADE's motion module the call's frames."""
    set_wrapper(model, WrappersMP.DIFFUSION_MODEL, PatcherKeys.ANIMATEDIFF, _fit_motion_models)


# ----- MotionDirector's temporal LoRA on ADE's motion module (AnimateDiff-MotionDirector) --------------------------

ADE_MODELS_KEY = "ADE"  # ModelPatcher additional-models key under which Use Evolved Sampling keeps its motion models
ADE_LORA_FOLDER = "animatediff_motion_lora"  # ComfyUI model folder of ADE's Load AnimateDiff LoRA
ADE_PROJECTIONS = ("to_q", "to_k", "to_v", "to_out.0")  # the temporal attention projections a motion LoRA holds


def ade_motion_module(model, input_name: str = "model"):
    """The one AnimateDiff motion module (ADE's AnimateDiffModel) Use Evolved Sampling put on ``model``, or an
    error naming the input and the fix."""
    patchers = model.get_additional_models_with_key(ADE_MODELS_KEY)
    if len(patchers) != 1:
        raise ValueError(f"{input_name}: training on the AnimateDiff motion module needs a MODEL with exactly one "
                         f"(it has {len(patchers)}); connect it through AnimateDiff-Evolved's Load AnimateDiff Model "
                         "→ Apply AnimateDiff Model → Use Evolved Sampling.")
    return patchers[0].model


def motion_module_targets(motion_module) -> dict:
    """Module path -> Linear: the temporal attention projections of every motion module block (the layers
    AnimateDiff motion LoRAs patch)."""
    return {name: module for name, module in motion_module.named_modules()
            if ".attention_blocks." in name and name.split(".attention_blocks.", 1)[1].split(".", 1)[-1]
            in ADE_PROJECTIONS}


def check_clip_lengths(motion_module, frames: list[int], input_name: str = "clip_set"):
    """Refuse videos longer than the motion module's positional encoding."""
    limit = getattr(motion_module, "encoding_max_len", None)
    if limit and max(frames) > limit:
        raise ValueError(f"{input_name}: a video of {max(frames)} frames; this AnimateDiff motion module encodes at "
                         f"most {limit}. Load at most {limit} frames per video (VE Load Video frame count).")


def ade_lora_key(path: str, half: str) -> str:
    """ADE's motion-LoRA key of one projection's ``half`` ("down"/"up"): ``<block>.processor.<proj>_lora.<half>``."""
    block, projection = path.rsplit(".attention_blocks.", 1)[0], path.split(".attention_blocks.", 1)[1]
    index, name = projection.split(".", 1)
    return f"{block}.attention_blocks.{index}.processor.{name.removesuffix('.0')}_lora.{half}.weight"


def to_ade_motion_lora(tensors: dict) -> dict:
    """Our LoRA file tensors (``<path>.lora_up/lora_down.weight``, alpha = rank) -> ADE's motion-LoRA format
    (``up @ down``, no alpha)."""
    converted = {}
    for key, value in tensors.items():
        for ours, half in ((".lora_down.weight", "down"), (".lora_up.weight", "up")):
            if key.endswith(ours):
                converted[ade_lora_key(key.removesuffix(ours), half)] = value.contiguous()
    return converted


def is_ade_motion_lora(tensors: dict) -> bool:
    return bool(tensors) and all(".processor." in key and "_lora." in key for key in tensors)


# ----- VE One-Shot Tune on AnimateDiff's motion module: its temporal queries (Tune-A-Video's attn_temp.to_q) ------

def motion_query_layers(motion_module) -> dict:
    """Module path -> Linear: the query projection of every temporal attention of the motion module."""
    return {path: layer for path, layer in motion_module_targets(motion_module).items() if path.endswith(".to_q")}


class OutputDelta:
    """Forward hook ``y -> y + x @ delta.T`` on a Linear: ``W -> W + delta`` without touching ADE's weights."""

    def __init__(self, delta):
        self.delta = delta

    def __call__(self, module, args, output):
        return output + args[0] @ self.delta.to(output).T


def with_motion_query_deltas(model, deltas: dict, what: str = "tuned weights"):
    """A clone of ``model`` whose ADE motion module computes its temporal queries with ``W + delta`` (the delta of
    each ``motion_query_layers`` path); a delta that does not fit the motion module is refused naming ``what``."""
    layers = motion_query_layers(ade_motion_module(model, what))
    for path, delta in deltas.items():
        if path not in layers or tuple(layers[path].weight.shape) != tuple(delta.shape):
            raise ValueError(f"{what}: its motion-module query delta {path} does not fit this model's AnimateDiff "
                             "motion module; use the motion module it was tuned with.")
    handles = []

    def inject(patcher):
        handles.extend(layers[path].register_forward_hook(OutputDelta(delta)) for path, delta in deltas.items())

    def eject(patcher):
        while handles:
            handles.pop().remove()

    clone = model.clone()
    clone.set_injections(PatcherKeys.MOTION_QUERIES, [PatcherInjection(inject=inject, eject=eject)])
    return clone


def apply_tuned_weights(model, tuned: TunedWeights, what: str = "tuned weights"):
    """``apply_tuned``, plus the motion module's query deltas when the tuning trained them."""
    clone = apply_tuned(model, tuned, what)
    return with_motion_query_deltas(clone, tuned.motion_query_deltas, what) if tuned.motion_query_deltas else clone
