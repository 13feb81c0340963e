"""FateZero nodes: the capture config for VE_DDIMInvert and VE_AttentionFusion (algorithms.md §4, §6.4)."""

from __future__ import annotations

import torch
from comfy.ldm.modules.attention import optimized_attention
from comfy_api.latest import io

from ..kernels.fatezero import (AttentionStore, CrossAttentionEdit, PromptTokens, apply_probs, attention_probs,
                                blend_mask, blended_denoised, chunk_slice, cross_alpha, latent_blend_active,
                                mask_blocks, self_replace_active)
from ..kernels.inversion import Inversion
from .inversion import (ATTENTION, AttentionCapture, AttentionCaptureType, InversionType, SharedPatch, call_attention,
                        cond_chunks, replace_patch)
from .model_helpers import require_sd1_unet

LATENT_TO_PIXELS = 8


def prompt_tokens(clip, text: str, input_name: str) -> PromptTokens:
    """The prompt's words and their CLIP token ids, from the given CLIP's own tokenizer."""
    words = text.split()
    if not words:
        raise ValueError(f"{input_name}: the prompt is empty.")

    def ids(chunk: str) -> list[list[int]]:
        batches = next(iter(clip.tokenize(chunk).values()))
        return [[int(t[0]) for t in batch] for batch in batches]

    full = ids(text)
    bos, eos = full[0][0], full[0][-1]
    word_tokens = [[t for t in ids(word)[0][1:] if t != eos] for word in words]
    try:
        tokens = PromptTokens(words, word_tokens, bos, eos, length=len(full[0]))
    except ValueError as error:
        raise ValueError(f"{input_name}: {error}") from None
    if len(full) > 1 or full[0][:len(tokens.ids)] != tokens.ids:
        raise ValueError(f"{input_name}: {text!r} does not tokenize word by word (weights, embeddings or more than "
                         f"{tokens.length - 2} tokens); write plain words.")
    return tokens


def parse_reweight(text: str) -> dict[str, float]:
    """``"red:2, watercolor:10"`` -> ``{"red": 2.0, "watercolor": 10.0}``."""
    weights = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        word, sep, value = item.rpartition(":")
        try:
            weights[word.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep or not word.strip():
            raise ValueError(f"reweight: {item!r} is not 'word:value' (e.g. 'red:2, watercolor:10').")
    return weights


def require_attention(inversion: Inversion) -> AttentionStore:
    store = inversion.captures.get(ATTENTION)
    if store is None:
        raise ValueError("inversion: it holds no attention maps. Connect a VE Attention Capture Config to VE DDIM "
                         "Invert's attention_capture input and invert again.")
    return store


class FusionPlan(SharedPatch):
    """What the fused model reads at every editing step: the store, the P2P edit, the windows and the mask."""

    def __init__(self, inversion: Inversion, edit: CrossAttentionEdit, blend_positions: list[int],
                 self_replace: float, cross_replace: float, threshold: float, blend_start: float, blend_end: float):
        self.inversion, self.store = inversion, require_attention(inversion)
        self.edit, self.blend_positions = edit, blend_positions
        self.self_replace, self.cross_replace = self_replace, cross_replace
        self.threshold, self.blend_start, self.blend_end = threshold, blend_start, blend_end

    def step(self, extra_options) -> tuple[int, int]:
        """(level, editing step) of a model call at the sampler's current sigma."""
        level = self.store.level(float(extra_options["sigmas"].max()), capturing=False)
        return level, self.store.step_of(level)

    def frames_of(self, batch: int, extra_options) -> tuple[list[int], int]:
        chunks, frames = cond_chunks(extra_options, batch)
        if frames != self.store.frames:
            raise ValueError(f"latent: the clip being edited has {frames} frames but the inversion has "
                             f"{self.store.frames}; edit the inverted latent of the same clip.")
        return chunks, frames

    def mask(self, level: int, size: tuple[int, int]) -> torch.Tensor:
        """The ``(F, h, w)`` blend mask (1 = edited) from the source cross-attention of ``level``."""
        blocks = mask_blocks(list(self.store.blocks.values()))
        maps = [self.store.cross[b.key][level - 1] for b in blocks]
        return blend_mask(maps, (blocks[0].height, blocks[0].width), self.blend_positions, size, self.threshold)

    def preview_mask(self) -> torch.Tensor:
        """The mask of the first blended step at pixel size, ``(F, H, W)``; all ones without blend words."""
        height, width = (LATENT_TO_PIXELS * s for s in self.inversion.latents.shape[-2:])
        if not self.blend_positions:
            return torch.ones(self.store.frames, height, width)
        level = max(1, self.store.steps - int(self.store.steps * self.blend_start))
        return self.mask(level, (height, width))


class SelfAttentionFusion(SharedPatch):
    """attn1 replace patch: inside the window the conditional pass attends with the *source* queries and keys and
    its own values (= source map x edited values), through the block's own attn1 patch, so the key frames are
    exactly the cross-frame patch's (middle_frame, sparse_causal ...)."""

    def __init__(self, plan: FusionPlan, key: tuple, inner=None):
        self.plan, self.key, self.inner = plan, key, inner

    def __call__(self, q, k, v, extra_options):
        level, step = self.plan.step(extra_options)
        chunks, frames = self.plan.frames_of(q.shape[0], extra_options)
        if chunks and self_replace_active(step, self.plan.store.steps, self.plan.self_replace):
            q, k = q.clone(), k.clone()
            for chunk in chunks:
                part = chunk_slice(chunk, frames)
                q[part] = self.plan.store.queries[self.key][level - 1].to(q)
                k[part] = self.plan.store.keys[self.key][level - 1].to(k)
        return call_attention(self.inner, q, k, v, extra_options)


class CrossAttentionFusion(SharedPatch):
    """attn2 replace patch: prompt-to-prompt on the conditional pass while the cross window is open."""

    def __init__(self, plan: FusionPlan, key: tuple):
        self.plan, self.key = plan, key

    def __call__(self, q, k, v, extra_options):
        heads = extra_options["n_heads"]
        level, step = self.plan.step(extra_options)
        chunks, frames = self.plan.frames_of(q.shape[0], extra_options)
        alpha = cross_alpha(step, self.plan.store.steps, self.plan.cross_replace)
        out = optimized_attention(q, k, v, heads)
        if not chunks or alpha == 0:
            return out
        if k.shape[1] != self.plan.store.context:
            raise ValueError(f"positive: the edit conditioning has {k.shape[1]} tokens but the inversion's had "
                             f"{self.plan.store.context}; use one 77-token prompt (no concat/area conds).")
        source = self.plan.store.cross[self.key][level - 1]
        for chunk in chunks:
            part = chunk_slice(chunk, frames)
            edited = attention_probs(q[part], k[part], heads)
            out[part] = apply_probs(self.plan.edit(source.to(edited), edited, alpha), v[part]).to(out.dtype)
        return out


class LatentBlend(SharedPatch):
    """Post-CFG function: inside the blend window, the step lands on ``mask * edit + (1 - mask) * source`` (exact
    for euler/ddim; other samplers get the blended x0 prediction)."""

    def __init__(self, plan: FusionPlan):
        self.plan = plan

    def __call__(self, args):
        denoised, x = args["denoised"], args["input"]
        sigma = float(args["sigma"].max())
        schedule = args["model_options"]["transformer_options"]["sample_sigmas"].cpu()
        at = torch.isclose(schedule, torch.tensor(sigma), rtol=1e-4).nonzero()
        if len(at) == 0 or int(at[0]) + 1 >= len(schedule):
            return denoised
        sigma_next = float(schedule[int(at[0]) + 1])
        store = self.plan.store
        level = store.level(sigma, capturing=False)
        if not latent_blend_active(store.step_of(level), store.steps, self.plan.blend_start, self.plan.blend_end):
            return denoised
        mask = self.plan.mask(level, tuple(x.shape[-2:])).to(x)[:, None]
        source_next = args["model"].process_latent_in(self.plan.inversion.latent_at(sigma_next)).to(x)
        return blended_denoised(x, denoised, source_next, sigma, sigma_next, mask)


def attention_fusion(model, inversion: Inversion, clip, source_prompt: str, edit_prompt: str, blend_words: str = "",
                     self_replace: float = 0.8, cross_replace: float = 0.8, mask_threshold: float = 0.3,
                     reweight: str = "", blend_start: float = 0.2, blend_end: float = 0.8):
    """A clone of ``model`` that fuses the inversion's attention into editing; returns it with its FusionPlan."""
    require_sd1_unet(model)
    store = require_attention(inversion)
    if store.context != 77:
        raise ValueError(f"inversion: it was captured with a {store.context}-token conditioning; invert with one "
                         "77-token prompt.")
    source = prompt_tokens(clip, source_prompt, "source_prompt")
    edit = prompt_tokens(clip, edit_prompt, "edit_prompt")
    positions = []
    for word in blend_words.replace(",", " ").split():
        found = source.positions_of(word)
        if not found:
            raise ValueError(f"blend_words: {word!r} is not a word of the source prompt {source_prompt!r}; blend "
                             "words name the edited object as the source prompt spells it.")
        positions += found
    plan = FusionPlan(inversion, CrossAttentionEdit.for_prompts(source, edit, parse_reweight(reweight)), positions,
                      self_replace, cross_replace, mask_threshold, blend_start, blend_end)
    clone = model.clone()
    for key in store.blocks:
        if replace_patch(model, "attn2", key) is not None:
            raise ValueError(f"model: block {key} already has a cross-attention replace patch; fusion needs that slot.")
        clone.set_model_attn1_replace(SelfAttentionFusion(plan, key, replace_patch(model, "attn1", key)), *key)
        clone.set_model_attn2_replace(CrossAttentionFusion(plan, key), *key)
    if positions:
        clone.set_model_sampler_post_cfg_function(LatentBlend(plan))
    return clone, plan


class AttentionCaptureConfig(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="VE_AttentionCaptureConfig",
            display_name="Attention Capture Config (FateZero)",
            category="video_edit/fatezero",
            description=(
                "Connect to VE DDIM Invert's attention_capture to store, at every inversion step, the source "
                "self- and cross-attention of the blocks with at most max_query_tokens tokens (1024: the 32x32, 16x16 "
                "and 8x8 blocks at 512x512), compactly (fp16, CPU). The size is computed before the run."),
            inputs=[
                io.Int.Input("max_query_tokens", default=1024, min=1, max=1 << 20,
                             tooltip="Capture blocks whose token grid h*w is at most this (FateZero: 32*32)."),
                io.Float.Input("memory_limit_gb", default=0.0, min=0.0, max=4096.0, step=0.5,
                               tooltip="Refuse to start if the maps need more; 0 = 80% of the RAM free now."),
            ],
            outputs=[AttentionCaptureType.Output(display_name="attention_capture")],
        )

    @classmethod
    def execute(cls, max_query_tokens, memory_limit_gb) -> io.NodeOutput:
        return io.NodeOutput(AttentionCapture(max_query_tokens, memory_limit_gb))


class AttentionFusion(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="VE_AttentionFusion",
            display_name="Attention Fusion (FateZero)",
            category="video_edit/fatezero",
            description=(
                "FateZero editing: sample the edit from the inverted latent with any standard sampler (same steps, "
                "ddim_uniform, no added noise) and this MODEL. On the conditional pass it uses the source "
                "self-attention for the first self_replace of the steps, prompt-to-prompt cross-attention for the "
                "first cross_replace (replace when both prompts have the same word count, refine otherwise), and "
                "keeps the source outside the blend words' mask between blend_start and blend_end. mask_threshold 2 "
                "keeps the whole source. The input MODEL is not changed."),
            inputs=[
                io.Model.Input("model", tooltip="The model used for inversion (same cross-frame attention)."),
                InversionType.Input("inversion", tooltip="From VE DDIM Invert with an attention capture config."),
                io.Clip.Input("clip", tooltip="Its tokenizer aligns the words of the two prompts."),
                io.String.Input("source_prompt", default="a silver jeep driving down a curvy road in the countryside"),
                io.String.Input("edit_prompt", default="a red jeep driving down a curvy road in the countryside"),
                io.String.Input("blend_words", default="jeep",
                                tooltip="Words of the source prompt naming the edited object; empty = no latent blend."),
                io.Float.Input("self_replace", default=0.8, min=0.0, max=1.0, step=0.05),
                io.Float.Input("cross_replace", default=0.8, min=0.0, max=1.0, step=0.05),
                io.Float.Input("mask_threshold", default=0.3, min=0.0, max=2.0, step=0.05),
                io.String.Input("reweight", default="", tooltip="Edit-prompt words to emphasise, e.g. 'watercolor:10'."),
                io.Float.Input("blend_start", default=0.2, min=0.0, max=1.0, step=0.05),
                io.Float.Input("blend_end", default=0.8, min=0.0, max=1.0, step=0.05),
            ],
            outputs=[io.Model.Output(), io.Mask.Output(display_name="blend_mask")],
        )

    @classmethod
    def execute(cls, model, inversion, clip, source_prompt, edit_prompt, blend_words, self_replace, cross_replace,
                mask_threshold, reweight, blend_start, blend_end) -> io.NodeOutput:
        if blend_start > blend_end:
            raise ValueError(f"blend_start ({blend_start}) must not exceed blend_end ({blend_end}).")
        fused, plan = attention_fusion(model, inversion, clip, source_prompt, edit_prompt, blend_words, self_replace,
                                       cross_replace, mask_threshold, reweight, blend_start, blend_end)
        return io.NodeOutput(fused, plan.preview_mask())


NODES = [AttentionCaptureConfig, AttentionFusion]
