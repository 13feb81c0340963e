"""Cross-frame self-attention: which frames a frame's queries look at, and attention over those keys.

Layout: ComfyUI runs a video as a batch of frames, possibly several "chunks" of it at once (the cond and
uncond halves of CFG), so tokens arrive as ``((chunk frame), tokens, channels)``. Queries stay per frame;
keys and values are gathered from the reference frames and concatenated along the token axis, so any fast
attention kernel (SDPA, xformers, sage) still runs and no attention matrix is materialised.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from einops import rearrange

CROSS_FRAME_MODES = ("sparse_causal", "first_frame", "middle_frame", "full")
# Query tokens per attention call when frames go a few at a time: one frame at SD1.5's 64x64 level, 4 at 32x32;
# and the heads go in this many groups.
QUERY_TOKENS_PER_CALL = 4096
HEAD_GROUPS_PER_CALL = 4


def reference_frames(num_frames: int, mode: str) -> torch.Tensor:
    """Frame indices each frame attends to, shape ``[num_frames, refs]``.

    - ``sparse_causal`` (Tune-A-Video): ``[0, max(i-1, 0)]``. Frame 0 sees itself twice (= plain
      self-attention), frame 1 sees only frame 0, frame i >= 2 sees frames 0 and i-1, never itself.
    - ``first_frame``: ``[0]``; ``middle_frame`` (FateZero's zero-shot anchor): ``[(F-1)//2]``.
    - ``full``: every frame (spatio-temporal attention; memory grows with F^2).
    """
    frames = torch.arange(num_frames)
    if mode == "sparse_causal":
        return torch.stack([torch.zeros_like(frames), (frames - 1).clamp(min=0)], dim=1)
    if mode == "first_frame":
        return torch.zeros(num_frames, 1, dtype=torch.long)
    if mode == "middle_frame":
        return torch.full((num_frames, 1), (num_frames - 1) // 2, dtype=torch.long)
    if mode == "full":
        return frames.repeat(num_frames, 1)
    raise ValueError(f"unknown cross-frame mode {mode!r}; choose one of {CROSS_FRAME_MODES}")


def bank_rows(refs: torch.Tensor, chunks: int, borrowed: int = 0) -> torch.Tensor:
    """``[(c f), refs]`` rows of a key/value bank for per-frame reference indices ``refs`` ``[f, refs]``.

    The bank holds the batch's ``(c f)`` rows, then ``borrowed`` rows per chunk (frames computed outside the
    batch, see kernels/windows.py): a reference ``f + j`` means chunk c's borrowed row j.
    """
    frames = refs.shape[0]
    chunk = torch.arange(chunks)[:, None, None]
    rows = torch.where(refs < frames, chunk * frames + refs, chunks * frames + chunk * borrowed + refs - frames)
    return rows.flatten(0, 1)


def sdpa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """Multi-head attention on ``(b, n, heads*dim)`` tensors with torch's fused kernel."""
    q, k, v = (rearrange(t, "b n (h d) -> b h n d", h=heads) for t in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v)
    return rearrange(out, "b h n d -> b n (h d)")


AttentionFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, int], torch.Tensor]


def extended_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, chunks: int,
                       attention: AttentionFn = sdpa_attention) -> torch.Tensor:
    """Every frame's queries attend to the keys/values of all frames of its chunk (``full`` mode, TokenFlow's
    extended attention). Frames are folded into the token axis, so keys/values are not copied per frame."""
    frames = q.shape[0] // chunks
    q, k, v = (rearrange(t, "(c f) n d -> c (f n) d", c=chunks) for t in (q, k, v))
    return rearrange(attention(q, k, v, heads), "c (f n) d -> (c f) n d", f=frames)


def cross_frame_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, chunks: int, mode: str,
                          attention: AttentionFn = sdpa_attention,
                          query_tokens_per_call: int | None = None) -> torch.Tensor:
    """Self-attention where frame i's queries attend to the keys/values of ``reference_frames(F, mode)[i]``."""
    if q.shape[0] % chunks:
        raise ValueError(f"batch {q.shape[0]} is not a whole number of {chunks} chunks of frames")
    if mode == "full":
        return extended_attention(q, k, v, heads, chunks, attention)
    rows = bank_rows(reference_frames(q.shape[0] // chunks, mode), chunks)
    return attention_to_rows(q, k, v, rows, heads, attention, query_tokens_per_call)


def gather_rows(t: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """``(b, refs*n, d)``: for each b, rows ``rows[b]`` of ``t`` ``(rows, n, d)`` concatenated along the tokens.

    ``index_select`` rather than ``t[rows]``: the same values, but its backward adds the gradients back with
    ``index_add_``, where advanced indexing's accumulating ``index_put_`` sorts the indices first (several
    times slower on a CPU, see tools/benchmarks/tune_a_video.py)."""
    return t.index_select(0, rows.flatten()).unflatten(0, rows.shape).flatten(1, 2)


def records_for_backward(*tensors: torch.Tensor) -> bool:
    """Whether autograd keeps what an operation on ``tensors`` saves (grad mode on and an input needs a gradient)."""
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def attention_to_rows(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rows: torch.Tensor, heads: int,
                      attention: AttentionFn = sdpa_attention,
                      query_tokens_per_call: int | None = None) -> torch.Tensor:
    """Row b of ``q`` attends to the keys/values of bank rows ``rows[b]`` of ``k``/``v``, concatenated.

    With ``query_tokens_per_call``, ``attention`` runs on a few frames (as many as fit that many query tokens, at
    least one) and a quarter of the heads at a time, gathering only those frames' reference keys/values of those
    heads: peak memory stays near the output's instead of growing with the clip. The result is the same. While
    autograd records (training), everything goes in one call: each call's gathered keys/values are kept for the
    backward pass anyway (with gradient checkpointing, by the recompute), so smaller calls would save no memory
    and cost a backward per call.
    """
    rows = rows.to(k.device)
    if query_tokens_per_call is None or records_for_backward(q, k, v):
        return attention(q, gather_rows(k, rows), gather_rows(v, rows), heads)
    step = max(1, query_tokens_per_call // q.shape[1])
    group = max(1, heads // HEAD_GROUPS_PER_CALL)
    width = q.shape[2] // heads
    out = torch.empty_like(q)
    for start in range(0, q.shape[0], step):
        part = rows[start:start + step]
        for first in range(0, heads, group):
            count = min(group, heads - first)
            channels = slice(first * width, (first + count) * width)  # these heads, in (heads x dim) order
            out[start:start + step, :, channels] = attention(
                q[start:start + step, :, channels], gather_rows(k[..., channels], part),
                gather_rows(v[..., channels], part), count)
    return out
