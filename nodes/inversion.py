"""VE_DDIMInvert: deterministic DDIM inversion of a clip, ready for the standard samplers, optionally recording
what a capture config asks for (FateZero's attention maps: nodes/fatezero_capture.py)."""

from __future__ import annotations

import comfy.sample
import comfy.samplers
import comfy.utils
import torch
from comfy_api.latest import io, ui

from ..kernels.inversion import Inversion, inversion_sigmas
from .model_helpers import require_sd1_unet, require_video_latent
from .socket_types import CaptureType, InversionType


def ddim_invert(model, latent: dict, positive, steps: int, capture=None) -> Inversion:
    """Invert ``latent`` with ``model`` along SD's DDIM timesteps (981 ... 1 for 50 steps), no CFG.

    With ``capture``, ``capture.attach(model, samples, positive, sigmas)`` gives the model to invert with and the
    store it fills, kept as ``captures[capture.key]`` once ``store.require_complete()`` passes.
    """
    samples = comfy.sample.fix_empty_latent_channels(model, latent["samples"])
    sampling = model.get_model_object("model_sampling")
    sigmas = inversion_sigmas(comfy.samplers.calculate_sigmas(sampling, "ddim_uniform", steps).cpu())
    store = None
    if capture is not None:
        model, store = capture.attach(model, samples, positive, sigmas)
    base_model = model.model
    levels = []
    progress = comfy.utils.ProgressBar(steps)

    def record(step, denoised, x, total_steps):
        levels.append(base_model.process_latent_out(x).cpu().float())
        progress.update_absolute(step + 1, total_steps)

    noise = torch.zeros_like(samples)
    result = comfy.sample.sample_custom(model, noise, 1.0, comfy.samplers.sampler_object("euler"), sigmas,
                                        positive, positive, samples, callback=record, disable_pbar=True)
    levels.append(result.cpu().float())
    inversion = Inversion(sigmas=sigmas.float(), latents=torch.stack(levels))
    if store is not None:
        store.require_complete()
        inversion.captures[capture.key] = store
    return inversion


class DDIMInvert(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="VE_DDIMInvert",
            display_name="DDIM Invert (video)",
            category="video_edit/inversion",
            description=(
                "Runs the clip backwards through the model along SD's DDIM timesteps (981 ... 1 for 50 steps) with "
                "no CFG, giving the noise that regenerates it. Sample the edit from 'latent' with a standard sampler "
                "with noise addition off, the same step count and a DDIM-equivalent schedule (KSampler Advanced: "
                "add_noise disable, sampler ddim, scheduler ddim_uniform). 'inversion' keeps the clip at every step "
                "for TokenFlow and FateZero."),
            inputs=[
                io.Model.Input("model"),
                io.Latent.Input("latent", tooltip="The source clip, VAE-encoded (frames as batch)."),
                io.Int.Input("steps", default=50, min=1, max=1000),
                io.Conditioning.Input("conditioning", optional=True,
                                      tooltip="Inversion prompt; the empty prompt (official) when not connected."),
                io.Clip.Input("clip", optional=True, tooltip="Encodes the empty prompt when no conditioning is connected."),
                CaptureType.Input(
                    "attention_capture", optional=True,
                    tooltip="From VE Attention Capture Config: also store the attention maps FateZero fuses."),
            ],
            outputs=[
                io.Latent.Output(display_name="latent"),
                InversionType.Output(display_name="inversion"),
            ],
        )

    @classmethod
    def execute(cls, model, latent, steps, conditioning=None, clip=None, attention_capture=None) -> io.NodeOutput:
        require_sd1_unet(model)
        require_video_latent(latent)
        if conditioning is None:
            if clip is None:
                raise ValueError("conditioning: connect the inversion prompt's CONDITIONING, or a CLIP to use the "
                                 "empty prompt (Tune-A-Video's default).")
            conditioning = clip.encode_from_tokens_scheduled(clip.tokenize(""))
        inversion = ddim_invert(model, latent, conditioning, steps, attention_capture)
        stored = [f"{key}: {store.describe()}" for key, store in inversion.captures.items()]
        return io.NodeOutput({"samples": inversion.latents[-1].clone()}, inversion,
                             ui=ui.PreviewText("\n".join(stored)) if stored else None)


NODES = [DDIMInvert]
