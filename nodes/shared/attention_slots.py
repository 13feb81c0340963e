"""Attention slots: the one owner of this pack's attn1/attn2 replace patches and of what happens when one of them
meets another patch in the same slot (ours or another pack's), in either order.

Every patch of ours is a ``SlotPatch`` with a ``role`` (the node that puts it there) and an ``inner`` (the patch it
wraps and calls, or None for ComfyUI's kernel). ``install`` places a new patch by ``SLOT_TABLE``:

- wrap: the new patch holds the one there as its ``inner`` and computes its attention through it;
- replace: the new patch takes the place of the one there (ours, re-configured), keeping what that one wrapped;
- inside: the patch there keeps the slot and the new one takes the place of its ``inner`` (fusion must choose the
  keys that a cross-frame patch then gathers, whichever node came first);
- refuse: a ValueError naming both nodes and the order that works.

Another pack's patch that comes *after* ours either wraps ours, adds to it (the attn2 ``add`` protocol of
IPAdapter_plus, ``AddsToOutput``), or replaces it; ``guard_slots`` makes sampling refuse the last case by name.
docs/design.md §1 has the same table.
"""

from __future__ import annotations

import copy
import math

from comfy.ldm.modules.attention import optimized_attention
from comfy.patcher_extension import WrappersMP

from .comfy_internals import replace_patches, wrap_replace_patches, wrapped_guider
from .patcher import PatcherKeys, set_wrapper

CROSS_FRAME, TOKENFLOW, CAPTURE, FUSION, FOREIGN = "cross-frame", "tokenflow", "capture", "fusion", "foreign"
NODE_NAMES = {CROSS_FRAME: "VE Sparse-Causal Attention", TOKENFLOW: "VE TokenFlow",
              CAPTURE: "VE DDIM Invert's attention capture", FUSION: "VE Attention Fusion"}
WRAP, REPLACE, INSIDE = "wrap", "replace", "inside"

_TWO_EDITS = "TokenFlow and FateZero's fusion are two editing methods that each own the sampling; use one of them"
_ONE_FUSION = "one fusion per model; connect the second one to the MODEL that went into the first"
_INVERT_FIRST = "invert with the MODEL that went into {old}, not with the one it returned"
# (slot, role of the new patch, role of the patch there) -> wrap, replace, inside, or the reason it is refused
# (with the order that works). Pairs not listed wrap.
SLOT_TABLE = {
    ("attn1", CROSS_FRAME, CROSS_FRAME): REPLACE,
    ("attn1", CROSS_FRAME, TOKENFLOW): ("TokenFlow's keyframe attention already looks across frames and its "
                                        "propagation needs it; connect {new} before {old} (TokenFlow then takes its "
                                        "place) or leave it out"),
    ("attn1", CROSS_FRAME, FUSION): INSIDE,
    ("attn1", TOKENFLOW, CROSS_FRAME): REPLACE,
    ("attn1", TOKENFLOW, TOKENFLOW): REPLACE,
    ("attn1", TOKENFLOW, FUSION): _TWO_EDITS,
    ("attn1", FUSION, TOKENFLOW): _TWO_EDITS,
    ("attn1", FUSION, FUSION): _ONE_FUSION,
    ("attn1", CAPTURE, FUSION): _INVERT_FIRST,
    ("attn2", CAPTURE, FUSION): _INVERT_FIRST,
    ("attn2", FUSION, FUSION): _ONE_FUSION,
    ("attn2", FUSION, FOREIGN): ("fusion edits the cross-attention maps themselves, which that patch computes its own "
                                 "way; connect {new} first and {old} after it (packs that add to the slot, as "
                                 "IPAdapter does, then add their attention to the fused output)"),
}


class SlotPatch:
    """An attention replace patch of this pack: ``role`` says which node put it there, ``inner`` is what it wraps.

    ``ModelPatcher.clone`` deep-copies patches; a copy of ours is shallow (stores and plans stay shared, what
    ``add`` appends goes to the copy only).
    """

    role: str = ""
    inner = None

    def __deepcopy__(self, memo):
        return copy.copy(self)

    def with_inner(self, inner):
        """A copy of this patch that wraps ``inner`` (the patch in the input MODEL is never changed)."""
        patch = copy.copy(self)
        patch.inner = inner
        return patch

    def attention(self, q, k, v, extra_options, heads: int | None = None):
        """The attention of ``inner`` (with the keys and values we chose), else ComfyUI's selected kernel."""
        heads = heads or extra_options["n_heads"]
        if self.inner is None:
            return optimized_attention(q, k, v, heads)
        return self.inner(q, k, v, {**extra_options, "n_heads": heads})

    def attention_function(self, extra_options):
        """``attention(q, k, v, heads)`` for the kernels (see ``attention``)."""
        return lambda q, k, v, heads: self.attention(q, k, v, extra_options, heads)


class AddsToOutput(SlotPatch):
    """An attn2 patch that speaks the ecosystem's protocol (IPAdapter_plus ``Attn2Replace``): a pack that finds it
    in the slot calls ``add(callback, **kwargs)``, and every call then adds
    ``callback(out, q, k, v, extra_options, **kwargs)`` to our output ``out`` while the sigma is inside the
    callback's ``[sigma_end, sigma_start]``, as Attn2Replace adds it to plain attention."""

    callbacks: tuple = ()

    def add(self, callback, **kwargs):
        self.callbacks = (*self.callbacks, (callback, kwargs))

    def with_added(self, out, q, k, v, extra_options):
        """``out`` plus the contributions of the added callbacks."""
        if not self.callbacks:
            return out
        sigma = extra_options["sigmas"].detach().cpu()[0].item() if "sigmas" in extra_options else math.inf
        for callback, kwargs in self.callbacks:
            if kwargs.get("sigma_end", -math.inf) <= sigma <= kwargs.get("sigma_start", math.inf):
                out = out + callback(out, q, k, v, extra_options, **kwargs)
        return out.to(q.dtype)


def role_of(patch) -> str:
    return patch.role if isinstance(patch, SlotPatch) else FOREIGN


def describe(patch) -> str:
    """A node of ours by name, another pack's patch by its module and class (e.g. IPAdapter_plus's Attn2Replace)."""
    if isinstance(patch, SlotPatch):
        return NODE_NAMES[patch.role]
    name = getattr(patch, "__qualname__", type(patch).__qualname__)
    return f"another pack's patch {getattr(patch, '__module__', type(patch).__module__)}.{name}"


def replace_patch(model, kind: str, key: tuple):
    """The attn1/attn2 replace patch ComfyUI would call for block ``key``: the full key's, else one at the short key
    ``(block, number)`` itself, as ComfyUI looks them up. Not through SlotDict's short-key answer, which is the
    patch at transformer 0: in a block with several transformers (SDXL) that is another slot's patch."""
    patches = replace_patches(model.model_options, kind)
    return patches[key] if key in patches else dict.get(patches, key[:2])


def chain(patch):
    """The patch in a slot and every patch of ours below it (through ``inner``)."""
    while patch is not None:
        yield patch
        patch = patch.inner if isinstance(patch, SlotPatch) else None


def placed(kind: str, key: tuple, new: SlotPatch, old):
    """What a slot holding ``old`` holds once ``new`` is installed there (SLOT_TABLE)."""
    if old is None:
        return new.with_inner(None)
    action = SLOT_TABLE.get((kind, new.role, role_of(old)), WRAP)
    if action == WRAP:
        return new.with_inner(old)
    if action == REPLACE:
        return new.with_inner(old.inner)
    if action == INSIDE:
        return old.with_inner(placed(kind, key, new, old.inner))
    raise ValueError(f"model: {NODE_NAMES[new.role]} after {describe(old)} (block {key}, {kind}): "
                     + action.format(new=NODE_NAMES[new.role], old=describe(old)) + ".")


class SlotDict(dict):
    """``patches_replace[kind]`` of a MODEL of ours: it also answers ComfyUI's short block key ``(block, number)``
    with the patch at ``(block, number, 0)`` (SD1.x has one transformer per block, so both name the same slot), so a
    pack that looks up a slot by the short key (IPAdapter_plus) finds our patch and calls its ``add``."""

    def _full(self, key):
        short = isinstance(key, tuple) and len(key) == 2 and not dict.__contains__(self, key)
        return (*key, 0) if short else key

    def __contains__(self, key):
        return dict.__contains__(self, self._full(key))

    def __getitem__(self, key):
        return dict.__getitem__(self, self._full(key))

    def get(self, key, default=None):
        return dict.get(self, self._full(key), default)

    def copy(self):
        return SlotDict(self)


def install(clone, kind: str, key: tuple, patch: SlotPatch):
    """Put ``patch`` into ``clone``'s ``kind`` slot of block ``key`` by SLOT_TABLE (it may refuse)."""
    clone.set_model_patch_replace(placed(kind, key, patch, replace_patch(clone, kind, key)), kind, *key)
    wrap_replace_patches(clone, kind, SlotDict)


def remove(clone, kind: str, key: tuple, role: str):
    """Take our ``role`` patches out of a slot of ``clone``; what they wrapped (another pack's patch) stays."""
    def without(patch):
        if not isinstance(patch, SlotPatch):
            return patch
        inner = without(patch.inner)
        return inner if patch.role == role else patch.with_inner(inner)

    old = replace_patch(clone, kind, key)
    kept = without(old)
    if kept is not None:
        clone.set_model_patch_replace(kept, kind, *key)
    elif old is not None:
        replace_patches(clone.model_options, kind).pop(key, None)


def _refusal(kind: str, key: tuple, ours: str, later, what: str) -> ValueError:
    works = SLOT_TABLE.get((kind, ours, role_of(later)), WRAP) == WRAP
    fix = (f"connect {describe(later)} before {NODE_NAMES[ours]}" if works else
           f"{NODE_NAMES[ours]} and {describe(later)} cannot share the slot; use one of them")
    return ValueError(f"model: {describe(later)}, connected after {NODE_NAMES[ours]}, {what} (block {key}, {kind}); "
                      f"{fix}.")


class SlotGuard:
    """OUTER_SAMPLE wrapper: every slot still holds the patches of ours it held when our last node returned the
    MODEL (wrapped or added to by a later pack is fine). A later pack's patch that replaced one of ours, or that
    sits at the short key ``(block, number)`` where ComfyUI never calls it (ours holds the full key), is refused
    by name."""

    def __init__(self, roles: dict, shadowed: set):
        self.roles = roles  # (kind, full key) -> the roles of ours in that slot
        self.shadowed = shadowed  # (kind, short key) holding a patch when our node returned the MODEL

    def __call__(self, executor, *args, **kwargs):
        options = wrapped_guider(executor).model_options
        for (kind, key), roles in self.roles.items():
            slots = replace_patches(options, kind)
            top = dict.get(slots, key)
            missing = roles - {role_of(p) for p in chain(top)}
            if missing:
                raise _refusal(kind, key, min(missing), top, "replaced its patch")
            hidden = dict.get(slots, key[:2])
            if hidden is not None and (kind, key[:2]) not in self.shadowed:
                raise _refusal(kind, key, top.role, hidden, "sits at the short key (block, number), which ComfyUI "
                                                            "never calls while ours holds the full key")
        return executor(*args, **kwargs)


def guard_slots(clone):
    """Make sampling ``clone`` refuse, by name, a later node whose patch replaced or is hidden by ours."""
    roles, shadowed = {}, set()
    for kind in ("attn1", "attn2"):
        slots = replace_patches(clone.model_options, kind)
        for key, patch in slots.items():
            if len(key) == 2:
                shadowed.add((kind, key))
            elif isinstance(patch, SlotPatch):
                roles[kind, key] = {p.role for p in chain(patch) if isinstance(p, SlotPatch)}
    set_wrapper(clone, WrappersMP.OUTER_SAMPLE, PatcherKeys.SLOTS, SlotGuard(roles, shadowed))


class SharedPatch:
    """Model-option state holding large data (a store, a plan): shared by reference, also under a deep-copying
    ``ModelPatcher.clone``."""

    def __deepcopy__(self, memo):
        return self
