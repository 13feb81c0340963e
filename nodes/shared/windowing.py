"""What VE Context Windows shares with the attention patches that run inside its windows: the window a model call
covers and the anchor frames a step borrows from one window to the next."""

from __future__ import annotations

import torch

from .attention_slots import chain
from .comfy_internals import replace_patches


class BorrowedFrames:
    """One step's anchor keys/values, kept by the window that computed them for the windows after it.

    They are keyed by the attention call: block, transformer index, cond/uncond flag and the call's number for
    that flag within the window (a patch that attends twice per layer, like FateZero's fusion, borrows each
    call's own), so it does not matter whether ComfyUI batches cond and uncond together.
    """

    def __init__(self, frames: int):
        self.frames = frames
        self.saved: dict = {}
        self.calls: dict = {}

    def start_window(self):
        self.calls.clear()

    def call_keys(self, extra_options, flags: list[int]) -> list[tuple]:
        """One key per chunk of the attention call."""
        block = (*extra_options["block"], extra_options.get("block_index", 0))
        keys = []
        for flag in flags:
            number = self.calls.get((block, flag), 0)
            self.calls[block, flag] = number + 1
            keys.append((*block, flag, number))
        return keys

    def keep(self, call: tuple, frame: int, key: torch.Tensor, value: torch.Tensor):
        self.saved.setdefault((call, frame), (key.clone(), value.clone()))

    def get(self, call: tuple, frame: int):
        return self.saved.get((call, frame))


class FrameWindow:
    """The frames of one window, as patches read it from ``transformer_options["context_window"]``."""

    def __init__(self, index_list: list[int]):
        self.index_list = index_list


def clip_rows(extra_options, frames: int) -> list[int] | slice:
    """The clip's frame indices of a model call's ``frames`` frames: the window's under context windows, else all."""
    window = extra_options.get("context_window")
    return slice(0, frames) if window is None else list(window.index_list)


def attn1_patches(model_options):
    """Every attn1 replace patch in the options, with the patches of ours each one wraps."""
    for patch in replace_patches(model_options, "attn1").values():
        yield from chain(patch)
