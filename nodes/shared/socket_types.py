"""Sockets: the pack's own socket types, for data no native ComfyUI type carries, named here once for every module;
and the base class of every node, which checks the values that reach its non-widget sockets."""

import functools
from typing import Protocol

import torch
from comfy_api.latest import io

InversionType = io.Custom("VE_INVERSION")  # kernels.inversion.Inversion: the clip at every DDIM level, and captures
CaptureType = io.Custom("VE_ATTENTION_CAPTURE")  # what VE_DDIMInvert also records: an InversionCapture
MotionLoRA = io.Custom("VE_MOTION_LORA")  # MotionDirector's temporal LoRA tensors
VideoSet = io.Custom("VE_CLIP_SET")  # MotionDirector's training videos, each with its prompt (name kept for saved
#                                      workflows: "clip" there means a video clip)

ATTENTION_CAPTURE = "attention"  # the Inversion.captures key of FateZero's AttentionStore


class CaptureStore(Protocol):
    """What an InversionCapture fills while VE DDIM Invert runs."""

    def require_complete(self) -> None:
        """Raise if the inversion did not fill every part of it."""


class InversionCapture(Protocol):
    """A value on a VE_ATTENTION_CAPTURE socket: what VE DDIM Invert records besides the latents, kept in
    ``Inversion.captures[key]``."""

    key: str

    def recording_model(self, model, samples: torch.Tensor, conditioning, sigmas: torch.Tensor) -> tuple:
        """(a clone of ``model`` that records while it inverts ``samples`` at ``sigmas``, the CaptureStore it fills)."""


# ----- values on sockets ---------------------------------------------------------------------------------------------
# ComfyUI checks the values of widgets (numbers, strings, combos) itself, but passes whatever an API client puts on
# any other socket (a file name on a VIDEO input, say) straight to the node. Every node of the pack is a
# VideoEditNode, which checks such values against their socket's type before ``execute`` runs.

NATIVE_SOCKETS = {  # type -> (what it holds, does a value look like it)
    "MODEL": ("a model (ComfyUI's ModelPatcher)", lambda v: hasattr(v, "clone") and hasattr(v, "model_options")),
    "CLIP": ("a CLIP text encoder", lambda v: hasattr(v, "tokenize")),
    "CLIP_VISION": ("a CLIP vision model", lambda v: hasattr(v, "encode_image")),
    "VAE": ("a VAE", lambda v: hasattr(v, "decode")),
    "LATENT": ("a latent batch (a dict with a 'samples' tensor)",
               lambda v: isinstance(v, dict) and isinstance(v.get("samples"), torch.Tensor)),
    "IMAGE": ("frames as a [F,H,W,C] tensor", lambda v: isinstance(v, torch.Tensor) and v.ndim == 4),
    "MASK": ("a mask tensor", lambda v: isinstance(v, torch.Tensor)),
    "CONDITIONING": ("conditioning (a list of [tensor, options] pairs)",
                     lambda v: isinstance(v, list) and all(isinstance(c, (list, tuple)) and len(c) == 2
                                                           and isinstance(c[0], torch.Tensor) for c in v)),
    "VIDEO": ("a video (core Load Video's VIDEO)", lambda v: hasattr(v, "get_components")),
}


def _looks_like(io_type: str, value) -> bool:
    if io_type in NATIVE_SOCKETS:
        return NATIVE_SOCKETS[io_type][1](value)
    return not isinstance(value, (str, int, float, bool))  # no other socket carries a bare JSON value


@functools.cache
def _sockets(node: type) -> tuple:
    """The node's inputs that are sockets, not widgets (read once: the schema lists files, so costs a folder scan)."""
    return tuple(socket for socket in node.define_schema().inputs if not isinstance(socket, io.WidgetInput))


def check_socket_values(node: type, values: dict) -> None:
    """Refuse, naming the input and the fix, a value that is not of its (non-widget) socket's type."""
    for socket in _sockets(node):
        value, io_type = values.get(socket.id), socket.get_io_type()
        if value is None or _looks_like(io_type, value):
            continue
        what = NATIVE_SOCKETS.get(io_type, (f"a {io_type} value from another node",))[0]
        shown = repr(value) if isinstance(value, (str, int, float, bool)) else f"a {type(value).__name__}"
        schema = node.define_schema()
        raise ValueError(f"{schema.display_name or schema.node_id}: input '{socket.id}' takes {what}, got "
                         f"{shown[:80]}. Connect it to a node's {io_type} output (or leave it unconnected if it is "
                         f"optional).")


class VideoEditNode(io.ComfyNode):
    """Base of every node of the pack: ``execute`` first checks the values on its non-widget sockets."""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        execute = cls.__dict__.get("execute")
        if execute is None or hasattr(execute.__func__, "checks_sockets_of"):
            return  # ComfyUI's per-run clones of a node class copy its (already checking) execute
        run = execute.__func__

        @functools.wraps(run)
        def checked(node, *args, **values):
            check_socket_values(cls, values)
            return run(node, *args, **values)

        checked.checks_sockets_of = cls
        cls.execute = classmethod(checked)
