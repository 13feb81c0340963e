"""VE_DDIMInvert: deterministic DDIM inversion of a clip, ready for the standard samplers, optionally storing
the attention maps FateZero fuses (kernels/fatezero.py)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import comfy.model_management
import comfy.sample
import comfy.samplers
import comfy.utils
import psutil
import torch
from comfy.ldm.modules.attention import optimized_attention
from comfy_api.latest import io, ui

from ..kernels.fatezero import AttentionStore, apply_probs, attention_probs, captured_blocks, chunk_slice
from ..kernels.inversion import Inversion, inversion_sigmas
from .model_helpers import require_sd1_unet, require_video_latent

InversionType = io.Custom("VE_INVERSION")
AttentionCaptureType = io.Custom("VE_ATTENTION_CAPTURE")
ATTENTION = "attention"  # Inversion.captures key of the AttentionStore


@dataclass(frozen=True)
class AttentionCapture:
    """Which blocks VE_DDIMInvert stores attention for, and how much RAM the store may take (0: 80 % of free RAM)."""

    max_query_tokens: int = 1024
    memory_limit_gb: float = 0.0

    def allocate(self, model, samples: torch.Tensor, conditioning, sigmas: torch.Tensor) -> AttentionStore:
        """The empty store for this inversion, after checking its size against the limit."""
        unet = require_sd1_unet(model)
        frames, _, height, width = samples.shape
        blocks = captured_blocks(unet, height, width, self.max_query_tokens)
        if not blocks:
            raise ValueError(f"attention_capture: no block has at most {self.max_query_tokens} query tokens at "
                             f"{height}x{width} latents; raise max_query_tokens.")
        context = conditioning[0][0].shape[1]
        need = AttentionStore.expected_bytes(blocks, len(sigmas) - 1, frames, context)
        limit = self.memory_limit_gb * 2**30 or 0.8 * psutil.virtual_memory().available
        if need > limit:
            raise MemoryError(
                f"attention_capture: the maps need {need / 2**30:.2f} GiB ({need / (len(sigmas) - 1) / 2**20:.1f} MiB "
                f"per step x {len(sigmas) - 1} steps, {frames} frames) but {limit / 2**30:.2f} GiB are allowed. Lower "
                "steps, the number of frames or the resolution, or max_query_tokens on VE Attention Capture Config "
                "(or raise its memory_limit_gb).")
        return AttentionStore(blocks, sigmas, frames, context)


def cond_chunks(extra_options, batch: int) -> tuple[list[int], int]:
    """Indices of the conditional chunks in the batch (``cond_or_uncond`` 0), and frames per chunk."""
    flags = extra_options.get("cond_or_uncond") or [0]
    return [i for i, flag in enumerate(flags) if flag == 0], batch // len(flags)


def call_attention(inner, q, k, v, extra_options):
    """The block's own attn1 replace patch (e.g. cross-frame attention), or ComfyUI's fast kernel."""
    if inner is not None:
        return inner(q, k, v, extra_options)
    return optimized_attention(q, k, v, extra_options["n_heads"])


def replace_patch(model, kind: str, key: tuple):
    """The attn1/attn2 replace patch ComfyUI would call for block ``key`` (full key first, as ComfyUI does)."""
    patches = model.model_options.get("transformer_options", {}).get("patches_replace", {}).get(kind, {})
    return patches.get(key, patches.get(key[:2]))


class SharedPatch:
    """Patches share the (large) store by reference, also under a deep-copying clone."""

    def __deepcopy__(self, memo):
        return self


class SelfAttentionCapture(SharedPatch):
    """attn1 replace patch during inversion: records the conditional queries and keys, attention unchanged."""

    def __init__(self, store: AttentionStore, key: tuple, inner=None):
        self.store, self.key, self.inner = store, key, inner

    def __call__(self, q, k, v, extra_options):
        chunks, frames = cond_chunks(extra_options, q.shape[0])
        if chunks:
            level = self.store.level(float(extra_options["sigmas"].max()), capturing=True)
            part = chunk_slice(chunks[0], frames)
            self.store.put_self(self.key, level, q[part], k[part])
        return call_attention(self.inner, q, k, v, extra_options)


class CrossAttentionCapture(SharedPatch):
    """attn2 replace patch during inversion: explicit softmax, the conditional maps recorded."""

    def __init__(self, store: AttentionStore, key: tuple):
        self.store, self.key = store, key

    def __call__(self, q, k, v, extra_options):
        probs = attention_probs(q, k, extra_options["n_heads"])
        chunks, frames = cond_chunks(extra_options, q.shape[0])
        if chunks:
            level = self.store.level(float(extra_options["sigmas"].max()), capturing=True)
            self.store.put_cross(self.key, level, probs[chunk_slice(chunks[0], frames)])
        return apply_probs(probs, v).to(q.dtype)


def with_attention_capture(model, store: AttentionStore):
    """A clone of ``model`` that fills ``store`` while it inverts; other blocks and the temporal layers untouched."""
    clone = model.clone()
    for key in store.blocks:
        if replace_patch(model, "attn2", key) is not None:
            raise ValueError(f"model: block {key} already has a cross-attention replace patch; attention capture "
                             "needs that slot. Capture on the model before that patch is applied.")
        clone.set_model_attn1_replace(SelfAttentionCapture(store, key, replace_patch(model, "attn1", key)), *key)
        clone.set_model_attn2_replace(CrossAttentionCapture(store, key), *key)
    return clone


def ddim_invert(model, latent: dict, positive, steps: int, capture: AttentionCapture | None = None) -> Inversion:
    """Invert ``latent`` with ``model`` along SD's DDIM timesteps (981 ... 1 for 50 steps), no CFG.

    With ``capture``, the attention maps of the conditional pass go into ``captures["attention"]``.
    """
    samples = comfy.sample.fix_empty_latent_channels(model, latent["samples"])
    sampling = model.get_model_object("model_sampling")
    sigmas = inversion_sigmas(comfy.samplers.calculate_sigmas(sampling, "ddim_uniform", steps).cpu())
    store = None
    if capture is not None:
        store = capture.allocate(model, samples, positive, sigmas)
        logging.info("VE_DDIMInvert: storing attention maps, %s", describe_store(store))
        model = with_attention_capture(model, store)
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
        inversion.captures[ATTENTION] = store
    return inversion


def describe_store(store: AttentionStore) -> str:
    return (f"{store.nbytes / 2**20:.1f} MiB ({store.nbytes / store.steps / 2**20:.2f} MiB per step, {store.steps} steps, "
            f"{store.frames} frames, {len(store.blocks)} blocks of at most "
            f"{max(b.tokens for b in store.blocks.values())} tokens), fp16 on the CPU")


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
                AttentionCaptureType.Input(
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
        require_video_latent(latent)
        if conditioning is None:
            if clip is None:
                raise ValueError("conditioning: connect the inversion prompt's CONDITIONING, or a CLIP to use the "
                                 "empty prompt (Tune-A-Video's default).")
            conditioning = clip.encode_from_tokens_scheduled(clip.tokenize(""))
        inversion = ddim_invert(model, latent, conditioning, steps, attention_capture)
        store = inversion.captures.get(ATTENTION)
        text = f"attention maps: {describe_store(store)}" if store is not None else None
        return io.NodeOutput({"samples": inversion.latents[-1].clone()}, inversion,
                             ui=ui.PreviewText(text) if text else None)


NODES = [DDIMInvert]
