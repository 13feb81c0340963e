"""FateZero, step 2: VE_AttentionFusion, editing with the attention stored during inversion (docs/design.md §6,
§6.4): source self-attention, prompt-to-prompt cross-attention, and blending inside the blend words' mask."""

from __future__ import annotations

import torch
from comfy_api.latest import io
from einops import rearrange

from ..kernels.fatezero import (AttentionStore, CrossAttentionEdit, PromptTokens, apply_probs, attention_probs,
                                blend_by_mask, blend_mask, blended_denoised, chunk_slice, cross_alpha,
                                latent_blend_active, mask_blocks, word_attention)
from ..kernels.inversion import Inversion
from ..kernels.schedule import in_window, matching
from .shared.animatediff import fit_motion_module_per_call
from .shared.attention_slots import FUSION, AddsToOutput, SharedPatch, SlotPatch, guard_slots, install
from .shared.inputs import TRAINING_FREE_FAMILIES, advising, require_unet
from .shared.unet_call import cond_chunks
from .shared.socket_types import ATTENTION_CAPTURE, InversionType, VideoEditNode
from .shared.windowing import clip_rows
from .shared.schema_fields import FATEZERO_ALIASES, search_aliases

LATENT_TO_PIXELS = 8
BLEND_MODES = ["latents", "self-attention", "both"]  # what the blend words' mask blends
WORD_SWAPS = ("replace", "refine")  # prompt-to-prompt on word-aligned prompts (official is_replace_controller)
# Which inversion latent the latent blend keeps outside the mask: official LatentBlend's one a level noisier than
# the step's result, or the same level (with mask_threshold 2 the edit then gives back the source clip exactly).
BLEND_SOURCES = ("noisier level", "same level")


def prompt_tokens(clip, text: str, input_name: str) -> PromptTokens:
    """The prompt's words and their CLIP token ids, from the given CLIP's own tokenizer."""
    words = text.split()
    if not words:
        raise ValueError(f"{input_name}: the prompt is empty.")

    def ids(chunk: str) -> list[list[int]]:
        batches = next(iter(clip.tokenize(chunk).values()))
        return [[int(t[0]) for t in batch] for batch in batches]

    full = ids(text)
    bos, eos, *rest = ids("")[0]  # SD1.x pads with the end token, SD2.x (OpenCLIP-H) with token 0
    padding = {eos, *rest}
    word_tokens = [[t for t in ids(word)[0][1:] if t not in padding] for word in words]
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
    store = inversion.captures.get(ATTENTION_CAPTURE)
    if store is None:
        raise ValueError("inversion: it holds no attention maps. Connect a VE Attention Capture Config to VE DDIM "
                         "Invert's attention_capture input and invert again.")
    return store


def edit_level(store: AttentionStore, sigma: float) -> int:
    """The inversion level an edit's model call at ``sigma`` reads, or an error saying how to sample."""
    with advising("The attention came from VE DDIM Invert: use the same step count as VE DDIM Invert."):
        return store.level(sigma)


class FusionPlan(SharedPatch):
    """What the fused model reads at every editing step: the store, the P2P edit, the windows and the masks.

    The blend words' token positions in the source prompt give the source mask (from the stored inversion
    cross-attention of the step); their positions in the edit prompt give the edit mask, from the editing
    cross-attention summed over the steps of the run so far. Latents use the OR of both, self-attention the
    source mask (official ``prompt_choose`` 'both' and 'source').
    """

    def __init__(self, inversion: Inversion, edit: CrossAttentionEdit, source_positions: list[int],
                 edit_positions: list[int], blend: str, self_replace: float, cross_replace: float, threshold: float,
                 blend_start: float, blend_end: float, blend_source: str = BLEND_SOURCES[0]):
        self.inversion, self.store = inversion, require_attention(inversion)
        self.edit, self.source_positions, self.edit_positions = edit, source_positions, edit_positions
        self.self_replace, self.cross_replace = self_replace, cross_replace
        self.threshold, self.blend_start, self.blend_end = threshold, blend_start, blend_end
        self.blend_source = blend_source
        has_words = bool(source_positions or edit_positions)
        self.blends_latents = has_words and blend in ("latents", "both")
        self.blends_self_attention = has_words and blend in ("self-attention", "both")
        self.mask_blocks = mask_blocks(list(self.store.blocks.values()))
        # The mask blocks whose edit-word attention the latent mask needs (none without edit words in it).
        self.edit_mask_keys = tuple(b.key for b in self.mask_blocks) if self.blends_latents and edit_positions else ()
        self.edit_word_maps = {}  # mask block -> this step's edit-prompt word attention (F, n), window by window
        self.edit_word_total = None  # their layer mean, summed over the steps of this sampling run so far
        self.source_masks = {}  # (level, size) -> source_mask of the current level: the same for a step's calls

    def step(self, extra_options) -> tuple[int, int]:
        """(level, editing step) of a model call at the sampler's current sigma."""
        level = edit_level(self.store, float(extra_options["sigmas"].max()))
        return level, self.store.step_of(level)

    def frames_of(self, batch: int, extra_options) -> tuple[list[int], int, list[int] | slice]:
        """(conditional chunks, frames per chunk, the clip's frame indices) of an attention call."""
        chunks, frames = cond_chunks(extra_options, batch)
        rows = clip_rows(extra_options, frames)
        if extra_options.get("context_window") is None and frames != self.store.frames:
            raise ValueError(f"latent: the clip being edited has {frames} frames but the inversion has "
                             f"{self.store.frames}; edit the inverted latent of the same clip.")
        return chunks, frames, rows

    def record_edit_attention(self, key: tuple, probs: torch.Tensor, rows=slice(None)):
        """Keep this call's conditional cross-attention of the edit words at a mask block (before fusion)."""
        maps = word_attention(probs, self.edit_positions).cpu()
        if key not in self.edit_word_maps:
            self.edit_word_maps[key] = torch.zeros(self.store.frames, maps.shape[1])
        self.edit_word_maps[key][rows] = maps

    def accumulate_edit_attention(self, first_step: bool):
        """Add the current model call's edit-word maps to the run's sum (restarted at the run's first step)."""
        maps = [self.edit_word_maps.pop(key, None) for key in self.edit_mask_keys]
        if not maps or any(m is None for m in maps):
            return
        step_map = torch.stack(maps).mean(0)
        restart = first_step or self.edit_word_total is None
        self.edit_word_total = step_map if restart else self.edit_word_total + step_map

    def source_mask(self, level: int, size: tuple[int, int]) -> torch.Tensor:
        """The ``(F, h, w)`` mask (1 = edited) of the source words in the inversion cross-attention of ``level``."""
        if (level, size) not in self.source_masks:
            if not self.source_positions:
                mask = torch.zeros(self.store.frames, *size)
            else:
                maps = [word_attention(self.store.read("cross", b.key, level), self.source_positions)
                        for b in self.mask_blocks]
                mask = blend_mask(maps, self.mask_grid, size, self.threshold)
            self.source_masks = {key: value for key, value in self.source_masks.items() if key[0] == level}
            self.source_masks[level, size] = mask
        return self.source_masks[level, size]

    def latent_mask(self, level: int, size: tuple[int, int]) -> torch.Tensor:
        """The source mask OR the edit words' mask from the editing cross-attention summed so far."""
        mask = self.source_mask(level, size)
        if self.edit_word_total is not None:
            mask = mask.maximum(blend_mask([self.edit_word_total], self.mask_grid, size, self.threshold))
        return mask

    @property
    def mask_grid(self) -> tuple[int, int]:
        return self.mask_blocks[0].height, self.mask_blocks[0].width

    def preview_mask(self) -> torch.Tensor:
        """The source mask of the first blended step at pixel size, ``(F, H, W)``; all ones without blending."""
        height, width = (LATENT_TO_PIXELS * s for s in self.inversion.latents.shape[-2:])
        if not (self.blends_latents or self.blends_self_attention):
            return torch.ones(self.store.frames, height, width)
        first_step = int(self.store.steps * self.blend_start) if not self.blends_self_attention else 0
        return self.source_mask(max(1, self.store.steps - first_step), (height, width)).clone()


class SelfAttentionFusion(SlotPatch):
    """attn1 replace patch: inside the window the conditional pass attends with the *source* queries and keys and
    its own values (= source map x edited values), through the block's own attn1 patch, so the key frames are
    exactly the cross-frame patch's (middle_frame, sparse_causal ...). With self-attention blending, query tokens
    inside the source mask keep the edited attention: ``mask * edited + (1 - mask) * source`` per query.
    A cross-frame patch connected after the fusion goes inside it (attention_slots.SLOT_TABLE)."""

    role = FUSION

    def __init__(self, plan: FusionPlan, key: tuple, inner=None):
        self.plan, self.key, self.inner = plan, key, inner

    def __call__(self, q, k, v, extra_options):
        level, step = self.plan.step(extra_options)
        chunks, frames, rows = self.plan.frames_of(q.shape[0], extra_options)
        if not chunks or not in_window(step, self.plan.store.steps, self.plan.self_replace):
            return self.attention(q, k, v, extra_options)
        source_q, source_k = q.clone(), k.clone()
        stored_q, stored_k = (self.plan.store.read(kind, self.key, level, rows) for kind in ("queries", "keys"))
        for chunk in chunks:
            part = chunk_slice(chunk, frames)
            source_q[part], source_k[part] = stored_q.to(q), stored_k.to(k)
        out = self.attention(source_q, source_k, v, extra_options)
        if self.plan.blends_self_attention:
            edited = self.attention(q, k, v, extra_options)
            block = self.plan.store.blocks[self.key]
            keep_edit = rearrange(self.plan.source_mask(level, (block.height, block.width))[rows], "f h w -> f (h w) 1")
            keep_edit = keep_edit.to(out)
            for chunk in chunks:
                part = chunk_slice(chunk, frames)
                out[part] = blend_by_mask(edited[part], out[part], keep_edit)
        return out


class CrossAttentionFusion(AddsToOutput):
    """attn2 replace patch: prompt-to-prompt on the conditional pass while the cross window is open; at the mask
    blocks it also records the edit words' attention for the latent mask. What a later pack ``add``s (IPAdapter's
    image attention) is added to the fused output; the text maps it edits are untouched by it."""

    role = FUSION

    def __init__(self, plan: FusionPlan, key: tuple):
        self.plan, self.key = plan, key

    def __call__(self, q, k, v, extra_options):
        return self.with_added(self.fused(q, k, v, extra_options), q, k, v, extra_options)

    def fused(self, q, k, v, extra_options):
        heads = extra_options["n_heads"]
        level, step = self.plan.step(extra_options)
        chunks, frames, rows = self.plan.frames_of(q.shape[0], extra_options)
        alpha = cross_alpha(step, self.plan.store.steps, self.plan.cross_replace)
        record = self.key in self.plan.edit_mask_keys
        out = self.attention(q, k, v, extra_options)
        if not chunks or (alpha == 0 and not record):
            return out
        if k.shape[1] != self.plan.store.context:
            raise ValueError(f"positive: the edit conditioning has {k.shape[1]} tokens but the inversion's had "
                             f"{self.plan.store.context}; use one 77-token prompt (no concat/area conds).")
        source = self.plan.store.read("cross", self.key, level, rows)
        for index, chunk in enumerate(chunks):
            part = chunk_slice(chunk, frames)
            edited = attention_probs(q[part], k[part], heads)
            if record and index == 0:
                self.plan.record_edit_attention(self.key, edited, rows)
            if alpha:
                out[part] = apply_probs(self.plan.edit(source.to(edited), edited, alpha), v[part]).to(out.dtype)
        return out


class LatentBlend(SharedPatch):
    """Post-CFG function: sums the edit words' attention over the run, and inside the blend window makes the step
    land on ``mask * edit + (1 - mask) * source`` (exact for euler/ddim; other samplers get the blended x0)."""

    def __init__(self, plan: FusionPlan):
        self.plan = plan

    def __call__(self, args):
        denoised, x = args["denoised"], args["input"]
        sigma = float(args["sigma"].max())
        schedule = args["model_options"]["transformer_options"]["sample_sigmas"].cpu()
        at = matching(schedule, sigma, rel_tol=1e-4)
        if at is None or at + 1 >= len(schedule):
            return denoised
        self.plan.accumulate_edit_attention(first_step=at == 0)
        sigma_next = float(schedule[at + 1])
        store = self.plan.store
        level = edit_level(store, sigma)
        if not latent_blend_active(store.step_of(level), store.steps, self.plan.blend_start, self.plan.blend_end):
            return denoised
        mask = self.plan.latent_mask(level, tuple(x.shape[-2:])).to(x)[:, None]
        source_level = sigma if self.plan.blend_source == "noisier level" else sigma_next
        source = self.plan.inversion.latent_at(source_level, presented_at=sigma_next)
        return blended_denoised(x, denoised, args["model"].process_latent_in(source).to(x), sigma, sigma_next, mask)


def blend_word_positions(blend_words: str, source: PromptTokens, edit: PromptTokens) -> tuple[list[int], list[int]]:
    """Token positions of the blend words in the source prompt and in the edit prompt; each word must be in one."""
    source_positions, edit_positions = [], []
    for word in blend_words.replace(",", " ").split():
        in_source, in_edit = source.positions_of(word), edit.positions_of(word)
        if not (in_source or in_edit):
            raise ValueError(f"blend_words: {word!r} is in neither the source prompt {' '.join(source.words)!r} nor the "
                             f"edit prompt {' '.join(edit.words)!r}; blend words name the edited object as the "
                             "prompts spell it (e.g. 'jeep', or 'jeep car' for a jeep that becomes a car).")
        source_positions += in_source
        edit_positions += in_edit
    return source_positions, edit_positions


def attention_fusion(model, inversion: Inversion, clip, source_prompt: str, edit_prompt: str, blend_words: str = "",
                     self_replace: float = 0.8, cross_replace: float = 0.8, mask_threshold: float = 0.3,
                     reweight: str = "", blend_start: float = 0.2, blend_end: float = 0.8, blend: str = "latents",
                     word_swap: str = "replace", blend_source: str = BLEND_SOURCES[0]):
    """A clone of ``model`` that fuses the inversion's attention into editing; returns it with its FusionPlan."""
    require_unet(model, TRAINING_FREE_FAMILIES)
    store = require_attention(inversion)
    if store.context != 77:
        raise ValueError(f"inversion: it was captured with a {store.context}-token conditioning; invert with one "
                         "77-token prompt.")
    if blend not in BLEND_MODES:
        raise ValueError(f"blend: {blend!r} is not one of {', '.join(BLEND_MODES)}.")
    if word_swap not in WORD_SWAPS:
        raise ValueError(f"word_swap: {word_swap!r} is not one of {', '.join(WORD_SWAPS)}.")
    if blend_source not in BLEND_SOURCES:
        raise ValueError(f"blend_source: {blend_source!r} is not one of {', '.join(BLEND_SOURCES)}.")
    source = prompt_tokens(clip, source_prompt, "source_prompt")
    edit = prompt_tokens(clip, edit_prompt, "edit_prompt")
    source_positions, edit_positions = blend_word_positions(blend_words, source, edit)
    if blend != "latents" and edit_positions and not source_positions:
        raise ValueError(f"blend_words: self-attention blending uses the source prompt's words, and none of "
                         f"{blend_words!r} is in {source_prompt!r}; add the source word of the edited object.")
    edit_maps = CrossAttentionEdit.for_prompts(source, edit, parse_reweight(reweight), word_swap == "replace")
    plan = FusionPlan(inversion, edit_maps,
                      source_positions, edit_positions, blend, self_replace, cross_replace, mask_threshold,
                      blend_start, blend_end, blend_source)
    clone = model.clone()
    for key in store.blocks:
        install(clone, "attn2", key, CrossAttentionFusion(plan, key))
        install(clone, "attn1", key, SelfAttentionFusion(plan, key))
    guard_slots(clone)
    fit_motion_module_per_call(clone)
    if plan.blends_latents:
        clone.set_model_sampler_post_cfg_function(LatentBlend(plan))
    return clone, plan


class AttentionFusion(VideoEditNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="VE_AttentionFusion",
            display_name="VE Attention Fusion",
            category="video_edit/fatezero",
            **search_aliases(FATEZERO_ALIASES, ("prompt to prompt", "prompt-to-prompt", "attention blend")),
            description=(
                "FateZero editing: sample the edit from the inverted latent with any standard sampler (same steps, "
                "ddim_uniform, no added noise) and this MODEL. On the conditional pass it uses the source "
                "self-attention for the first self_replace of the steps, prompt-to-prompt cross-attention for the "
                "first cross_replace ('word_swap': replace when both prompts have the same word count, else refine; "
                "or always refine, as the official attribute and style configs do). With "
                "blend words, 'blend' keeps the source outside their mask: in the latents between blend_start and "
                "blend_end, and/or in the self-attention while it is replaced (shape edits). mask_threshold 2 "
                "keeps the whole source. The input MODEL is not changed."),
            inputs=[
                io.Model.Input("model", tooltip="The model used for inversion (same cross-frame attention)."),
                InversionType.Input("inversion", tooltip="From VE DDIM Invert with an attention capture config."),
                io.Clip.Input("clip", tooltip="Its tokenizer aligns the words of the two prompts."),
                io.String.Input("source_prompt", default="a silver jeep driving down a curvy road in the countryside",
                                tooltip="The prompt describing the source clip (the one the inversion used)."),
                io.String.Input("edit_prompt", default="a red jeep driving down a curvy road in the countryside",
                                tooltip="The source prompt with the words to change changed."),
                io.String.Input("blend_words", default="jeep",
                                tooltip="Words naming the edited object in the source and/or edit prompt (e.g. "
                                        "'jeep car'); empty = no blending."),
                io.Float.Input("self_replace", default=0.8, min=0.0, max=1.0, step=0.05,
                               tooltip="Fraction of the steps that use the source self-attention (keeps the "
                                       "structure; lower for shape edits)."),
                io.Float.Input("cross_replace", default=0.8, min=0.0, max=1.0, step=0.05,
                               tooltip="Fraction of the steps that use prompt-to-prompt cross-attention."),
                io.Float.Input("mask_threshold", default=0.3, min=0.0, max=2.0, step=0.05,
                               tooltip="Where the blend words' normalised cross-attention exceeds this, the edit "
                                       "is kept; elsewhere the source (the blend_mask output shows it)."),
                io.String.Input("reweight", default="", tooltip="Edit-prompt words to emphasise, e.g. 'watercolor:10'."),
                io.Float.Input("blend_start", default=0.2, min=0.0, max=1.0, step=0.05,
                               tooltip="Fraction of the steps after which the mask blending starts."),
                io.Float.Input("blend_end", default=0.8, min=0.0, max=2.0, step=0.05,
                               tooltip="Latents are blended after editing steps k with int(N*start) < k+1 < "
                                       "int(N*end) (official); above 1 blends through the last step."),
                io.Combo.Input("blend", options=BLEND_MODES, default="latents",
                               tooltip="What the blend words' mask blends: the latents (attribute and style edits), "
                                       "the replaced self-attention, or both (shape edits)."),
                io.Combo.Input("word_swap", options=list(WORD_SWAPS), default="replace", optional=True,
                               tooltip="Official is_replace_controller: 'replace' (default) swaps the edited words' "
                                       "attention when both prompts have as many words, else refines; 'refine' "
                                       "always refines (the official attribute and style configs)."),
                io.Combo.Input("blend_source", options=list(BLEND_SOURCES), default=BLEND_SOURCES[0], optional=True,
                               tooltip="The inversion latent kept outside the mask: a level noisier than the step's "
                                       "result (official), or the same level (mask_threshold 2 then returns the "
                                       "source clip exactly)."),
            ],
            outputs=[io.Model.Output(display_name="model", tooltip="Sample the edit with it from VE DDIM Invert's latent "
                                                                  "(KSampler Advanced, add_noise disable)."),
                     io.Mask.Output(display_name="blend_mask", tooltip="The blend words' source mask per frame at "
                                                                       "the first blended step; all ones without blending.")],
        )

    @classmethod
    def execute(cls, model, inversion, clip, source_prompt, edit_prompt, blend_words, self_replace, cross_replace,
                mask_threshold, reweight, blend_start, blend_end, blend, word_swap="replace",
                blend_source=BLEND_SOURCES[0]) -> io.NodeOutput:
        if blend_start > blend_end:
            raise ValueError(f"blend_start ({blend_start}) must not exceed blend_end ({blend_end}).")
        fused, plan = attention_fusion(model, inversion, clip, source_prompt, edit_prompt, blend_words, self_replace,
                                       cross_replace, mask_threshold, reweight, blend_start, blend_end, blend,
                                       word_swap, blend_source)
        return io.NodeOutput(fused, plan.preview_mask())


NODES = [AttentionFusion]
