"""Independent Tune-A-Video reference built on diffusers' ``UNet2DConditionModel``.

Purpose: parity tests of the pack's ComfyUI implementation against a second, independently written
implementation of Tune-A-Video's inflated UNet (showlab/Tune-A-Video, ``tuneavideo/models``; see
docs/design.md §3). Deliberately imports nothing from the pack
(``kernels``/``nodes``); LDM -> diffusers weight conversion is done by diffusers' own converter.

Frames-as-batch convention: a call gets ``latents`` of shape ``[chunks * F, 4, h, w]`` ordered
chunk-major (``(b f)`` in einops terms, b = CFG chunk), exactly like the official ``(b f)`` rearranges.

What is reproduced from the official inflated UNet:

* every ``attn1`` is SparseCausalAttention: q from frame i, k/v computed for all frames, then gathered
  per frame as the token concatenation ``[frame 0 ; frame max(i-1, 0)]`` (2·HW keys), scale
  ``dim_head**-0.5``, no mask; ``attn2`` (cross-attention) is untouched;
* after the feed-forward of every BasicTransformerBlock: ``h = attn_temp(norm_temp(h)) + h`` over the
  frame axis at each spatial token (``(b f) d c -> (b d) f c``), no positional encoding, no mask;
* optionally (``frame_groupnorm=True``) the ResNet ``norm1``/``norm2`` and ``conv_norm_out`` GroupNorms
  take their statistics over all frames of a clip (the official code applies them to ``b c f h w``);
  the transformer's input GroupNorm stays per frame.

Convolutions, up/down-sampling and the time embedding are per frame in the official code too, so the
plain diffusers modules are used for them unchanged.
"""

from __future__ import annotations

import re
from typing import Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    "CROSS_FRAME_MODES",
    "LDM_UNET_PREFIX",
    "ReferenceTAV",
    "SparseCausalAttnProcessor",
    "TemporalAttention",
    "build_reference_unet",
    "cross_frame_key_indices",
    "ldm_to_diffusers_block_paths",
]

LDM_UNET_PREFIX = "model.diffusion_model."
CROSS_FRAME_MODES = ("sparse_causal", "first_frame", "middle_frame", "full")
TEMPORAL_SUFFIXES = (
    "norm_temp.weight",
    "norm_temp.bias",
    "attn_temp.to_q.weight",
    "attn_temp.to_k.weight",
    "attn_temp.to_v.weight",
    "attn_temp.to_out.0.weight",
    "attn_temp.to_out.0.bias",
)


# --------------------------------------------------------------------------------------------------
# Weights: LDM layout -> diffusers (diffusers' own converter)
# --------------------------------------------------------------------------------------------------

def build_reference_unet(ldm_unet_state_dict: dict, diffusers_config: dict):
    """fp32 ``diffusers.UNet2DConditionModel`` holding the given LDM-layout UNet weights.

    ``ldm_unet_state_dict`` keys may come with or without the ``model.diffusion_model.`` prefix.
    Conversion uses ``diffusers.loaders.single_file_utils.convert_ldm_unet_checkpoint`` (which only
    reads prefixed keys, so the prefix is added here). Loading is strict, and an LDM key the converter
    silently skipped is an error too.
    """
    from diffusers import UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    prefixed = {}
    for key, value in ldm_unet_state_dict.items():
        if not torch.is_tensor(value):
            raise TypeError(f"{key}: expected a tensor, got {type(value).__name__}")
        full_key = key if key.startswith(LDM_UNET_PREFIX) else LDM_UNET_PREFIX + key
        if full_key in prefixed:
            raise ValueError(f"duplicate key after adding the prefix: {full_key}")
        prefixed[full_key] = value.detach().to(device="cpu", dtype=torch.float32, copy=True)

    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(dict(diffusers_config))
    converted = convert_ldm_unet_checkpoint(prefixed, dict(unet.config))

    used = {id(v) for v in converted.values()}
    skipped = sorted(k for k, v in prefixed.items() if id(v) not in used)
    if skipped:
        raise ValueError(f"diffusers' converter ignored {len(skipped)} LDM keys, e.g. {skipped[:5]}")
    unet.load_state_dict(converted, strict=True, assign=True)
    meta = [n for n, t in list(unet.named_parameters()) + list(unet.named_buffers()) if t.is_meta]
    if meta:
        raise RuntimeError(f"tensors left uninitialised after loading: {meta[:5]}")

    from diffusers.models.attention_processor import AttnProcessor2_0

    unet.set_attn_processor(AttnProcessor2_0())
    return unet.eval()


# --------------------------------------------------------------------------------------------------
# LDM <-> diffusers module paths, derived from the diffusers module structure (block order)
# --------------------------------------------------------------------------------------------------

def _ldm_diffusers_module_pairs(unet) -> Iterator[tuple[str, str, str]]:
    """Yield ``(kind, ldm_prefix, diffusers_prefix)`` for every sub-module of an SD1/2-style UNet.

    ``kind`` is ``resnet``, ``attention``, ``downsample`` or ``upsample``. The LDM ``UNetModel`` lays its
    blocks out as: ``input_blocks.0`` = conv_in, then per down block and per layer one
    ``input_blocks.n`` = [resnet, (attention)], then one ``input_blocks.n`` = [downsample] if the block
    downsamples; ``middle_block`` = [resnet, attention, resnet, ...]; per up block and per layer one
    ``output_blocks.n`` = [resnet, (attention), (upsample on the block's last layer)].
    """
    idx = 1
    for b, block in enumerate(unet.down_blocks):
        attentions = getattr(block, "attentions", None)
        for l in range(len(block.resnets)):
            yield "resnet", f"input_blocks.{idx}.0", f"down_blocks.{b}.resnets.{l}"
            if attentions is not None:
                yield "attention", f"input_blocks.{idx}.1", f"down_blocks.{b}.attentions.{l}"
            idx += 1
        if block.downsamplers is not None:
            yield "downsample", f"input_blocks.{idx}.0.op", f"down_blocks.{b}.downsamplers.0.conv"
            idx += 1

    mid = unet.mid_block
    yield "resnet", "middle_block.0", "mid_block.resnets.0"
    for j, _ in enumerate(getattr(mid, "attentions", [])):
        yield "attention", f"middle_block.{2 * j + 1}", f"mid_block.attentions.{j}"
        yield "resnet", f"middle_block.{2 * j + 2}", f"mid_block.resnets.{j + 1}"

    idx = 0
    for b, block in enumerate(unet.up_blocks):
        attentions = getattr(block, "attentions", None)
        n_layers = len(block.resnets)
        for l in range(n_layers):
            yield "resnet", f"output_blocks.{idx}.0", f"up_blocks.{b}.resnets.{l}"
            if attentions is not None:
                yield "attention", f"output_blocks.{idx}.1", f"up_blocks.{b}.attentions.{l}"
            if l == n_layers - 1 and block.upsamplers is not None:
                slot = 2 if attentions is not None else 1
                yield "upsample", f"output_blocks.{idx}.{slot}.conv", f"up_blocks.{b}.upsamplers.0.conv"
            idx += 1


def ldm_to_diffusers_block_paths(diffusers_unet) -> dict[str, str]:
    """Map every LDM BasicTransformerBlock path to its diffusers module path.

    e.g. ``input_blocks.1.1.transformer_blocks.0 -> down_blocks.0.attentions.0.transformer_blocks.0``,
    ``middle_block.1.transformer_blocks.0 -> mid_block.attentions.0.transformer_blocks.0``. Ordered like
    the LDM forward pass (input blocks, middle block, output blocks).
    """
    paths = {}
    modules = dict(diffusers_unet.named_modules())
    for kind, ldm, diff in _ldm_diffusers_module_pairs(diffusers_unet):
        if kind != "attention":
            continue
        for k, _ in enumerate(modules[diff].transformer_blocks):
            paths[f"{ldm}.transformer_blocks.{k}"] = f"{diff}.transformer_blocks.{k}"
    return paths


_RESNET_TO_LDM = (
    ("norm1.", "in_layers.0."),
    ("conv1.", "in_layers.2."),
    ("time_emb_proj.", "emb_layers.1."),
    ("norm2.", "out_layers.0."),
    ("conv2.", "out_layers.3."),
    ("conv_shortcut.", "skip_connection."),
)
_TOP_LEVEL_TO_LDM = {
    "time_embedding.linear_1.": "time_embed.0.",
    "time_embedding.linear_2.": "time_embed.2.",
    "conv_in.": "input_blocks.0.0.",
    "conv_norm_out.": "out.0.",
    "conv_out.": "out.2.",
}


# --------------------------------------------------------------------------------------------------
# Shared per-call state (video length, mode, ...) read by the processors and hooks
# --------------------------------------------------------------------------------------------------

class _VideoState:
    def __init__(self, mode: str, frame_groupnorm: bool):
        self.frames: int | None = None
        self.mode = mode
        self.frame_groupnorm = frame_groupnorm

    def require_frames(self, batch: int) -> int:
        if self.frames is None:
            raise RuntimeError("video length not set: call the UNet through ReferenceTAV")
        if batch % self.frames:
            raise ValueError(f"batch {batch} is not a multiple of the video length {self.frames}")
        return self.frames


def cross_frame_key_indices(mode: str, frames: int) -> torch.Tensor:
    """``[F, J]`` long tensor: row i lists the frames whose k/v frame i's attn1 attends to, in order."""
    if mode == "sparse_causal":
        former = torch.arange(frames) - 1
        former[0] = 0
        return torch.stack([torch.zeros(frames, dtype=torch.long), former], dim=1)
    if mode == "first_frame":
        return torch.zeros(frames, 1, dtype=torch.long)
    if mode == "middle_frame":
        return torch.full((frames, 1), (frames - 1) // 2, dtype=torch.long)
    if mode == "full":
        return torch.arange(frames).unsqueeze(0).expand(frames, frames).clone()
    raise ValueError(f"unknown cross-frame mode {mode!r}; expected one of {CROSS_FRAME_MODES}")


class SparseCausalAttnProcessor:
    """diffusers attention processor for ``attn1``: Tune-A-Video's SparseCausalAttention.

    k/v are computed for every frame, then gathered per query frame by ``cross_frame_key_indices`` and
    concatenated along the token axis before the heads are split (official order).
    """

    def __init__(self, state: _VideoState):
        self.state = state

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 *args, **kwargs):
        if encoder_hidden_states is not None:
            raise ValueError("SparseCausalAttnProcessor is for self-attention (attn1) only")
        if attention_mask is not None:
            raise ValueError("attention masks are not supported (the official SC-Attn is unmasked here)")
        if (attn.spatial_norm is not None or attn.group_norm is not None or attn.residual_connection
                or attn.norm_q is not None or attn.norm_k is not None or attn.rescale_output_factor != 1.0):
            raise ValueError("unsupported Attention configuration for an SD1/2 attn1")
        if hidden_states.ndim != 3:
            raise ValueError(f"expected (batch, tokens, channels), got {tuple(hidden_states.shape)}")

        batch, tokens, _ = hidden_states.shape
        frames = self.state.require_frames(batch)
        clips = batch // frames

        query = attn.to_q(hidden_states)
        key = attn.to_k(hidden_states)
        value = attn.to_v(hidden_states)
        inner = key.shape[-1]
        heads = attn.heads
        head_dim = inner // heads

        index = cross_frame_key_indices(self.state.mode, frames).to(hidden_states.device)  # [F, J]
        n_ref = index.shape[1]

        def gather(t):
            t = t.reshape(clips, frames, tokens, inner)[:, index]  # [b, F, J, HW, C]
            return t.reshape(batch, n_ref * tokens, inner)

        key, value = gather(key), gather(value)
        query = query.reshape(batch, tokens, heads, head_dim).transpose(1, 2)
        key = key.reshape(batch, n_ref * tokens, heads, head_dim).transpose(1, 2)
        value = value.reshape(batch, n_ref * tokens, heads, head_dim).transpose(1, 2)
        out = F.scaled_dot_product_attention(query, key, value, scale=head_dim ** -0.5)
        out = out.transpose(1, 2).reshape(batch, tokens, inner).to(query.dtype)
        out = attn.to_out[0](out)
        return attn.to_out[1](out)


# --------------------------------------------------------------------------------------------------
# Temporal attention (attn_temp + norm_temp), run after the feed-forward of each transformer block
# --------------------------------------------------------------------------------------------------

class _TemporalAttnCore(nn.Module):
    def __init__(self, dim: int, inner: int):
        super().__init__()
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_k = nn.Linear(dim, inner, bias=False)
        self.to_v = nn.Linear(dim, inner, bias=False)
        self.to_out = nn.ModuleList([nn.Linear(inner, dim, bias=True), nn.Dropout(0.0)])


class TemporalAttention(nn.Module):
    """``h = attn_temp(norm_temp(h)) + h`` over frames at each spatial token; no positions, no mask."""

    def __init__(self, dim: int, heads: int, inner: int | None = None):
        super().__init__()
        inner = dim if inner is None else inner
        if inner % heads:
            raise ValueError(f"inner dim {inner} is not divisible by {heads} heads")
        self.heads = heads
        self.norm_temp = nn.LayerNorm(dim)
        self.attn_temp = _TemporalAttnCore(dim, inner)

    def forward(self, hidden_states: torch.Tensor, frames: int) -> torch.Tensor:
        batch, tokens, channels = hidden_states.shape
        clips = batch // frames
        # (b f) d c -> (b d) f c
        x = hidden_states.reshape(clips, frames, tokens, channels).permute(0, 2, 1, 3)
        x = x.reshape(clips * tokens, frames, channels)
        n = self.norm_temp(x)
        a = self.attn_temp
        q, k, v = a.to_q(n), a.to_k(n), a.to_v(n)
        inner = q.shape[-1]
        head_dim = inner // self.heads

        def split(t):
            return t.reshape(clips * tokens, frames, self.heads, head_dim).transpose(1, 2)

        o = F.scaled_dot_product_attention(split(q), split(k), split(v), scale=head_dim ** -0.5)
        o = o.transpose(1, 2).reshape(clips * tokens, frames, inner)
        x = a.to_out[1](a.to_out[0](o)) + x
        # (b d) f c -> (b f) d c
        return x.reshape(clips, tokens, frames, channels).permute(0, 2, 1, 3).reshape(batch, tokens, channels)


# --------------------------------------------------------------------------------------------------
# The wrapper
# --------------------------------------------------------------------------------------------------

_LDM_BLOCK_KEY = re.compile(r"^(.*\.transformer_blocks\.\d+)\.(.+)$")


class ReferenceTAV(nn.Module):
    """Tune-A-Video's inflated UNet on top of a diffusers ``UNet2DConditionModel`` (modified in place).

    ``temporal_state_dict``: ``{ldm_block_path}.{norm_temp.weight|bias, attn_temp.to_q|to_k|to_v.weight,
    attn_temp.to_out.0.weight|bias}`` for every transformer block (all or none); ``None`` = no temporal
    layers.
    """

    def __init__(self, unet, temporal_state_dict: dict | None = None, *, mode: str = "sparse_causal",
                 frame_groupnorm: bool = False, least_sc_channel: int = 0):
        super().__init__()
        if mode not in CROSS_FRAME_MODES:
            raise ValueError(f"unknown cross-frame mode {mode!r}; expected one of {CROSS_FRAME_MODES}")
        self.unet = unet
        self._state = _VideoState(mode, bool(frame_groupnorm))
        self.block_paths = ldm_to_diffusers_block_paths(unet)
        modules = dict(unet.named_modules())
        self._blocks = {ldm: modules[diff] for ldm, diff in self.block_paths.items()}

        # temporal weights are validated before the UNet is touched
        self.temporal = nn.ModuleDict()
        if temporal_state_dict is not None:
            self._load_temporal(temporal_state_dict)

        processor = SparseCausalAttnProcessor(self._state)
        for block in self._blocks.values():
            if block.attn1.to_q.in_features >= least_sc_channel:  # FateZero: narrower blocks stay per-frame
                block.attn1.set_processor(processor)
        if len(self.temporal):
            for ldm, block in self._blocks.items():
                block.register_forward_hook(self._make_temporal_hook(ldm))
        for name, module in unet.named_modules():
            if type(module).__name__ == "ResnetBlock2D":
                self._patch_groupnorm(module.norm1, f"{name}.norm1")
                self._patch_groupnorm(module.norm2, f"{name}.norm2")
        self._patch_groupnorm(unet.conv_norm_out, "conv_norm_out")

    @classmethod
    def from_ldm(cls, ldm_unet_state_dict: dict, diffusers_config: dict, temporal_state_dict: dict | None = None,
                 **kwargs) -> "ReferenceTAV":
        """``ReferenceTAV(build_reference_unet(ldm_unet_state_dict, diffusers_config), temporal_state_dict, ...)``."""
        return cls(build_reference_unet(ldm_unet_state_dict, diffusers_config), temporal_state_dict, **kwargs)

    def temporal_module(self, ldm_block_path: str) -> TemporalAttention:
        return self.temporal[ldm_block_path.replace(".", "__")]

    # -- temporal layers ---------------------------------------------------------------------
    def _load_temporal(self, state_dict: dict) -> None:
        grouped: dict[str, dict[str, torch.Tensor]] = {}
        for key, value in state_dict.items():
            match = _LDM_BLOCK_KEY.match(key)
            if match is None or match.group(1) not in self._blocks or match.group(2) not in TEMPORAL_SUFFIXES:
                raise KeyError(f"unexpected temporal key {key!r}")
            grouped.setdefault(match.group(1), {})[match.group(2)] = value
        missing_blocks = sorted(set(self._blocks) - set(grouped))
        if missing_blocks:
            raise KeyError(f"temporal weights missing for {len(missing_blocks)} blocks, e.g. {missing_blocks[:3]}")
        for ldm, block in self._blocks.items():
            weights = grouped[ldm]
            dim = block.attn1.to_q.in_features
            inner = weights["attn_temp.to_q.weight"].shape[0] if "attn_temp.to_q.weight" in weights else dim
            if inner != block.attn1.to_q.out_features:
                raise ValueError(f"{ldm}: attn_temp inner dim {inner} != block inner dim "
                                 f"{block.attn1.to_q.out_features}")
            module = TemporalAttention(dim, block.attn1.heads, inner)
            module.load_state_dict({k: v.detach().to(torch.float32) for k, v in weights.items()}, strict=True)
            param = next(block.parameters())
            self.temporal[ldm.replace(".", "__")] = module.to(device=param.device, dtype=param.dtype)

    def _make_temporal_hook(self, ldm: str):
        def hook(module, args, output):
            frames = self._state.require_frames(output.shape[0])
            return self.temporal_module(ldm)(output, frames)

        return hook

    # -- GroupNorm over frames ---------------------------------------------------------------
    def _patch_groupnorm(self, norm: nn.GroupNorm, name: str) -> None:
        if not isinstance(norm, nn.GroupNorm):
            raise TypeError(f"{name}: expected nn.GroupNorm, got {type(norm).__name__}")
        state = self._state

        def forward(x):
            if not state.frame_groupnorm:
                return F.group_norm(x, norm.num_groups, norm.weight, norm.bias, norm.eps)
            frames = state.require_frames(x.shape[0])
            clips = x.shape[0] // frames
            # (b f) c h w -> b c f h w, normalise (stats over C/G, F, H, W), and back
            x5 = x.reshape(clips, frames, *x.shape[1:]).transpose(1, 2)
            y5 = F.group_norm(x5, norm.num_groups, norm.weight, norm.bias, norm.eps)
            return y5.transpose(1, 2).reshape(x.shape)

        norm.forward = forward

    # -- call --------------------------------------------------------------------------------
    def forward(self, latents: torch.Tensor, timestep, encoder_hidden_states: torch.Tensor,
                chunks: int = 1) -> torch.Tensor:
        """ε for ``latents [chunks*F, C, h, w]`` (chunk-major). ``timestep``: scalar, ``[chunks]`` or
        ``[chunks*F]``. ``encoder_hidden_states``: ``[chunks, n, c]`` (repeated per frame, as the
        official code does) or already per frame ``[chunks*F, n, c]``."""
        batch = latents.shape[0]
        if chunks < 1 or batch % chunks:
            raise ValueError(f"batch {batch} is not a multiple of chunks={chunks}")
        frames = batch // chunks

        t = torch.as_tensor(timestep, device=latents.device)
        if t.ndim == 0 or t.numel() == 1:
            t = t.reshape(1).expand(batch)
        elif t.numel() == chunks:
            t = t.reshape(chunks).repeat_interleave(frames)
        elif t.numel() != batch:
            raise ValueError(f"timestep of shape {tuple(t.shape)} fits neither {chunks} chunks nor {batch} frames")

        ehs = encoder_hidden_states
        if ehs.shape[0] == chunks:
            ehs = ehs.repeat_interleave(frames, dim=0)
        elif ehs.shape[0] != batch:
            raise ValueError(f"encoder_hidden_states batch {ehs.shape[0]} fits neither {chunks} nor {batch}")

        self._state.frames = frames
        try:
            return self.unet(latents, t, encoder_hidden_states=ehs, return_dict=False)[0]
        finally:
            self._state.frames = None


# --------------------------------------------------------------------------------------------------
# The official inversion and sampling loops (tuneavideo/util.py, tuneavideo/pipelines)
# --------------------------------------------------------------------------------------------------

def sd_ddim_scheduler(steps: int):
    """diffusers' DDIM scheduler with SD1.x's configuration, set to ``steps``."""
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1)
    scheduler.set_timesteps(steps)
    return scheduler


def official_ddim_loop(eps_model, latent: torch.Tensor, steps: int) -> list[torch.Tensor]:
    """Tune-A-Video's ``ddim_loop``/``next_step`` (tuneavideo/util.py), re-derived on diffusers' SD scheduler."""
    scheduler = sd_ddim_scheduler(steps)
    levels = [latent]
    for i in range(steps):
        t = int(scheduler.timesteps[len(scheduler.timesteps) - i - 1])
        previous = t - scheduler.config.num_train_timesteps // scheduler.num_inference_steps
        alpha = scheduler.alphas_cumprod[previous] if previous >= 0 else scheduler.final_alpha_cumprod
        alpha_next = scheduler.alphas_cumprod[t]
        eps = eps_model(levels[-1], t)
        clean = (levels[-1] - (1 - alpha) ** 0.5 * eps) / alpha ** 0.5
        levels.append(alpha_next ** 0.5 * clean + (1 - alpha_next) ** 0.5 * eps)
    return levels


def official_ddim_sample(eps_model, latent: torch.Tensor, steps: int, guidance_scale: float) -> torch.Tensor:
    """The Tune-A-Video pipeline's denoising loop: DDIM (eta 0) with classifier-free guidance from ``latent``;
    ``eps_model(x, t)`` returns the unconditional and the conditional ε."""
    scheduler = sd_ddim_scheduler(steps)
    for t in scheduler.timesteps:
        uncond, cond = eps_model(latent, t)
        latent = scheduler.step(uncond + guidance_scale * (cond - uncond), t, latent).prev_sample
    return latent
