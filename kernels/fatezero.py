"""FateZero (docs/design.md §6): the attention store filled during inversion, prompt-to-prompt token
alignment, cross-attention fusion, the blend mask and the latent blend. Pure torch.

Storage. Inversion keeps, for the conditional pass of every captured block and every inversion level:
- self-attention as its *factors*, the queries and the per-frame keys ``(F, n, C)``: the source map is
  ``softmax(Q Kᵀ/√d)`` over the key frames the editing model gathers, so editing re-runs attention with the
  source Q and K and its own V. That is exactly ``P_source · V`` and needs no materialised map;
- cross-attention as post-softmax probabilities ``(F, heads, n, T)``, read by prompt-to-prompt and the mask.
All in fp16, in a temporary file read back one level at a time (RAM does not grow with the clip). Level ``j``
(1..N) holds the UNet call that produced the inversion latent at ``sigmas[j]``: the official "same timestep"
pairing, so editing step ``k`` (at ``sigmas[N-k]``) reads level ``N-k``, i.e. store entry ``N-1-k``.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from .schedule import matching
from .unet_layout import DOWNSAMPLE, UPSAMPLE, has_layer, iter_transformer_blocks

BYTES = 2  # fp16
MASK_TOKENS = 16 * 16  # FateZero's blend mask comes from the 16x16 cross-attention (at 512x512)


# ----------------------------------------------------------------------------------------------- which blocks


@dataclass(frozen=True)
class BlockSpec:
    """A transformer block the store captures: its patch key, token grid, width and heads."""

    key: tuple
    height: int
    width: int
    channels: int
    heads: int

    @property
    def tokens(self) -> int:
        return self.height * self.width

    def bytes_per_step(self, frames: int, context: int) -> int:
        """Stored bytes per inversion step: self Q and K, and the cross probabilities."""
        return BYTES * frames * self.tokens * (2 * self.channels + self.heads * context)

    def official_bytes_per_step(self, frames: int, context: int, key_frames: int) -> int:
        """The official layout: every post-softmax map, self and cross, in fp32."""
        return 4 * frames * self.heads * self.tokens * (key_frames * self.tokens + context)


def block_grids(unet: nn.Module, height: int, width: int) -> dict[tuple[str, int], tuple[int, int]]:
    """``(stage, number)`` -> the token grid ``(h, w)`` of that UNet block for a ``height x width`` latent."""
    sizes = [(height, width)]
    grids = {}

    for number, seq in enumerate(unet.input_blocks):
        if has_layer(seq, DOWNSAMPLE):
            sizes.append(tuple(-(-s // 2) for s in sizes[-1]))  # stride-2 conv with padding 1: ceil
        grids[("input", number)] = sizes[-1]
    grids[("middle", 0)] = sizes[-1]
    level = len(sizes) - 1
    for number, seq in enumerate(unet.output_blocks):
        grids[("output", number)] = sizes[level]
        if has_layer(seq, UPSAMPLE):
            level -= 1
    return grids


def captured_blocks(unet: nn.Module, height: int, width: int, max_tokens: int) -> list[BlockSpec]:
    """The blocks whose query length (block grid h*w) is at most ``max_tokens``: 32², 16², 8² at 512² for 1024."""
    grids = block_grids(unet, height, width)
    specs = []
    for key, _, _, block in iter_transformer_blocks(unet):
        h, w = grids[key[:2]]
        if h * w <= max_tokens:
            specs.append(BlockSpec(key, h, w, block.attn1.to_q.out_features, block.attn1.heads))
    return specs


def mask_blocks(specs: list[BlockSpec]) -> list[BlockSpec]:
    """The captured blocks at the resolution nearest 16x16 tokens (log scale): FateZero's five 16² layers."""
    if not specs:
        return []
    best = min({s.tokens for s in specs}, key=lambda n: (abs(math.log2(n / MASK_TOKENS)), -n))
    return [s for s in specs if s.tokens == best]


# ---------------------------------------------------------------------------------------------------- store


class AttentionStore:
    """Per-block, per-level fp16 maps of the conditional pass, in an anonymous temporary file.

    Only what a model call writes or reads (one level of one block, for the frames of the call) is ever in memory,
    so RAM does not grow with frames x steps. The file is ``tempfile.TemporaryFile``: nameless on Unix, deleted on
    close on Windows, so it disappears when the store is dropped or the process ends; it lives in ``directory``
    (ComfyUI's temp folder; None: the system's). Reads and writes are seek + readinto/write, which every system has.
    """

    KINDS = ("queries", "keys", "cross")

    def __init__(self, blocks: list[BlockSpec], sigmas: torch.Tensor, frames: int, context: int,
                 directory: str | None = None):
        self.blocks = {b.key: b for b in blocks}
        self.sigmas = sigmas.float().cpu()
        self.frames, self.context = frames, context
        self.filled = torch.zeros(self.steps, len(blocks), 2, dtype=torch.bool)
        self._index = {key: i for i, key in enumerate(self.blocks)}
        self._regions, offset = {}, 0
        for b in blocks:
            for kind, shape in zip(self.KINDS, ((b.tokens, b.channels),) * 2 + ((b.heads, b.tokens, context),)):
                self._regions[kind, b.key] = (offset, shape)
                offset += self.steps * frames * math.prod(shape) * BYTES
        self.nbytes = offset
        self.directory = directory or tempfile.gettempdir()
        try:
            self._file = tempfile.TemporaryFile(dir=directory)
            self._file.truncate(offset)
        except OSError as error:
            raise self.write_failed(error) from None

    @property
    def steps(self) -> int:
        return len(self.sigmas) - 1

    @staticmethod
    def expected_bytes(blocks: list[BlockSpec], steps: int, frames: int, context: int) -> int:
        return steps * sum(b.bytes_per_step(frames, context) for b in blocks)

    def _runs(self, kind: str, key, level: int, frames):
        """(file offset, bytes, first row of the call's tensor, rows) of each run of consecutive ``frames``."""
        offset, shape = self._regions[kind, key]
        row_bytes = math.prod(shape) * BYTES
        frames = range(self.frames)[frames] if isinstance(frames, slice) else list(frames)
        start = 0
        while start < len(frames):
            end = start + 1
            while end < len(frames) and frames[end] == frames[end - 1] + 1:
                end += 1
            first = (level - 1) * self.frames + frames[start]
            yield offset + first * row_bytes, (end - start) * row_bytes, start, end
            start = end

    def write(self, kind: str, key, level: int, rows: torch.Tensor, frames=slice(None)):
        """Store ``rows`` (one per frame of ``frames``, a slice or list of clip frame indices) at ``level``."""
        data = rows.detach().to("cpu", torch.float16).contiguous().numpy()
        try:
            for offset, _, start, end in self._runs(kind, key, level, frames):
                self._file.seek(offset)
                self._file.write(data[start:end].data)
        except OSError as error:
            raise self.write_failed(error) from None

    def write_failed(self, error: OSError) -> OSError:
        """One line naming the folder the maps are written to, the cause and the fix (the file itself has no name to give)."""
        return OSError(f"attention_capture: could not write the attention maps ({self.nbytes / 2**30:.2f} GiB) into "
                       f"the folder {self.directory} ({error.strerror or error}). Free disk space there, or lower "
                       "steps, the number of frames, the resolution or max_query_tokens.")

    def read(self, kind: str, key, level: int, frames=slice(None)) -> torch.Tensor:
        """The fp16 rows of ``frames`` at ``level``, ``(frames, *shape)``."""
        shape = self._regions[kind, key][1]
        runs = list(self._runs(kind, key, level, frames))
        out = np.empty((runs[-1][3] if runs else 0, *shape), dtype=np.float16)
        for offset, size, start, end in runs:
            self._file.seek(offset)
            if self._file.readinto(out[start:end].data.cast("B")) != size:
                raise RuntimeError(f"attention store: short read at level {level} of block {key}")
        return torch.from_numpy(out)

    def level(self, sigma: float) -> int:
        """The level (1..N) a model call at ``sigma`` reads: editing evaluates at ``sigmas[j]`` for step N - j."""
        index = self.stored_level(sigma)
        if index is None:
            raise ValueError(
                f"sigma {sigma:.5g} is not a step of the inversion ({self.steps} steps, ddim_uniform): sample the "
                "edit with the same step count as the inversion and the ddim_uniform scheduler, no added noise.")
        return index

    def stored_level(self, sigma: float) -> int | None:
        """The level (1..N) a model call at ``sigma`` writes, None if it is not kept. The official inversion
        predicts the noise for level j at ``sigmas[j]``, the sigma at which editing reads level j."""
        index = matching(self.sigmas[1:], sigma)
        return None if index is None else index + 1

    def step_of(self, level: int) -> int:
        """The 0-based editing step that evaluates at level ``level``."""
        return self.steps - level

    def put_self(self, key, level: int, q: torch.Tensor, k: torch.Tensor, frames=slice(None)):
        self.write("queries", key, level, q, frames)
        self.write("keys", key, level, k, frames)
        self.filled[level - 1, self._index[key], 0] = True

    def put_cross(self, key, level: int, probs: torch.Tensor, frames=slice(None)):
        self.write("cross", key, level, probs, frames)
        self.filled[level - 1, self._index[key], 1] = True

    def describe(self) -> str:
        return (f"{self.nbytes / 2**20:.1f} MiB ({self.nbytes / self.steps / 2**20:.2f} MiB per step, {self.steps} "
                f"steps, {self.frames} frames, {len(self.blocks)} blocks of at most "
                f"{max(b.tokens for b in self.blocks.values())} tokens), fp16 in a temporary file")

    def require_complete(self):
        if not bool(self.filled.all()):
            missing = (~self.filled).nonzero()[0].tolist()
            raise RuntimeError(f"attention capture incomplete: level {missing[0] + 1} of block "
                               f"{list(self.blocks)[missing[1]]} was never recorded (was the inversion interrupted?)")


# --------------------------------------------------------------------------------------------- attention math


def attention_probs(q: torch.Tensor, k: torch.Tensor, heads: int) -> torch.Tensor:
    """Post-softmax maps ``(b, heads, n, t)`` of ``(b, n, heads*d)`` queries and ``(b, t, heads*d)`` keys, in fp32."""
    q, k = (rearrange(t, "b n (h d) -> b h n d", h=heads).float() for t in (q, k))
    return (q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5).softmax(-1)


def apply_probs(probs: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``(b, heads, n, t)`` maps times ``(b, t, heads*d)`` values -> ``(b, n, heads*d)``."""
    v = rearrange(v, "b t (h d) -> b h t d", h=probs.shape[1])
    return rearrange(probs.to(v.dtype) @ v, "b h n d -> b n (h d)")


def chunk_slice(chunk: int, frames: int) -> slice:
    return slice(chunk * frames, (chunk + 1) * frames)


# ---------------------------------------------------------------------------------------- prompt-to-prompt


@dataclass
class PromptTokens:
    """A prompt as CLIP sees it: the space-separated words and each word's token ids (no BOS/EOS)."""

    words: list[str]
    word_tokens: list[list[int]]
    bos: int
    eos: int
    length: int = 77

    def __post_init__(self):
        if self.token_count + 2 > self.length:
            raise ValueError(f"the prompt {' '.join(self.words)!r} is {self.token_count} tokens; at most "
                             f"{self.length - 2} fit in one CLIP window. Shorten it.")

    @property
    def token_count(self) -> int:
        return sum(len(t) for t in self.word_tokens)

    @property
    def ids(self) -> list[int]:
        """BOS, the word tokens, EOS (the tokenizer's ``encode``)."""
        return [self.bos] + [t for w in self.word_tokens for t in w] + [self.eos]

    def word_positions(self, word_index: int) -> list[int]:
        start = 1 + sum(len(t) for t in self.word_tokens[:word_index])
        return list(range(start, start + len(self.word_tokens[word_index])))

    def positions_of(self, word: str) -> list[int]:
        """Token positions of every occurrence of ``word`` (``ptp_utils.get_word_inds``)."""
        return [p for i, w in enumerate(self.words) if w == word for p in self.word_positions(i)]


def global_alignment(x: list[int], y: list[int]) -> list[int]:
    """For each token of ``y``, the aligned index in ``x`` or -1 (prompt-to-prompt ``seq_aligner``: gap 0,
    match 1, mismatch -1, ties prefer left, then up, then diagonal)."""
    gap, match, mismatch = 0, 1, -1
    score = [[0] * (len(y) + 1) for _ in range(len(x) + 1)]
    trace = [[0] * (len(y) + 1) for _ in range(len(x) + 1)]
    for i in range(len(x) + 1):
        score[i][0], trace[i][0] = i * gap, 2
    for j in range(len(y) + 1):
        score[0][j], trace[0][j] = j * gap, 1
    trace[0][0] = 4
    for i in range(1, len(x) + 1):
        for j in range(1, len(y) + 1):
            left, up = score[i][j - 1] + gap, score[i - 1][j] + gap
            diag = score[i - 1][j - 1] + (match if x[i - 1] == y[j - 1] else mismatch)
            score[i][j] = max(left, up, diag)
            trace[i][j] = 1 if score[i][j] == left else 2 if score[i][j] == up else 3
    mapper, i, j = [], len(x), len(y)
    while trace[i][j] != 4:
        if trace[i][j] == 3:
            i, j = i - 1, j - 1
            mapper.append(i)
        elif trace[i][j] == 1:
            j -= 1
            mapper.append(-1)
        else:
            i -= 1
    return mapper[::-1]


def refinement_mapper(source: PromptTokens, edit: PromptTokens) -> tuple[torch.Tensor, torch.Tensor]:
    """(``mapper[t]`` = source column feeding edit column t, ``alphas[t]`` = 0 for edit tokens new to the source)."""
    aligned = global_alignment(source.ids, edit.ids)
    n = len(aligned)
    mapper = torch.arange(edit.length)
    mapper[:n] = torch.tensor(aligned).clamp(min=0)
    alphas = torch.ones(edit.length)
    alphas[:n] = (torch.tensor(aligned) >= 0).float()
    return mapper, alphas


def replacement_mapper(source: PromptTokens, edit: PromptTokens) -> torch.Tensor:
    """``(T, T)`` matrix taking source columns to edit columns for prompts with the same word count
    (prompt-to-prompt ``get_replacement_mapper_``: a replaced word spreads evenly over its new tokens)."""
    if len(source.words) != len(edit.words):
        raise ValueError(f"replace needs the same word count: {len(source.words)} vs {len(edit.words)}")
    size = edit.length
    changed = [i for i, (a, b) in enumerate(zip(source.words, edit.words)) if a != b]
    spans = {source.word_positions(i)[0]: (source.word_positions(i), edit.word_positions(i)) for i in changed}
    mapper = torch.zeros(size, size)
    i = j = 0
    while i < size and j < size:
        if i in spans:
            src, dst = spans.pop(i)
            if len(src) == len(dst):
                mapper[src, dst] = 1.0
            else:
                for t in dst:
                    mapper[src, t] = 1.0 / len(dst)
            i, j = i + len(src), j + len(dst)
        else:
            mapper[i if spans else j, j] = 1.0  # after the last replaced word the official code maps j -> j
            i, j = i + 1, j + 1
    return mapper


@dataclass
class CrossAttentionEdit:
    """How the source cross-attention maps become the edit's (AttentionReplace / AttentionRefine / Reweight)."""

    replace: torch.Tensor | None = None  # (T, T) replacement matrix
    mapper: torch.Tensor | None = None  # (T,) refinement source index per edit token
    alphas: torch.Tensor | None = None  # (T,) 1 where the edit token exists in the source
    equalizer: torch.Tensor = field(default_factory=lambda: torch.ones(77))

    @classmethod
    def for_prompts(cls, source: PromptTokens, edit: PromptTokens, reweight: dict[str, float],
                    replace: bool = True) -> "CrossAttentionEdit":
        """Prompt-to-prompt *replace* when ``replace`` (FateZero's ``is_replace_controller``, default true) and both
        prompts have the same word count, *refine* otherwise."""
        equalizer = torch.ones(edit.length)
        for word, value in reweight.items():
            positions = edit.positions_of(word)
            if not positions:
                raise ValueError(f"reweight: the word {word!r} is not in the edit prompt {' '.join(edit.words)!r}.")
            equalizer[positions] = value
        if replace and len(source.words) == len(edit.words):
            return cls(replace=replacement_mapper(source, edit), equalizer=equalizer)
        mapper, alphas = refinement_mapper(source, edit)
        return cls(mapper=mapper, alphas=alphas, equalizer=equalizer)

    def __call__(self, source: torch.Tensor, edited: torch.Tensor, alpha: float) -> torch.Tensor:
        """``alpha * reweight(f(source)) + (1 - alpha) * edited`` on ``(..., T)`` maps."""
        if self.replace is not None:
            fused = source @ self.replace.to(source)
        else:
            alphas = self.alphas.to(source)
            fused = source[..., self.mapper.to(source.device)] * alphas + edited * (1 - alphas)
        fused = fused * self.equalizer.to(source)
        return alpha * fused + (1 - alpha) * edited


def cross_alpha(step: int, steps: int, fraction: float) -> float:
    """Prompt-to-prompt weight: 1 for ``k < int((N + 1) * fraction)``, 0 after."""
    return float(step < int((steps + 1) * fraction))


def blend_by_mask(edited: torch.Tensor, source: torch.Tensor, keep_edit: torch.Tensor) -> torch.Tensor:
    """FateZero's blend: ``keep_edit * edited + (1 - keep_edit) * source`` (the mask broadcasts)."""
    return keep_edit * edited + (1 - keep_edit) * source


def latent_blend_active(step: int, steps: int, start: float, end: float) -> bool:
    """The official window (FateZero's SpatialBlender counts steps from 1): latents are blended after editing steps
    ``int(N * start) < k + 1 < int(N * end)``, steps 10..38 of 50 at 0.2 / 0.8; an ``end`` above 1 (official
    configs use 2) keeps blending through the last step."""
    return int(steps * start) < step + 1 < int(steps * end)


# ---------------------------------------------------------------------------------------------- blend mask


def word_attention(maps: torch.Tensor, token_positions: list[int]) -> torch.Tensor:
    """``(F, heads, n, T)`` cross-attention maps -> ``(F, n)``: summed over the words' tokens, averaged over heads."""
    return maps[..., token_positions].float().sum(-1).mean(1)


def blend_mask(word_maps: list[torch.Tensor], grid: tuple[int, int], size: tuple[int, int],
               threshold: float) -> torch.Tensor:
    """FateZero's mask ``(F, h, w)`` in {0, 1} (1 = edited) from the layers' ``word_attention`` maps ``(F, n)``.

    Averaged over the layers (all have the same heads: the mean over heads x layers), 3x3 max-pool, nearest
    resize to ``size``, divided by each frame's maximum, ``> threshold``.
    """
    per_frame = rearrange(torch.stack(word_maps).mean(0), "f (h w) -> f 1 h w", h=grid[0], w=grid[1])
    pooled = F.max_pool2d(per_frame, 3, stride=1, padding=1)
    resized = F.interpolate(pooled, size=size, mode="nearest")
    normalised = resized / resized.amax(dim=(-2, -1), keepdim=True)
    return (normalised > threshold).float()[:, 0]


def blended_denoised(x: torch.Tensor, denoised: torch.Tensor, source_next: torch.Tensor, sigma: float,
                     sigma_next: float, mask: torch.Tensor) -> torch.Tensor:
    """The x0 prediction whose Euler/DDIM step from ``(x, sigma)`` lands on
    ``mask * x_next + (1 - mask) * source_next``: FateZero's latent blend after the scheduler step."""
    keep = sigma_next / sigma
    source_denoised = (source_next - keep * x) / (1 - keep)
    return mask * denoised + (1 - mask) * source_denoised
