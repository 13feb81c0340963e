"""The video UNet: an SD1.x UNet inflated with temporal attention after every transformer block's feed-forward
(Tune-A-Video), and a tuning (query-projection deltas and temporal weights) applied to it.

The temporal layers live in their own ModelPatcher, loaded with the MODEL as an additional model, injected
into the UNet when ComfyUI loads it and ejected when it unloads (AnimateDiff-Evolved's pattern): the shared
UNet is never edited outside that window, and the UNet's LoRA/offload logic never sees our modules. ComfyUI
counts them as a model of their own when it plans memory, and they are ``comfy.ops`` layers
(``injected_layer_ops``), so they compute in the UNet's compute dtype and can be partially loaded in low VRAM.
"""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass, field

import torch
import torch.utils.checkpoint
from comfy.model_patcher import ModelPatcher
from comfy.patcher_extension import PatcherInjection, WrappersMP
from torch import nn

from ...kernels.temporal import TemporalLayers, TemporalMask, frame_spanning_group_norm
from ...kernels.unet_layout import iter_resnet_norms, iter_transformer_blocks
from .inputs import require_unet
from .patcher import PatcherKeys, add_weight_patches, check_video_inputs_when_sampling, injected_layer_ops, set_wrapper
from .unet_call import COPY_SKIPS, GRADIENT_CHECKPOINTING, PER_FRAME_OPTION, TEMPORAL_BYPASS, VIDEO_CHUNKS

@contextlib.contextmanager
def bypass_temporal():
    """Run the inflated UNet as the image UNet: no temporal attention, per-frame GroupNorm."""
    token = TEMPORAL_BYPASS.set(True)
    try:
        yield
    finally:
        TEMPORAL_BYPASS.reset(token)


class InflatedTransformerBlock(nn.Module):
    """A BasicTransformerBlock followed by its temporal attention: attn1 -> attn2 -> FF -> temporal."""

    def __init__(self, block: nn.Module, temporal: nn.Module):
        super().__init__()
        self.block = block
        self.temporal = temporal

    def _forward(self, x, context, transformer_options, chunks, bypass):
        if bypass:  # the image UNet: the frames are independent images, in attention too
            return self.block(x, context=context, transformer_options={**transformer_options, PER_FRAME_OPTION: True})
        x = self.block(x, context=context, transformer_options=transformer_options)
        return self.temporal(x, chunks)  # comfy.ops layers: computed in x's dtype (injected_layer_ops)

    def forward(self, x, context=None, transformer_options={}):
        # The context is read here, not inside _forward: a checkpointed recompute runs in the backward pass,
        # outside the caller's context.
        args = (x, context, transformer_options, VIDEO_CHUNKS.get(), TEMPORAL_BYPASS.get())
        if GRADIENT_CHECKPOINTING.get() and torch.is_grad_enabled():
            return torch.utils.checkpoint.checkpoint(self._forward, *args, use_reentrant=False)
        return self._forward(*args)


class FrameSpanningGroupNorm(nn.Module):
    """Wraps a ResNet GroupNorm so its statistics span all frames of the clip (the official inflated ResNets)."""

    def __init__(self, norm: nn.GroupNorm):
        super().__init__()
        self.norm = norm

    def forward(self, x):
        weight, bias = (None if p is None else p.to(x) for p in (self.norm.weight, self.norm.bias))
        chunks = x.shape[0] if TEMPORAL_BYPASS.get() else VIDEO_CHUNKS.get()
        return frame_spanning_group_norm(x, self.norm.num_groups, weight, bias, self.norm.eps, chunks)


@dataclass
class Inflation:
    """What VE_InflateUNet attached to a MODEL: its temporal layers (with their mask) and the GroupNorm choice."""

    layers: TemporalLayers
    frame_groupnorm: bool

    @property
    def mask(self) -> TemporalMask:
        return self.layers.mask


def temporal_layer_specs(unet: nn.Module) -> dict[str, tuple[int, int, int]]:
    """Block path -> (dim, heads, dim_head) for every transformer block of the UNet."""
    return {path: (block.norm1.normalized_shape[0], block.n_heads, block.d_head)
            for _, path, _, block in iter_transformer_blocks(unet)}


def _inject(layers: TemporalLayers, frame_groupnorm: bool, patcher: ModelPatcher):
    unet = patcher.model.diffusion_model
    for _, path, transformer, block in iter_transformer_blocks(unet):
        index = int(path.rsplit(".", 1)[1])
        transformer.transformer_blocks[index] = InflatedTransformerBlock(block, layers.layer(path))
    if frame_groupnorm:
        for container, index in iter_resnet_norms(unet):
            container[index] = FrameSpanningGroupNorm(container[index])
    for layer in _skip_consumers(unet):
        layer.register_forward_pre_hook(_copy_skip_input)


def _copy_skip_input(module, args):
    """Forward pre-hook on the first layer of each input block after the first, and of the middle block.

    ComfyUI's UNet adds the ControlNet's output residuals to the stored skip tensors in place, after the next
    block has used (and autograd saved) them; training through that fails. The next block gets a copy instead.
    """
    if COPY_SKIPS.get():
        return (args[0].clone(), *args[1:])


def _skip_consumers(unet: nn.Module) -> list[nn.Module]:
    return [block[0] for block in [*unet.input_blocks[1:], unet.middle_block]]


def _eject(patcher: ModelPatcher):
    unet = patcher.model.diffusion_model
    for layer in _skip_consumers(unet):
        for key, hook in list(layer._forward_pre_hooks.items()):
            if hook is _copy_skip_input:
                del layer._forward_pre_hooks[key]
    for container, index in iter_resnet_norms(unet):
        if isinstance(container[index], FrameSpanningGroupNorm):
            container[index] = container[index].norm
    for module in unet.modules():
        blocks = getattr(module, "transformer_blocks", None)
        if blocks is not None:
            for index, block in enumerate(blocks):
                if isinstance(block, InflatedTransformerBlock):
                    blocks[index] = block.block


def _video_layout_wrapper(executor, x, timesteps, context, y, control, transformer_options, **kwargs):
    """Publish how many videos share the batch (one per cond/uncond chunk) to the injected layers, and whether
    ControlNet residuals meet a training pass."""
    tokens = (VIDEO_CHUNKS.set(len(transformer_options.get("cond_or_uncond") or [0])),
              COPY_SKIPS.set(bool(control) and torch.is_grad_enabled()))
    try:
        return executor(x, timesteps, context, y, control, transformer_options, **kwargs)
    finally:
        VIDEO_CHUNKS.reset(tokens[0])
        COPY_SKIPS.reset(tokens[1])


def get_inflation(model) -> Inflation | None:
    return model.get_attachment(PatcherKeys.INFLATION)


class TemporalLayersPatcher(ModelPatcher):
    """A ModelPatcher whose clones keep its ``cached_patcher_init`` (ComfyUI 0.3.75's ``clone`` does not copy it)."""

    cached_patcher_init = None

    def clone(self, *args, **kwargs):
        clone = super().clone(*args, **kwargs)
        clone.cached_patcher_init = self.cached_patcher_init
        return clone


def temporal_layers_patcher(layers: TemporalLayers, load_device, offload_device) -> ModelPatcher:
    """The ModelPatcher that carries an inflated MODEL's temporal layers. Its ``cached_patcher_init`` is the factory
    ComfyUI's MultiGPU deep clones (``ModelPatcher.deepclone_multigpu``, comfy/multigpu.py in newer ComfyUI) load an
    additional model afresh from: a patcher over a copy of the layers, so each device's clone has its own."""
    patcher = TemporalLayersPatcher(layers, load_device=load_device, offload_device=offload_device)
    patcher.cached_patcher_init = (copied_layers_patcher, (layers, load_device, offload_device))
    return patcher


def copied_layers_patcher(layers: TemporalLayers, load_device, offload_device) -> ModelPatcher:
    return temporal_layers_patcher(copy.deepcopy(layers), load_device, offload_device)


def temporal_patcher(model) -> ModelPatcher:
    """The ModelPatcher of an inflated MODEL's temporal layers, private to that clone: weight patches for the
    temporal layers (motion LoRAs) go here, as AnimateDiff-Evolved does for its motion models."""
    return model.get_additional_models_with_key(PatcherKeys.INFLATION)[0]


def check_temporal_state(layers: TemporalLayers, state: dict, what: str) -> None:
    """Refuse temporal weights that do not fit ``layers``, in one line: which layer, what the model expects."""
    expected = {key: tuple(value.shape) for key, value in layers.state_dict().items()}
    missing, unknown = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing:
        raise ValueError(f"{what}: the temporal layer weight {missing[0]} is missing ({len(missing)} missing in all); "
                         "the file is incomplete or was made for another UNet. Use the checkpoint it was tuned on.")
    if unknown:
        raise ValueError(f"{what}: {unknown[0]} is not a temporal layer of this model ({len(unknown)} such weights); "
                         "it was made for another UNet. Use the checkpoint it was tuned on.")
    for key, shape in expected.items():
        if tuple(state[key].shape) != shape:
            raise ValueError(f"{what}: the temporal layer weight {key} has shape {tuple(state[key].shape)}, the model "
                             f"expects {shape}. Use the checkpoint it was tuned on.")


def inflate(model, temporal_state: dict | None = None, frame_groupnorm: bool = True, what: str = "temporal weights",
            mask: TemporalMask = TemporalMask()):
    """A clone of ``model`` with temporal layers (zero-initialised output, or ``temporal_state``) attending across
    the frames ``mask`` allows.

    Re-inflating an inflated MODEL replaces its temporal layers.
    """
    unet = require_unet(model)
    ops = injected_layer_ops(model)
    if temporal_state is None:
        layers = TemporalLayers(temporal_layer_specs(unet), mask, ops)
    else:  # built without the random initialisation the state replaces
        with torch.device("meta"):
            layers = TemporalLayers(temporal_layer_specs(unet), mask, ops)
        check_temporal_state(layers, temporal_state, what)
        layers = layers.to_empty(device="cpu")
        layers.load_state_dict(temporal_state, strict=True)
    layers.requires_grad_(False)
    clone = model.clone()
    clone.set_additional_models(PatcherKeys.INFLATION,
                                [temporal_layers_patcher(layers, model.load_device, model.offload_device)])
    # The layers injected are those of the patcher being loaded: a MultiGPU deep clone injects its own copy.
    clone.set_injections(PatcherKeys.INFLATION, [PatcherInjection(
        inject=lambda patcher: _inject(temporal_patcher(patcher).model, frame_groupnorm, patcher), eject=_eject)])
    set_wrapper(clone, WrappersMP.DIFFUSION_MODEL, PatcherKeys.INFLATION, _video_layout_wrapper)
    check_video_inputs_when_sampling(clone)
    clone.set_attachments(PatcherKeys.INFLATION, Inflation(layers, frame_groupnorm))
    return clone


def require_inflated(model, input_name: str = "model", needs: str = "this node works on the temporal layers"
                     ) -> Inflation:
    """The inflation of ``model``, or a ValueError naming the input and the fix."""
    inflation = get_inflation(model)
    if inflation is None:
        raise ValueError(f"{input_name}: {needs}; connect the MODEL through 'VE Inflate UNet' "
                         "(VE_InflateUNet) first.")
    return inflation


@dataclass
class TunedWeights:
    """Everything one-shot tuning changed: query-projection deltas (by model key) and the temporal layers."""

    query_deltas: dict[str, torch.Tensor]
    temporal: dict[str, torch.Tensor]
    frame_groupnorm: bool
    metadata: dict = field(default_factory=dict)
    mask: TemporalMask = TemporalMask()
    # AnimateDiff-Evolved motion module path -> delta of its temporal query projection (VE One-Shot Tune's
    # motion_module "tune its queries"); empty otherwise.
    motion_query_deltas: dict[str, torch.Tensor] = field(default_factory=dict)


def query_layers(unet: nn.Module) -> dict[str, nn.Module]:
    """Model key of the weight -> Tune-A-Video's tuned query projections: attn1.to_q and attn2.to_q of every block."""
    return {f"diffusion_model.{path}.{attn}.to_q.weight": getattr(block, attn).to_q
            for _, path, _, block in iter_transformer_blocks(unet) for attn in ("attn1", "attn2")}


def query_weight_shapes(unet: nn.Module) -> dict[str, torch.Size]:
    """Model key -> shape of the tuned query projections (``query_layers``)."""
    return {key: layer.weight.shape for key, layer in query_layers(unet).items()}


def apply_tuned(model, tuned: TunedWeights, what: str = "tuned weights"):
    """A clone of ``model`` carrying ``tuned``: re-inflated with its temporal layers, query deltas as weight patches.
    Weights that do not fit the model are refused in one line starting with ``what``."""
    unet = require_unet(model)
    shapes = query_weight_shapes(unet)
    if set(tuned.query_deltas) != set(shapes):
        odd = sorted(set(tuned.query_deltas) ^ set(shapes))[0]
        raise ValueError(f"{what}: its query projections do not match this model's transformer blocks (e.g. {odd}); "
                         "it was tuned for another UNet layout. Use the checkpoint it was tuned on.")
    for key, delta in tuned.query_deltas.items():
        if shapes[key] != delta.shape:
            raise ValueError(f"{what}: {key} has shape {tuple(delta.shape)}, the model expects "
                             f"{tuple(shapes[key])}. Use the checkpoint it was tuned on.")
    clone = inflate(model, tuned.temporal, tuned.frame_groupnorm, what, tuned.mask)
    add_weight_patches(clone, {key: (delta,) for key, delta in tuned.query_deltas.items()})
    clone.set_attachments(PatcherKeys.TUNING, tuned)
    return clone
