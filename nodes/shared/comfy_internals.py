"""Every ComfyUI internal the pack relies on that is not the public V3 API (``comfy_api.latest``), each behind
one small named function: after a ComfyUI update this is the one file to check, and tests/test_comfy_internals.py
has a test per function that fails when ComfyUI changes what it relies on.

Not here: the UNet's resampling layer class names, which the kernels match without importing ComfyUI
(kernels/unet_layout.py ``DOWNSAMPLE``/``UPSAMPLE``; the same test file checks them against ComfyUI's UNet)."""

from __future__ import annotations

import contextlib
import copy
import os

from comfy.patcher_extension import CallbacksMP
from comfy_extras.nodes_custom_sampler import Guider_Basic


# ----- loaded models -------------------------------------------------------------------------------------------------

def loaded_patchers() -> list:
    """The ModelPatchers ComfyUI holds loaded now (``comfy.model_management.current_loaded_models``)."""
    import comfy.model_management

    return [loaded.model for loaded in comfy.model_management.current_loaded_models if loaded.model is not None]


def injected_clones_of(model) -> list:
    """The loaded clones of ``model``'s base model whose injections (``ModelPatcher.is_injected``) are in place."""
    return list({id(p): p for p in loaded_patchers() if p.model is model.model and p.is_injected}.values())


def ejected(patcher):
    """Context manager: ``patcher``'s injections taken out while it runs (``ModelPatcher.use_ejected``)."""
    return patcher.use_ejected()


def unpatched_unet_weights(model) -> dict:
    """The MODEL's UNet weights as its file holds them, by UNet key (``input_blocks.1.1...``). A loaded clone of the
    same UNet may have applied its weight patches in place (``ModelPatcher.backup`` keeps the originals) and
    injected layers that rename keys (ejected while the keys are read)."""
    with contextlib.ExitStack() as stack:
        for patcher in injected_clones_of(model):
            stack.enter_context(ejected(patcher))
        weights = model.model.diffusion_model.state_dict()
    for patcher in loaded_patchers():
        if patcher.model is model.model:
            for key, saved in patcher.backup.items():
                if key.removeprefix("diffusion_model.") in weights:
                    weights[key.removeprefix("diffusion_model.")] = saved.weight
    return weights


def diffusers_to_ldm_unet_keys(model) -> dict[str, str]:
    """diffusers UNet weight name -> the MODEL's UNet weight name (``comfy.utils.unet_to_diffusers`` on the MODEL's
    UNet config), e.g. ``down_blocks.0.attentions.0.proj_in.weight`` -> ``input_blocks.1.1.proj_in.weight``."""
    import comfy.utils

    return comfy.utils.unet_to_diffusers(model.model.model_config.unet_config)


# ----- weight functions ----------------------------------------------------------------------------------------------

def weight_functions(module) -> list:
    """The functions ComfyUI applies to ``module``'s weight when it casts it per call (``module.weight_function``)."""
    return list(getattr(module, "weight_function", None) or [])


def set_weight_functions(module, functions: list) -> None:
    module.weight_function = list(functions)


# ----- wrappers ------------------------------------------------------------------------------------------------------

def wrapped_guider(executor):
    """The CFGGuider an OUTER_SAMPLE wrapper runs around (``executor.class_obj``): its ``conds``, ``model_options``."""
    return executor.class_obj


def wrapped_base_model(executor):
    """The BaseModel an APPLY_MODEL wrapper runs around (``executor.class_obj``): ``process_latent_in`` etc."""
    return executor.class_obj


# ----- ControlNet and conds ------------------------------------------------------------------------------------------

def controlnet_chain(control):
    """``control`` and every ControlNet chained below it (``previous_controlnet``)."""
    while control is not None:
        yield control
        control = getattr(control, "previous_controlnet", None)


def controlnet_hint(control):
    """The hint images a ControlNet was given (``cond_hint_original``), None if it has none."""
    return getattr(control, "cond_hint_original", None)


def set_controlnet_hint(control, hint) -> None:
    """Give a ControlNet other hint images; it rescales them (``cond_hint``) at its next call."""
    control.cond_hint_original, control.cond_hint = hint, None


def model_cond_rows(model_cond, rows):
    """A copy of a model cond (``comfy.conds.CONDRegular`` ...) holding only ``rows`` of its tensor (``_copy_with``)."""
    return model_cond._copy_with(model_cond.cond[rows])


# ----- attention replace patches -------------------------------------------------------------------------------------

def replace_patches(model_options: dict, kind: str) -> dict:
    """The ``kind`` ("attn1", "attn2") replace patches in model options, by block key (read only; may be empty)."""
    return model_options.get("transformer_options", {}).get("patches_replace", {}).get(kind, {})


COPY_WRAPPED_SLOTS = "video_edit_copy_wrapped_slots"  # ON_CLONE callback key


def wrap_replace_patches(clone, kind: str, wrap) -> None:
    """Replace ``clone``'s ``kind`` patch dict (which ``set_model_patch_replace`` created) by ``wrap(dict)``, on
    every clone made of it too.

    ComfyUI 0.3.75's ``ModelPatcher.clone`` deep-copies ``model_options``: the clone gets a ``wrap`` dict of copied
    patches. Newer ComfyUI copies only dicts and lists (``comfy.utils.deepcopy_list_dict``): the clone would get a
    plain dict holding the same patch objects, so a pack's ``.add`` on a clone's patch would change the original's.
    A clone callback gives such a clone what 0.3.75 gives it."""
    slots = clone.model_options["transformer_options"]["patches_replace"]
    slots[kind] = wrap(slots[kind])
    if not clone.get_callbacks(CallbacksMP.ON_CLONE, COPY_WRAPPED_SLOTS):
        clone.add_callback_with_key(CallbacksMP.ON_CLONE, COPY_WRAPPED_SLOTS, _copy_wrapped_slots)


def _copy_wrapped_slots(original, clone) -> None:
    """ON_CLONE: each wrapped patch dict of ``original`` that ``clone`` got as another type becomes a dict of that
    type holding deep copies of its patches (as ``copy.deepcopy`` of the model options makes them)."""
    for kind, slots in original.model_options.get("transformer_options", {}).get("patches_replace", {}).items():
        copied = replace_patches(clone.model_options, kind)
        if type(slots) is not dict and type(copied) is not type(slots):
            clone.model_options["transformer_options"]["patches_replace"][kind] = type(slots)(
                {key: copy.deepcopy(patch) for key, patch in copied.items()})


# ----- model folders -------------------------------------------------------------------------------------------------

def register_model_folder(name: str, extensions: set[str]) -> None:
    """Make ``models/<name>/`` a ComfyUI model folder (``folder_paths.folder_names_and_paths``), unless it is one."""
    import folder_paths

    if name not in folder_paths.folder_names_and_paths:
        folder_paths.folder_names_and_paths[name] = ([os.path.join(folder_paths.models_dir, name)], set(extensions))


# ----- guiders and progress ------------------------------------------------------------------------------------------

# A guider over one conditioning; subclasses may override ``predict_noise(x, timestep, model_options, seed)`` and
# keep conds of their own (set_guider_conds).
BasicGuider = Guider_Basic


def set_guider_conds(guider, conds: dict) -> None:
    """Name-keyed conditionings of a guider, processed as sampling does (``CFGGuider.inner_set_conds``)."""
    guider.inner_set_conds(conds)


def predict_without_cfg(guider, x, timestep, conds, model_options: dict, seed):
    """The model's prediction for ``conds`` alone, CFG 1 (``comfy.samplers.sampling_function``)."""
    import comfy.samplers

    return comfy.samplers.sampling_function(guider.inner_model, x, timestep, None, conds, 1.0,
                                            model_options=model_options, seed=seed)


def progress_bars_enabled() -> bool:
    """Whether ComfyUI shows console progress bars (``comfy.utils.PROGRESS_BAR_ENABLED``)."""
    import comfy.utils

    return comfy.utils.PROGRESS_BAR_ENABLED
