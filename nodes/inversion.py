"""VE_DDIMInvert: deterministic DDIM inversion of a clip, ready for the standard samplers, optionally recording
what a capture config asks for (FateZero's attention maps: nodes/fatezero_capture.py)."""

from __future__ import annotations

import comfy.sample
import comfy.samplers
import comfy.utils
import torch
from comfy_api.latest import io, ui

from ..kernels.inversion import Inversion, inversion_sigmas, invert
from .shared.inputs import TRAINING_FREE_FAMILIES, require_unet, require_video_latent
from .shared.socket_types import CaptureType, InversionCapture, InversionType, VideoEditNode
from .shared.schema_fields import TUNE_A_VIDEO_ALIASES, TOKENFLOW_ALIASES, FATEZERO_ALIASES, VIDEO_EDIT_ALIASES, search_aliases


METHODS = ("ddim", "fixed_point")  # the official inversion, and the one the DDIM sampler undoes


def sampling_levels(sampling, steps: int) -> list[float]:
    """The sigmas a DDIM sampler with ``steps`` ddim_uniform steps visits, ascending, the clean level first."""
    return inversion_sigmas(comfy.samplers.calculate_sigmas(sampling, "ddim_uniform", steps).cpu(),
                            float(sampling.sigmas[0]))


def kept_levels(levels: list[float], sampling, steps: int, keep_steps: int) -> list[int]:
    """Indices into ``levels`` of the ones a ``keep_steps``-step sampler visits (all of them for 0)."""
    if keep_steps in (0, steps):
        return list(range(len(levels)))
    wanted = sampling_levels(sampling, keep_steps)[1:]
    index = {sigma: k for k, sigma in enumerate(levels)}
    if keep_steps > steps or any(sigma not in index for sigma in wanted):
        raise ValueError(
            f"keep_steps: a {keep_steps}-step DDIM sampler visits noise levels that a {steps}-step inversion does not "
            f"reach. Use a keep_steps whose timestep spacing is a multiple of the inversion's (1000/{steps}), e.g. "
            f"TokenFlow's steps 500 with keep_steps 50, or 0 to keep every level.")
    return [0] + [index[sigma] for sigma in wanted]


def ddim_invert(model, latent: dict, positive, steps: int, capture: InversionCapture | None = None, keep_steps: int = 0, method: str = "ddim",
                iterations: int = 3) -> Inversion:
    """Invert ``latent`` with ``model``, no CFG, along the levels ComfyUI's ddim_uniform scheduler visits (SD's DDIM
    timesteps 1, 21, ..., 981 for 50 steps): ``ddim`` as the official code does, ``fixed_point`` so that the DDIM
    sampler undoes it (each step's first call on the latent extrapolated with the previous step's noise, then
    ``iterations`` extra model calls per step; kernels/inversion.py).

    ``keep_steps`` keeps only the levels a sampler with that many steps visits (0: all). With ``capture``,
    ``capture.recording_model(model, samples, positive, sigmas)`` gives the model to invert with and the store it fills, kept
    as ``captures[capture.key]`` once ``store.require_complete()`` passes.
    """
    samples = comfy.sample.fix_empty_latent_channels(model, latent["samples"])
    if method not in METHODS:
        raise ValueError(f"method: {method!r} is not one of {', '.join(METHODS)}.")
    sampling = model.get_model_object("model_sampling")
    levels = sampling_levels(sampling, steps)
    if method == "fixed_point":
        levels[0] = 0.0  # the sampler's last step lands on sigma 0: start the exact inverse there
    kept = kept_levels(levels, sampling, steps, keep_steps)
    sigmas = torch.tensor([levels[k] for k in kept])
    store = None
    if capture is not None:
        model, store = capture.recording_model(model, samples, positive, sigmas)
    base_model = model.model
    stored = {}
    progress = comfy.utils.ProgressBar(len(levels) - 1)

    def record(k, x):
        if k in kept:
            stored[k] = base_model.process_latent_out(x).cpu().float()
        progress.update_absolute(k + 1, len(levels) - 1)

    def run_inversion(model_k, x, sigmas, extra_args=None, callback=None, disable=None):
        ones = x.new_ones([x.shape[0]])

        def denoise(x_in, sigma):
            return model_k(x_in, sigma * ones, **(extra_args or {}))

        fixed_point = method == "fixed_point"
        return invert(denoise, x, levels, record, iterations if fixed_point else 0, extrapolate=fixed_point)

    with torch.no_grad():
        result = comfy.sample.sample_custom(model, torch.zeros_like(samples), 1.0,
                                            comfy.samplers.KSAMPLER(run_inversion), torch.tensor(levels), positive,
                                            positive, samples, disable_pbar=True)
    stored[len(levels) - 1] = noisiest = result.cpu().float()
    inversion = Inversion(sigmas=sigmas, latents=torch.stack([stored[k] for k in kept]), noisiest=noisiest,
                          noisiest_sigma=levels[-1], method=method)
    if store is not None:
        store.require_complete()
        inversion.captures[capture.key] = store
    return inversion


class DDIMInvert(VideoEditNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="VE_DDIMInvert",
            display_name="VE DDIM Invert",
            category="video_edit/sampling",
            **search_aliases(VIDEO_EDIT_ALIASES, TUNE_A_VIDEO_ALIASES, TOKENFLOW_ALIASES, FATEZERO_ALIASES, ("ddim inversion", "invert", "inversion")),
            description=(
                "Runs the clip backwards through the model as the official DDIM inversion does (noise predicted at "
                "the next level's timestep, from the clean level of SD's schedule) along SD's DDIM timesteps "
                "(1 ... 981 for 50 steps), with no CFG, giving the noise that regenerates it. Sample the edit from "
                "'latent' with a standard sampler with noise addition off, the same step count and a DDIM-equivalent "
                "schedule (KSampler Advanced: add_noise disable, sampler ddim, scheduler ddim_uniform). 'inversion' "
                "keeps the clip at every level for TokenFlow and FateZero. method fixed_point inverts so that this "
                "sampler gives the clip back almost exactly, at 1 + iterations model calls per step (the fast "
                "recipes: fixed_point with iterations 0 at TokenFlow's 50 sampling steps instead of 500 DDIM steps; "
                "iterations 1 at 20 steps for FateZero and Tune-A-Video)."),
            inputs=[
                io.Model.Input("model", tooltip="The model the edit samples with (tuned, or with cross-frame attention)."),
                io.Latent.Input("latent", tooltip="The source clip, VAE-encoded (frames as batch)."),
                io.Int.Input("steps", default=50, min=1, max=1000,
                             tooltip="Inversion steps: the sampler must use the same count (official: 50; "
                                     "TokenFlow inverts 500 and keeps 50)."),
                io.Combo.Input("method", options=list(METHODS), default="ddim", optional=True,
                               tooltip="ddim: the official inversion. fixed_point: each step solved so that the "
                                       "DDIM sampler undoes it, starting from the latent extrapolated with the "
                                       "previous step's noise (reconstructs far better; 1 + iterations model calls "
                                       "per step)."),
                io.Int.Input("iterations", default=3, min=0, max=50, optional=True,
                             tooltip="fixed_point: refinements per step (Anderson-accelerated), each one more "
                                     "model call. 0: one call per step, as many as ddim."),
                io.Int.Input("keep_steps", default=0, min=0, max=1000, optional=True,
                             tooltip="Keep the clip only at the levels a sampler with this many steps visits "
                                     "(TokenFlow: invert 500 steps, keep 50, sample 50). 0 keeps every level."),
                io.Conditioning.Input("conditioning", optional=True,
                                      tooltip="Inversion prompt; the empty prompt (official) when not connected."),
                io.Clip.Input("clip", optional=True, tooltip="Encodes the empty prompt when no conditioning is connected."),
                CaptureType.Input(
                    "attention_capture", optional=True,
                    tooltip="From VE Attention Capture Config: also store the attention maps FateZero fuses."),
            ],
            outputs=[
                io.Latent.Output(display_name="latent",
                                 tooltip="The clip at the noisiest level: sample it back with the inversion's step "
                                         "count. With keep_steps, TokenFlow builds its own start latent."),
                InversionType.Output(display_name="inversion", tooltip="The clip at every level (and the stored attention), "
                                                                 "for VE TokenFlow, VE Attention Fusion or VE Motion "
                                                                 "Noise Prior."),
            ],
        )

    @classmethod
    def execute(cls, model, latent, steps, method="ddim", iterations=3, keep_steps=0, conditioning=None, clip=None,
                attention_capture=None) -> io.NodeOutput:
        require_unet(model, TRAINING_FREE_FAMILIES)
        require_video_latent(latent)
        if conditioning is None:
            if clip is None:
                raise ValueError("conditioning: connect the inversion prompt's CONDITIONING, or a CLIP to use the "
                                 "empty prompt (Tune-A-Video's default).")
            conditioning = clip.encode_from_tokens_scheduled(clip.tokenize(""))
        inversion = ddim_invert(model, latent, conditioning, steps, attention_capture, keep_steps, method, iterations)
        made = f"method: {method}" + (f", {iterations} iterations per step" if method == "fixed_point" else "")
        stored = [f"{key}: {store.describe()}" for key, store in inversion.captures.items()]
        return io.NodeOutput({"samples": inversion.noisiest.clone()}, inversion,
                             ui=ui.PreviewText("\n".join([made] + stored)))


NODES = [DDIMInvert]
