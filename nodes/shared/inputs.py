"""Input guards the nodes share: each returns what it checked or raises naming the input and the fix."""

from __future__ import annotations

import contextlib


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


@contextlib.contextmanager
def advising(advice: str):
    """Re-raise a kernel's ValueError (about its own parameters) with what to do in the graph appended."""
    try:
        yield
    except ValueError as error:
        raise ValueError(f"{error} {advice}") from error
