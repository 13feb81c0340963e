"""VE_TokenFlow: training-free video editing by keyframe extended attention and token-correspondence propagation.

Every model call of a standard sampler becomes TokenFlow's step (kernels/tokenflow.py): an APPLY_MODEL wrapper
prepends the source branch (the inverted clip at the current sigma, inversion prompt) to the sampler's batch,
runs a keyframe pass, then a pass over all frames, and drops the source rows. For long clips
(``keyframes_per_pass``) it runs those two passes for a few keyframes and their frames at a time. Self-attention
patches do the extended attention and the propagation; an injected wrapper around one decoder conv does the conv
injection.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
from comfy.patcher_extension import PatcherInjection, WrappersMP
from comfy_api.latest import io
from torch import nn

from ..kernels.inversion import Inversion
from ..kernels.schedule import in_window, matching, nearest
from ..kernels.tokenflow import (copy_source_branch, keyframe_attention, keyframe_schedule, pnp_output_block,
                                 pnp_resnet, propagate, same_token_count, start_latent, with_source_branch)
from ..kernels.unet_layout import iter_transformer_blocks
from .shared.animatediff import fit_motion_module_per_call
from .shared.attention_slots import TOKENFLOW, SlotPatch, guard_slots, install
from .shared.comfy_internals import wrapped_base_model
from .shared.inputs import TRAINING_FREE_FAMILIES, require_unet
from .shared.patcher import PatcherKeys, check_video_inputs_when_sampling, set_wrapper
from .shared.socket_types import InversionType, VideoEditNode
from .shared.unet_call import TOKENFLOW_STEP
from .shared.schema_fields import TOKENFLOW_ALIASES, search_aliases



@dataclass
class TokenFlowStep:
    """What the two UNet passes of one model call share; set by the wrapper, read by the patches."""

    step: int
    keyframes: torch.Tensor  # the step's keyframe of every chunk
    chunks: int  # branches in the batch: the source, then the sampler's cond/uncond chunks
    chunk_size: int
    inject_conv: bool
    inject_qk: bool
    keyframe_pass: bool = True
    first_chunk: int = 0  # the chunk of the pass's first keyframe
    first_frame: int = 0  # the pass's first frame
    tokens: torch.Tensor | None = None  # the source branch's self-attention input in the current block
    stored: dict = field(default_factory=dict)  # block -> (keyframe source tokens, keyframe attention outputs)


def record_tokens(n, context, value, extra_options):
    """attn1_patch: keeps the source branch's norm1 output of the current block for TokenFlowAttention."""
    step = TOKENFLOW_STEP.get()
    if step is not None:
        step.tokens = n[:n.shape[0] // step.chunks]
    return n, context, value


class TokenFlowAttention(SlotPatch):
    """attn1 replace patch of one block: keyframe extended attention (with q/k injection where ``inject_qk``), then
    propagation.

    Outside VE_TokenFlow's sampling (e.g. inverting with this MODEL) attention is plain. Attention is computed by
    the patch another pack had put in the block's slot (``inner``), if any, else by ComfyUI's kernel; propagated
    frames take their features from the keyframes, so that patch shapes them too.
    """

    role = TOKENFLOW

    def __init__(self, inject_qk: bool):
        self.inject_qk = inject_qk

    def __call__(self, q, k, v, extra_options):
        step = TOKENFLOW_STEP.get()
        heads = extra_options["n_heads"]
        block = (*extra_options["block"], extra_options.get("block_index", 0))
        attention = self.attention_function(extra_options)
        if step is None:
            return attention(q, k, v, heads)
        if step.keyframe_pass:
            if step.inject_qk and self.inject_qk:
                q, k = copy_source_branch(q, step.chunks), copy_source_branch(k, step.chunks)
            out = keyframe_attention(q, k, v, heads, step.chunks, attention=attention)
            step.stored[block] = (step.tokens, out)
            return out
        keyframe_tokens, keyframe_outputs = step.stored.pop(block)
        return propagate(step.tokens, keyframe_tokens, keyframe_outputs, step.chunk_size, step.first_frame,
                         step.first_chunk)


class SourceFeatureInjection(nn.Module):
    """Wraps a ResNet's last conv: inside the feature window every branch gets the source branch's output."""

    def __init__(self, conv: nn.Module):
        super().__init__()
        self.conv = conv

    def forward(self, x):
        out = self.conv(x)
        step = TOKENFLOW_STEP.get()
        return copy_source_branch(out, step.chunks) if step is not None and step.inject_conv else out


def _inject(patcher):
    layers = pnp_resnet(patcher.model.diffusion_model).out_layers
    layers[len(layers) - 1] = SourceFeatureInjection(layers[len(layers) - 1])


def _eject(patcher):
    layers = pnp_resnet(patcher.model.diffusion_model).out_layers
    if isinstance(layers[len(layers) - 1], SourceFeatureInjection):
        layers[len(layers) - 1] = layers[len(layers) - 1].conv


class TokenFlowSampling:
    """APPLY_MODEL wrapper: the source branch and TokenFlow's keyframe and propagation passes in every call."""

    def __init__(self, inversion: Inversion, source_context: torch.Tensor, chunk_size: int, attention_window: float,
                 feature_window: float, seed: int, keyframes_per_pass: int = 0):
        self.inversion = inversion
        self.keyframes_per_pass = keyframes_per_pass
        self.source_context = source_context
        self.chunk_size = chunk_size
        self.attention_window = attention_window
        self.feature_window = feature_window
        self.seed = seed

    def schedule_position(self, sigma: float, sample_sigmas) -> tuple[int, int]:
        """(step index, steps) of the sampler's schedule; every sampled sigma must be an inversion level."""
        levels = self.inversion.sigmas
        schedule = levels.flip(0)[:-1] if sample_sigmas is None else sample_sigmas.detach().cpu().float()[:-1]
        if any(matching(levels, float(s)) is None for s in schedule):
            raise ValueError(
                f"inversion: the sampler runs {len(schedule)} steps whose noise levels are not the inversion's "
                f"{self.inversion.steps} steps. Sample with steps={self.inversion.steps} and scheduler ddim_uniform "
                "(KSampler Advanced: add_noise disable, sampler ddim), or invert with the sampler's step count.")
        return nearest(schedule, sigma), len(schedule)

    def check_video(self, x: torch.Tensor, frames: int, transformer_options):
        if transformer_options.get("context_window") is not None:
            raise ValueError("model: VE TokenFlow got a MODEL with context windows; it streams long clips itself. "
                             "Connect the model without context windows and set keyframes_per_pass instead.")
        have = (self.inversion.frames, *self.inversion.latents.shape[-2:])
        want = (frames, *x.shape[-2:])
        if have != want:
            raise ValueError(
                f"inversion: it was made from a clip of {have[0]} frames of {have[1]}x{have[2]} latents, but the "
                f"sampler's latent has {want[0]} frames of {want[1]}x{want[2]}. Invert the clip you edit (VE DDIM "
                "Invert on the same LATENT) and sample from VE TokenFlow's latent.")

    def __call__(self, executor, x, t, c_concat, c_crossattn, control, transformer_options, **kwargs):
        flags = list(transformer_options.get("cond_or_uncond") or [0])
        branches, frames = len(flags), x.shape[0] // len(flags)
        self.check_video(x, frames, transformer_options)
        sigma = float(t.max())
        step, steps = self.schedule_position(sigma, transformer_options.get("sample_sigmas"))
        keyframes = keyframe_schedule(frames, self.chunk_size, steps, self.seed)[step]
        source = wrapped_base_model(executor).process_latent_in(self.inversion.latent_at(sigma)).to(x)
        context, source_context = same_token_count(c_crossattn, self.source_context.to(c_crossattn))
        options = transformer_options.copy()
        options["cond_or_uncond"] = [0] + flags
        options["uuids"] = [PatcherKeys.TOKENFLOW_SOURCE] + list(transformer_options.get("uuids") or [None] * branches)

        def run(rows):
            """One UNet pass over ``rows`` of the clip, in every branch (the source first)."""
            def stack(batch, source_rows):
                return with_source_branch(batch, source_rows, branches, rows)

            extra = {name: stack(value, value[:frames]) if torch.is_tensor(value) and value.shape[0] == x.shape[0]
                     else value for name, value in kwargs.items()}
            controls = None if control is None else {
                name: [None if c is None else stack(c, torch.zeros_like(c[:frames])) for c in values]
                for name, values in control.items()}
            return executor(stack(x, source), stack(t, t[:frames]),
                            None if c_concat is None else stack(c_concat, c_concat[:frames]),
                            stack(context, source_context.expand(frames, -1, -1)), controls, options, **extra)

        state = TokenFlowStep(step, keyframes, branches + 1, self.chunk_size,
                              inject_conv=in_window(step, steps, self.feature_window),
                              inject_qk=in_window(step, steps, self.attention_window))
        edited = []
        passes = keyframe_passes(len(keyframes), self.keyframes_per_pass)
        if step == 0 and len(passes) > 1:
            logging.info("VE TokenFlow: %d keyframes in %d passes", len(keyframes), len(passes))
        token = TOKENFLOW_STEP.set(state)
        try:
            for chunks in passes:
                # The previous pass's last keyframe joins the pass: the first chunk blends from it, and its
                # extended attention ties this pass to the last one.
                state.first_chunk = max(chunks.start - 1, 0)
                state.keyframe_pass = True
                run(keyframes[state.first_chunk:chunks.stop].to(x.device))
                state.keyframe_pass = False
                state.first_frame = chunks.start * self.chunk_size
                rows = torch.arange(state.first_frame, min(chunks.stop * self.chunk_size, frames), device=x.device)
                edited.append(run(rows).unflatten(0, (branches + 1, len(rows)))[1:])
            return torch.cat(edited, dim=1).flatten(0, 1)
        finally:
            TOKENFLOW_STEP.reset(token)


def keyframe_passes(keyframes: int, per_pass: int) -> list[range]:
    """The chunks (= keyframes) each pass edits: all at once for ``per_pass`` 0, else runs of ``per_pass``."""
    per_pass = per_pass or keyframes
    return [range(start, min(start + per_pass, keyframes)) for start in range(0, keyframes, per_pass)]


def tokenflow(model, inversion: Inversion, conditioning, keyframe_chunk_size: int = 8,
              pnp_attention_window: float = 0.5, pnp_feature_window: float = 0.8, seed: int = 1,
              keyframes_per_pass: int = 0):
    """A clone of ``model`` that samples TokenFlow edits of ``inversion``'s clip, and the official start latent."""
    unet = require_unet(model, TRAINING_FREE_FAMILIES)
    if keyframe_chunk_size < 1:
        raise ValueError(f"keyframe_chunk_size: {keyframe_chunk_size} is not a chunk size; use 1 or more (one keyframe "
                         "per chunk of that many frames; the official value is 8).")
    if keyframe_chunk_size > inversion.frames:
        raise ValueError(f"keyframe_chunk_size: {keyframe_chunk_size} is larger than the clip ({inversion.frames} "
                         f"frames). Use at most {inversion.frames}, or load more frames (the official setting is 8 "
                         "frames per keyframe).")
    if not conditioning or conditioning[0][0].ndim != 3:
        raise ValueError("conditioning: connect the inversion prompt's CONDITIONING (CLIP Text Encode), the one "
                         "VE DDIM Invert used.")
    if len(conditioning) > 1:
        logging.warning("VE TokenFlow: the inversion prompt has %d conditioning entries; only the first is used.",
                        len(conditioning))
    first = pnp_output_block(unet)
    clone = model.clone()
    clone.set_model_attn1_patch(record_tokens)
    for key, *_ in iter_transformer_blocks(unet):
        install(clone, "attn1", key, TokenFlowAttention(inject_qk=key[0] == "output" and key[1] >= first))
    guard_slots(clone)
    fit_motion_module_per_call(clone)
    clone.set_injections(PatcherKeys.TOKENFLOW, [PatcherInjection(inject=_inject, eject=_eject)])
    set_wrapper(clone, WrappersMP.APPLY_MODEL, PatcherKeys.TOKENFLOW, TokenFlowSampling(
        inversion, conditioning[0][0][:1].detach().cpu(), keyframe_chunk_size, pnp_attention_window,
        pnp_feature_window, seed, keyframes_per_pass))
    check_video_inputs_when_sampling(clone)
    # Official: eps from the noisiest inverted latent, re-noised to the first sampling level (the same level when the
    # inversion ran the sampler's step count; 981 for TokenFlow's 500-step inversion sampled in 50).
    start = start_latent(inversion.source, inversion.noisiest, inversion.noisiest_sigma, float(inversion.sigmas[-1]))
    return clone, {"samples": start}


class TokenFlow(VideoEditNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="VE_TokenFlow",
            display_name="VE TokenFlow",
            category="video_edit/tokenflow",
            **search_aliases(TOKENFLOW_ALIASES, ("keyframes", "pnp", "plug and play")),
            description=(
                "Training-free consistent editing (TokenFlow). At every step the inverted source clip runs with the "
                "edit as an extra branch; one random keyframe per chunk of frames is edited with attention across all "
                "keyframes, and every frame's self-attention output is taken from the keyframes at its source tokens' "
                "nearest neighbours. Plug-and-play injection of source features keeps the structure. Sample the "
                "returned MODEL from the returned latent with any standard sampler, the inversion's step count and "
                "a DDIM schedule (KSampler Advanced: add_noise disable, ddim, ddim_uniform). The input MODEL is not "
                "changed."),
            inputs=[
                io.Model.Input("model", tooltip="The model the clip was inverted with."),
                InversionType.Input("inversion", tooltip="VE DDIM Invert's inversion of the clip you edit."),
                io.Conditioning.Input("conditioning", tooltip="The inversion prompt (the one VE DDIM Invert used)."),
                io.Int.Input("keyframe_chunk_size", default=8, min=1, max=4096,
                             tooltip="One keyframe per chunk of this many consecutive frames (official: 8)."),
                io.Float.Input("pnp_attention_window", default=0.5, min=0.0, max=1.0, step=0.01,
                               tooltip="Fraction of the steps, from the first, with source queries/keys injected "
                                       "in the decoder self-attention (official: 0.5)."),
                io.Float.Input("pnp_feature_window", default=0.8, min=0.0, max=1.0, step=0.01,
                               tooltip="Fraction of the steps, from the first, with the source's decoder ResNet "
                                       "features injected (official: 0.8)."),
                io.Int.Input("seed", default=1, min=0, max=0xFFFFFFFFFFFFFFFF,
                             tooltip="Seed of the keyframe draws (official: 1)."),
                io.Int.Input("keyframes_per_pass", default=0, min=0, max=4096, optional=True,
                             tooltip="Long clips: edit this many keyframes together (plus the previous pass's last "
                                     "one), then propagate to their frames, pass after pass, so memory follows "
                                     "the pass, not the clip. 0: all keyframes at once (official)."),
            ],
            outputs=[
                io.Model.Output(display_name="model", tooltip="Sample the edit with it (edit prompt, KSampler Advanced with "
                                                            "add_noise disable, the inversion's step count)."),
                io.Latent.Output(display_name="latent",
                                 tooltip="The start latent: add_noise(clip, eps of the noisiest inversion level, "
                                         "first step), as the official code builds it."),
            ],
        )

    @classmethod
    def execute(cls, model, inversion, conditioning, keyframe_chunk_size, pnp_attention_window, pnp_feature_window,
                seed, keyframes_per_pass=0) -> io.NodeOutput:
        return io.NodeOutput(*tokenflow(model, inversion, conditioning, keyframe_chunk_size, pnp_attention_window,
                                        pnp_feature_window, seed, keyframes_per_pass))


NODES = [TokenFlow]
