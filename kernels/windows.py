"""Context windows for long clips: which frames each window holds, how overlapping results blend, and which
frames a window's cross-frame attention reads when the clip's anchor frame lies outside the window.

A window is a run of consecutive frame indices. Windows of ``length`` frames overlap by ``overlap`` frames; the
last one ends on the clip's last frame and may be shorter (it still overlaps the one before by ``overlap``), so
the frames computed are ``frames + overlap`` per extra window, no more. Where windows overlap, each frame's
results are averaged with weights that ramp linearly across the overlap, so a frame's weight moves smoothly from
one window to the next.
"""

from __future__ import annotations

import torch

from .attention import reference_frames


def frame_windows(frames: int, length: int, overlap: int) -> list[list[int]]:
    """The windows of a clip of ``frames`` frames; one window (the whole clip) when it fits."""
    if length < 1:
        raise ValueError(f"context_length: {length} frames; use 1 or more.")
    if not 0 <= overlap < length:
        raise ValueError(f"context_overlap: {overlap} frames; use 0 to {length - 1} (less than the window).")
    if frames <= length:
        return [list(range(frames))]
    starts = range(0, frames - overlap, length - overlap)
    return [list(range(start, min(start + length, frames))) for start in starts]


def window_weights(window: list[int], frames: int, overlap: int) -> torch.Tensor:
    """Blend weight of each frame of ``window``: ``1 .. overlap`` over ``overlap + 1`` on a side shared with
    another window, 1 elsewhere (the clip's first and last frames are never ramped)."""
    weights = torch.ones(len(window))
    ramp = torch.arange(1, overlap + 1) / (overlap + 1)
    if overlap and window[0] > 0:
        weights[:overlap] = ramp
    if overlap and window[-1] < frames - 1:
        weights[-overlap:] = torch.minimum(weights[-overlap:], ramp.flip(0))
    return weights


def anchor_frames(frames: int, mode: str) -> list[int]:
    """Frames every frame of the clip attends to in cross-frame ``mode``: the ones a window must borrow."""
    if mode in ("sparse_causal", "first_frame"):
        return [0]
    if mode == "middle_frame":
        return [(frames - 1) // 2]
    return []


def window_references(window: list[int], frames: int, mode: str, borrowed: list[int]) -> torch.Tensor:
    """``[len(window), refs]`` rows into ``window's frames + borrowed frames`` that each frame of ``window`` attends
    to, for the clip-wide references of ``reference_frames(frames, mode)``.

    A reference inside the window is read there, a ``borrowed`` one (the anchor, computed by an earlier window of
    the same step) from the rows after the window; any other (sparse-causal's frame i-1 of a window's first frame)
    is replaced by the frame itself.
    """
    position = {frame: row for row, frame in enumerate(window)}
    position.update({frame: len(window) + row for row, frame in enumerate(borrowed) if frame not in position})
    refs = reference_frames(frames, mode)[window]
    own = torch.arange(len(window))[:, None].expand_as(refs)
    rows = torch.tensor([position.get(int(frame), -1) for frame in refs.flatten()]).view_as(refs)
    return torch.where(rows >= 0, rows, own)
