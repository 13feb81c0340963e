"""Helpers the nodes share: input checks with clear errors, weight patching that tolerates injection, the keys
this pack uses on a ModelPatcher (attention slots: nodes/attention_slots.py)."""

from __future__ import annotations


# transformer_options flag under which the inflated UNet runs as the image UNet (nodes/video_unet.py
# bypass_temporal): cross-frame attention patches then treat every frame as its own image.
PER_FRAME_OPTION = "video_edit_per_frame"


class PatcherKeys:
    """Every key under which this pack hangs something on a ModelPatcher (attachments, additional models,
    injections, wrappers), in one place: no two features collide, and a reader sees what a MODEL can carry."""

    INFLATION = "video_edit_inflation"  # temporal layers: attachment, additional model, injection, UNet wrapper
    TUNING = "video_edit_tuning"  # attachment: the TunedWeights a tuned MODEL carries
    HINT_CHECKS = "video_edit_hint_checks"  # OUTER_SAMPLE wrapper: one ControlNet hint per frame
    TOKENFLOW = "video_edit_tokenflow"  # PnP feature injection and the APPLY_MODEL wrapper of TokenFlow's passes
    TOKENFLOW_SOURCE = "video_edit_tokenflow_source"  # the cond uuid of TokenFlow's source branch
    MOTION_LORA_TRAINING = "video_edit_motion_lora_training"  # injection of the LoRAs being trained
    SLOTS = "video_edit_slots"  # OUTER_SAMPLE wrapper: our attention patches are still in their slots
    ANIMATEDIFF = "video_edit_animatediff"  # DIFFUSION_MODEL wrapper: ADE's motion module gets each call's frames
    MOTION_QUERIES = "video_edit_motion_queries"  # injection: tuned query deltas on ADE's motion module


def require_sd1_unet(model, input_name: str = "model"):
    """Return the SD1.x UNet inside a MODEL, or raise naming the input (SDXL, SD3, Flux ... are refused)."""
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    unet = model.model.diffusion_model
    config = getattr(model.model, "model_config", None)
    family = type(config).__name__ if config is not None else type(unet).__name__
    context_dim = (getattr(config, "unet_config", None) or {}).get("context_dim")
    if not isinstance(unet, UNetModel) or context_dim != 768 or getattr(model.model, "adm_channels", 0):
        raise ValueError(
            f"{input_name}: this node needs an SD1.x model (UNet with 768-wide text context); got {family}. "
            "Load an SD1.5 or SD1.x DreamBooth checkpoint with Load Checkpoint.")
    return unet


def require_video_latent(latent: dict, input_name: str = "latent", min_frames: int = 2):
    """Return the ``[F,4,h,w]`` samples of a video LATENT, or raise naming the input."""
    samples = latent["samples"]
    if samples.ndim != 4:
        raise ValueError(f"{input_name}: expected a batch of frame latents [frames, 4, h, w], got shape {tuple(samples.shape)}.")
    if samples.shape[0] < min_frames:
        raise ValueError(
            f"{input_name}: a clip of at least {min_frames} frames is needed, got {samples.shape[0]}. "
            "Load more frames (VE Load Video n_frames) before VAE Encode.")
    return samples


def injected_layer_ops(model):
    """The ``comfy.ops`` layer classes for layers this pack injects into ``model``'s UNet, picked as ComfyUI picks
    its own (``comfy.ops.pick_operations``): the injected weights are float32 (trained, small) and compute in the
    UNet's compute dtype, so they are cast per call when that is half precision. Either choice takes part in
    low-VRAM partial loading (ComfyUI casts such layers' weights to the device per call when they do not fit)."""
    import comfy.ops
    import torch

    compute = model.model.manual_cast_dtype or model.model.get_dtype()
    return comfy.ops.pick_operations(torch.float32, compute, model.load_device, disable_fast_fp8=True)


def add_weight_patches(model, patches: dict, strength: float = 1.0):
    """``model.add_patches`` that also works while another clone of the same UNet is loaded with injected layers.

    ComfyUI only accepts keys found in the live module tree; injected wrappers rename those keys, so patches
    would be dropped silently. The injecting clone is ejected for the check, and a dropped key is an error.
    """
    import contextlib

    import comfy.model_management

    injected = {id(p): p for p in (loaded.model for loaded in comfy.model_management.current_loaded_models)
                if p is not None and p.model is model.model and p.is_injected}
    with contextlib.ExitStack() as stack:
        for patcher in injected.values():
            stack.enter_context(patcher.use_ejected())
        accepted = set(model.add_patches(patches, strength))
    missing = sorted(set(patches) - accepted)
    if missing:
        raise RuntimeError(f"{len(missing)} weight patches did not match the model, e.g. {missing[0]}.")


def set_wrapper(model, wrapper_type: str, key: str, wrapper):
    """Install ``wrapper`` under this pack's ``key``, replacing what an earlier node of this pack put there
    (wrappers under other keys, other packs' included, stay and run around ours)."""
    model.remove_wrappers_with_key(wrapper_type, key)
    model.add_wrapper_with_key(wrapper_type, key, wrapper)


def controlnets(cond_lists):
    """Every ControlNet (each one of every chain) in lists of cond entries; ``None`` lists are skipped."""
    for conds in filter(None, cond_lists):
        for cond in conds:
            control = cond.get("control")
            while control is not None:
                yield control
                control = getattr(control, "previous_controlnet", None)


def _check_control_hint_frames(executor, noise, latent_image, *args, **kwargs):
    """OUTER_SAMPLE wrapper: a ControlNet must get one hint per frame (or a single image for all frames)."""
    frames = latent_image.shape[0]
    for control in controlnets(executor.class_obj.conds.values()):
        hint = getattr(control, "cond_hint_original", None)
        if hint is not None and hint.shape[0] not in (1, frames):
            raise ValueError(
                f"ControlNet hint: {hint.shape[0]} hint frames for a {frames}-frame clip. Give the ControlNet "
                "one hint per frame (the same VE Load Video settings as the clip) or a single image.")
    return executor(noise, latent_image, *args, **kwargs)


def check_video_inputs_when_sampling(model):
    """Make sampling with ``model`` refuse ControlNet hints whose frame count does not match the clip."""
    from comfy.patcher_extension import WrappersMP

    set_wrapper(model, WrappersMP.OUTER_SAMPLE, PatcherKeys.HINT_CHECKS, _check_control_hint_frames)


def cond_chunks(extra_options, batch: int) -> tuple[list[int], int]:
    """Indices of the conditional chunks in an attention batch (``cond_or_uncond`` 0), and frames per chunk."""
    flags = extra_options.get("cond_or_uncond") or [0]
    return [i for i, flag in enumerate(flags) if flag == 0], batch // len(flags)
