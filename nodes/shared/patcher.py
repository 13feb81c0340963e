"""What this pack hangs on a ModelPatcher: the keys it uses, wrappers, weight patches that tolerate injection, the
layer classes of injected layers, the ControlNet hint check (attention slots: attention_slots.py)."""

from __future__ import annotations

from .comfy_internals import controlnet_chain, controlnet_hint, ejected, injected_clones_of, wrapped_guider


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

    with contextlib.ExitStack() as stack:
        for patcher in injected_clones_of(model):
            stack.enter_context(ejected(patcher))
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
            yield from controlnet_chain(cond.get("control"))


def _check_control_hint_frames(executor, noise, latent_image, *args, **kwargs):
    """OUTER_SAMPLE wrapper: a ControlNet must get one hint per frame (or a single image for all frames)."""
    frames = latent_image.shape[0]
    for control in controlnets(wrapped_guider(executor).conds.values()):
        hint = controlnet_hint(control)
        if hint is not None and hint.shape[0] not in (1, frames):
            raise ValueError(
                f"ControlNet hint: {hint.shape[0]} hint frames for a {frames}-frame clip. Give the ControlNet "
                "one hint per frame (the same VE Load Video settings as the clip) or a single image.")
    return executor(noise, latent_image, *args, **kwargs)


def check_video_inputs_when_sampling(model):
    """Make sampling with ``model`` refuse ControlNet hints whose frame count does not match the clip."""
    from comfy.patcher_extension import WrappersMP

    set_wrapper(model, WrappersMP.OUTER_SAMPLE, PatcherKeys.HINT_CHECKS, _check_control_hint_frames)
