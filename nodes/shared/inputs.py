"""Input guards the nodes share: each returns what it checked or raises naming the input and the fix."""

from __future__ import annotations

import contextlib


# The base-model families the nodes know, as the docs' tables name them.
SD1, SD2, SDXL = "SD1.x", "SD2.x", "SDXL"
TUNING_FAMILIES = (SD1, SD2)  # nodes that train or add temporal layers: the official Tune-A-Video architecture
TRAINING_FREE_FAMILIES = (SD1, SD2, SDXL)  # attention patches and inversion


def unet_family(model) -> str | None:
    """The family of the UNet inside a MODEL (``SD1``, ``SD2`` or ``SDXL``), or None for any other model.

    As ComfyUI's model detection files them (comfy/supported_models.py): SD1.x has a 768-wide text context, SD2.x
    a 1024-wide one with linear projections (eps or v-prediction alike), SDXL is ComfyUI's SDXL model class (also
    its distilled variants). Models with added conditioning other than SDXL's (unCLIP, refiner) are none of them."""
    import comfy.model_base
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    if not isinstance(getattr(model.model, "diffusion_model", None), UNetModel):
        return None
    if type(model.model) is comfy.model_base.SDXL:
        return SDXL
    config = getattr(getattr(model.model, "model_config", None), "unet_config", None) or {}
    if config.get("adm_in_channels") or getattr(model.model, "adm_channels", 0):
        return None
    if config.get("context_dim") == 768 and not config.get("use_linear_in_transformer"):
        return SD1
    if config.get("context_dim") == 1024 and config.get("use_linear_in_transformer"):
        return SD2
    return None


def require_unet(model, families: tuple[str, ...] = TUNING_FAMILIES, input_name: str = "model"):
    """Return the UNet inside a MODEL of one of ``families``, or raise naming the input, the model's family (Flux,
    SD3, video models ... as ComfyUI names them) and the families this node supports."""
    family = unet_family(model)
    if family in families:
        return model.model.diffusion_model
    config = getattr(model.model, "model_config", None)
    name = type(config).__name__ if config is not None else type(model.model.diffusion_model).__name__
    if family is not None and family != name:
        name = f"{family} ({name})"
    raise ValueError(
        f"{input_name}: this node supports {', '.join(families)} models (eps or v-prediction); got {name}. "
        "Load a supported checkpoint with Load Checkpoint.")


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


@contextlib.contextmanager
def advising(advice: str):
    """Re-raise a kernel's ValueError (about its own parameters) with what to do in the graph appended."""
    try:
        yield
    except ValueError as error:
        raise ValueError(f"{error} {advice}") from error
