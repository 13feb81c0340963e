"""TokenFlow (omerbt/TokenFlow): keyframes, the nearest-neighbour field and propagation of self-attention outputs.

Layout: frames are the batch, and the batch holds several branches of the same clip (TokenFlow's
``[source; uncond; cond]``), so tokens arrive as ``((branch frame), tokens, channels)`` with the source first.
Frames are split into chunks of ``chunk_size`` consecutive frames; chunk i has one keyframe, and keyframe
tensors hold one row per chunk, in chunk order.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from .attention import AttentionFn, extended_attention, sdpa_attention
from .unet_layout import UPSAMPLE, has_layer

# Cosine similarities computed at once by the nearest-neighbour search (16 MiB in fp32).
MAX_SIMILARITIES = 2**22


def chunk_of_frames(num_frames: int, chunk_size: int, device=None) -> torch.Tensor:
    """The chunk (= keyframe row) of every frame: ``f // chunk_size``."""
    return torch.arange(num_frames, device=device) // chunk_size


def keyframe_schedule(num_frames: int, chunk_size: int, steps: int, seed: int) -> torch.Tensor:
    """``[steps, chunks]`` absolute keyframe indices: one uniformly drawn frame per chunk, redrawn every step.

    One generator seeded with ``seed`` draws the steps in order, as the official loop does. The official code
    drops frames past the last whole chunk; here a last, shorter chunk draws among its own frames.
    """
    starts = torch.arange(0, num_frames, chunk_size)
    sizes = (num_frames - starts).clamp(max=chunk_size)
    draws = torch.rand(steps, len(starts), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return starts + (draws * sizes).long()


def blend_weights(num_frames: int, chunk_size: int) -> torch.Tensor:
    """Weight of each frame's own keyframe (the rest goes to the previous chunk's), as coded officially.

    ``sigmoid(d2 / (d1 + d2))`` with d1, d2 the distances to the centres ``i*bs + bs//2`` of the frame's chunk i
    and of chunk i-1 (not to the keyframes), so it lies in [0.5, sigmoid(1) = 0.731]; chunk 0 has weight 1.
    """
    frames = torch.arange(num_frames, dtype=torch.float64)
    chunk = frames.div(chunk_size, rounding_mode="floor")
    own = chunk * chunk_size + chunk_size // 2
    d1, d2 = (frames - own).abs(), (frames - own + chunk_size).abs()
    return torch.where(chunk > 0, torch.sigmoid(d2 / (d1 + d2)), torch.ones_like(frames))


def nearest_tokens(queries: torch.Tensor, keys: torch.Tensor, key_of_frame: torch.Tensor,
                   max_similarities: int = MAX_SIMILARITIES) -> torch.Tensor:
    """``[F, N]``: for every token of frame f, the index of the most cosine-similar token of ``keys[key_of_frame[f]]``.

    ``queries`` ``[F, N, C]``, ``keys`` ``[K, M, C]``. Runs over blocks of query tokens holding at most
    ``max_similarities`` similarities, never a frames x tokens x tokens matrix. Only the keys are normalised:
    scaling a query does not change its argmax.
    """
    frames, tokens, channels = queries.shape
    keys = F.normalize(keys, dim=-1)
    rows = max(1, max_similarities // keys.shape[1])
    found = torch.empty(frames * tokens, dtype=torch.long, device=queries.device)
    start = 0
    runs, counts = torch.unique_consecutive(key_of_frame, return_counts=True)
    for key, count in zip(runs.tolist(), counts.tolist()):
        flat = queries[start:start + count].reshape(-1, channels)
        run = found[start * tokens:(start + count) * tokens]
        for row in range(0, flat.shape[0], rows):
            run[row:row + rows] = (flat[row:row + rows] @ keys[key].T).argmax(-1)
        start += count
    return found.view(frames, tokens)


def propagate(source_tokens: torch.Tensor, keyframe_tokens: torch.Tensor, keyframe_outputs: torch.Tensor,
              chunk_size: int, first_frame: int = 0, first_chunk: int = 0,
              max_similarities: int = MAX_SIMILARITIES) -> torch.Tensor:
    """TokenFlow's self-attention output of every frame, without evaluating attention on it.

    ``source_tokens`` ``[F, N, C]`` and ``keyframe_tokens`` ``[K, N, C]``: the source branch's self-attention
    input (after norm1) for frames ``first_frame ..`` of the clip and for the keyframes of chunks
    ``first_chunk ..``. ``keyframe_outputs`` ``[(b K), N, D]``: the keyframes' self-attention outputs of all b
    branches. Frame f of chunk i takes ``w * G(kf_i) + (1 - w) * G(kf_{i-1})`` (chunk 0: ``G(kf_0)``), G gathering
    a keyframe's outputs at the cosine nearest neighbours of f's source tokens; the same indices serve every
    branch. Returns ``[(b F), N, D]``.
    """
    frames, tokens = source_tokens.shape[:2]
    keyframes = keyframe_tokens.shape[0]
    chunk = chunk_of_frames(first_frame + frames, chunk_size, source_tokens.device)[first_frame:] - first_chunk
    outputs = rearrange(keyframe_outputs, "(b k) n d -> b (k n) d", k=keyframes)
    own = nearest_tokens(source_tokens, keyframe_tokens, chunk, max_similarities) + chunk[:, None] * tokens
    result = outputs[:, own]  # b f n d
    first = max(0, min(chunk_size - first_frame, frames))  # frames of the clip's chunk 0: no previous keyframe
    if frames > first:
        prev_chunk = chunk[first:] - 1
        prev = nearest_tokens(source_tokens[first:], keyframe_tokens, prev_chunk, max_similarities)
        prev += prev_chunk[:, None] * tokens
        weight = (1 - blend_weights(first_frame + frames, chunk_size)[first_frame + first:]).to(result)
        for start in range(0, frames - first, chunk_size):  # a chunk at a time: a small temporary gather
            rows = slice(start, start + chunk_size)
            result[:, first + start:first + start + chunk_size].lerp_(outputs[:, prev[rows]], weight[rows, None, None])
    return rearrange(result, "b f n d -> (b f) n d")


def keyframe_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, chunks: int,
                       attention: AttentionFn = sdpa_attention) -> torch.Tensor:
    """The keyframe pass: the source branch (chunk 0) attends per frame; in every other branch each keyframe
    attends to the keys/values of all keyframes of that branch (extended attention)."""
    per_branch = q.shape[0] // chunks
    source = attention(q[:per_branch], k[:per_branch], v[:per_branch], heads)
    edited = extended_attention(q[per_branch:], k[per_branch:], v[per_branch:], heads, chunks - 1, attention)
    return torch.cat([source, edited])


def copy_source_branch(x: torch.Tensor, chunks: int) -> torch.Tensor:
    """Plug-and-play injection: every branch gets the source branch's (chunk 0's) rows."""
    per_branch = x.shape[0] // chunks
    return x[:per_branch].repeat(chunks, *(1,) * (x.ndim - 1))


def start_latent(clean: torch.Tensor, noisiest: torch.Tensor, sigma_noisiest: float,
                 sigma_start: float) -> torch.Tensor:
    """The official start ``add_noise(x0, eps, t0)`` in sigma space: eps from the noisiest inverted latent
    (``x_T = x0 + sigma_T * eps``), then ``x0 + sigma_start * eps``. Works in LATENT units, as the scale cancels."""
    return clean + (sigma_start / sigma_noisiest) * (noisiest - clean)


def _decoder_levels(unet: nn.Module) -> list[list[int]]:
    """Output block indices grouped by resolution: a level ends with the block that upsamples."""
    levels, current = [], []
    for index, block in enumerate(unet.output_blocks):
        current.append(index)
        if has_layer(block, UPSAMPLE):
            levels.append(current)
            current = []
    return levels + [current] if current else levels


def pnp_output_block(unet: nn.Module) -> int:
    """Where plug-and-play injection starts: the second block of the first decoder level with self-attention.

    SD1.x (LDM layout): ``output_blocks.4`` = diffusers ``up_blocks[1]`` block 1, the official choice. Its ResNet
    gets the conv injection; its self-attention and every later decoder self-attention get the q/k injection
    (SD1.x: output blocks 4-11, the official "decoder blocks 4-11").
    """
    for level in _decoder_levels(unet):
        if any(hasattr(layer, "transformer_blocks") for layer in unet.output_blocks[level[0]]):
            if len(level) < 2:
                break
            return level[1]
    raise ValueError("model: TokenFlow needs a UNet whose first decoder level with self-attention has at least two "
                     "blocks (SD1.x layout).")


def pnp_resnet(unet: nn.Module) -> nn.Module:
    """The ResNet whose conv2 output is injected (SD1.x: ``output_blocks.4.0``)."""
    block = unet.output_blocks[pnp_output_block(unet)]
    return next(layer for layer in block if hasattr(layer, "out_layers"))


def with_source_branch(batch: torch.Tensor, source: torch.Tensor, branches: int, rows: torch.Tensor) -> torch.Tensor:
    """``[source[rows]; each branch's batch[rows]]`` along the batch axis: TokenFlow runs the source clip as one
    more branch beside the sampler's cond/uncond ones."""
    per_branch = rearrange(batch, "(b f) ... -> b f ...", b=branches)[:, rows]
    return torch.cat([source[rows], rearrange(per_branch, "b f ... -> (b f) ...")])


def same_token_count(context: torch.Tensor, source: torch.Tensor):
    """Repeat two text contexts to a common token count (ComfyUI's rule for prompts of different lengths)."""
    if context.shape[1] == source.shape[1]:
        return context, source
    common = math.lcm(context.shape[1], source.shape[1])
    return context.repeat(1, common // context.shape[1], 1), source.repeat(1, common // source.shape[1], 1)
