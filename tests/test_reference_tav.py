"""Checks of the independent Tune-A-Video reference (tests/reference/tav_diffusers.py) against
docs/design.md §3, on a tiny random-weight UNet on the CPU."""

from __future__ import annotations


import pytest
import torch
import torch.nn.functional as F

from reference import tav_diffusers as tav
from reference.tav_diffusers import (
    ReferenceTAV,
    build_reference_unet,
    cross_frame_key_indices,
    ldm_to_diffusers_block_paths,
)
from tiny_models import tiny_unet_diffusers_config

diffusers = pytest.importorskip("diffusers")
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

CONTEXT_TOKENS = 5
SAME = 1e-6      # relative difference treated as "unchanged" (independent frames in one batch)
CLOSE = 1e-5     # relative difference for mathematically equal but differently computed results
CHANGED = 1e-4   # a dependency must move the output by more than this

# SD1.x layout (3 cross-attention down blocks + 1 plain, mirrored up), shrunk: 16 transformer blocks.
SD1_SHAPED_CONFIG = {
    "sample_size": 8, "in_channels": 4, "out_channels": 4,
    "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    "block_out_channels": (32, 64, 64, 64), "layers_per_block": 2, "norm_num_groups": 8,
    "cross_attention_dim": 32, "attention_head_dim": 4,
}


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm().clamp_min(1e-12)).item()


def random_unet(config: dict, seed: int = 0):
    """A random diffusers UNet of ``config`` (the same weights for the same seed)."""
    torch.manual_seed(seed)
    return UNet2DConditionModel.from_config(dict(config)).eval()


@pytest.fixture(scope="module", autouse=True)
def _single_thread():
    """These tensors are tiny: one intra-op thread is faster, and far faster on a busy CPU."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def config():
    return tiny_unet_diffusers_config()


@pytest.fixture(scope="module")
def plain(config):
    """The plain, per-frame diffusers UNet."""
    return random_unet(config)


@pytest.fixture(scope="module")
def make_ref(config):
    def make(temporal=None, **kwargs):
        return ReferenceTAV(random_unet(config), temporal, **kwargs)

    return make


@pytest.fixture(scope="module")
def temporal_weights(plain):
    return random_temporal(plain)


@pytest.fixture(scope="module")
def ref(make_ref):
    """A ReferenceTAV without temporal layers, frame-spanning GroupNorm on."""
    return make_ref(frame_groupnorm=True)


@pytest.fixture(scope="module")
def ref_temporal(make_ref, temporal_weights):
    """A ReferenceTAV with random (non-zero) temporal layers."""
    return make_ref(temporal_weights)


def random_temporal(unet, seed: int = 3) -> dict:
    gen = torch.Generator().manual_seed(seed)
    sd = {}
    for ldm, diff in ldm_to_diffusers_block_paths(unet).items():
        block = unet.get_submodule(diff)
        dim, inner = block.attn1.to_q.in_features, block.attn1.to_q.out_features
        sd[f"{ldm}.norm_temp.weight"] = 1 + 0.1 * torch.randn(dim, generator=gen)
        sd[f"{ldm}.norm_temp.bias"] = 0.1 * torch.randn(dim, generator=gen)
        for name in ("to_q", "to_k", "to_v"):
            sd[f"{ldm}.attn_temp.{name}.weight"] = torch.randn(inner, dim, generator=gen) * dim ** -0.5
        out_w = torch.randn(dim, inner, generator=gen) * inner ** -0.5
        out_b = 0.1 * torch.randn(dim, generator=gen)
        sd[f"{ldm}.attn_temp.to_out.0.weight"] = out_w
        sd[f"{ldm}.attn_temp.to_out.0.bias"] = out_b
    return sd


# ------------------------------------------------------------------------------------------------
# Weights and block paths
# ------------------------------------------------------------------------------------------------







def test_loads_the_comfyui_tiny_checkpoint(config, tiny_models):
    """The pack's tiny SD1.5 checkpoint (ComfyUI's own UNetModel keys) loads strictly, fp16 -> fp32."""
    from safetensors import safe_open

    path = tiny_models["checkpoint"]
    with safe_open(str(path), "pt") as f:
        sd = {k[len(tav.LDM_UNET_PREFIX):]: f.get_tensor(k) for k in f.keys() if k.startswith(tav.LDM_UNET_PREFIX)}
    unet = build_reference_unet(sd, config)
    assert torch.equal(unet.down_blocks[0].attentions[0].transformer_blocks[0].attn1.to_q.weight,
                       sd["input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight"].float())
    assert torch.equal(unet.up_blocks[1].attentions[1].transformer_blocks[0].ff.net[2].weight,
                       sd["output_blocks.3.1.transformer_blocks.0.ff.net.2.weight"].float())


# ------------------------------------------------------------------------------------------------
# SparseCausalAttention at the processor level (§1.3, §6.1.3)
# ------------------------------------------------------------------------------------------------

def _attention(dim=32, heads=4, seed=0):
    torch.manual_seed(seed)
    return Attention(query_dim=dim, heads=heads, dim_head=dim // heads, bias=False).eval()


def _bruteforce(attn, x, frames, key_frames):
    """Per (clip, frame) loop with an explicit softmax: q from the frame, k/v = concat of key_frames(i)."""
    clips, heads = x.shape[0] // frames, attn.heads
    q, k, v = attn.to_q(x), attn.to_k(x), attn.to_v(x)
    d = q.shape[-1] // heads
    out = torch.empty_like(q)
    for c in range(clips):
        for i in range(frames):
            qi = q[c * frames + i]
            ks = torch.cat([k[c * frames + j] for j in key_frames(i)], dim=0)
            vs = torch.cat([v[c * frames + j] for j in key_frames(i)], dim=0)
            for h in range(heads):
                sl = slice(h * d, (h + 1) * d)
                w = torch.softmax(qi[:, sl] @ ks[:, sl].T * d ** -0.5, dim=-1)
                out[c * frames + i, :, sl] = w @ vs[:, sl]
    return attn.to_out[0](out)


@pytest.mark.parametrize("mode,key_frames", [
    ("sparse_causal", lambda f: (lambda i: [0, max(i - 1, 0)])),
    ("first_frame", lambda f: (lambda i: [0])),
    ("middle_frame", lambda f: (lambda i: [(f - 1) // 2])),
    ("full", lambda f: (lambda i: list(range(f)))),
])
@pytest.mark.parametrize("frames", [1, 2, 5])
def test_processor_matches_explicit_formula(mode, key_frames, frames):
    attn = _attention()
    state = tav._VideoState(mode, False)
    state.frames = frames
    attn.set_processor(tav.SparseCausalAttnProcessor(state))
    x = torch.randn(2 * frames, 6, 32)  # 2 CFG chunks, 6 tokens
    with torch.no_grad():
        got = attn(x)
        want = _bruteforce(attn, x, frames, key_frames(frames))
    assert rel(got, want) < CLOSE


def test_sparse_causal_key_set():
    """Frame 0 = plain self-attention; frame 1 = attention over frame 0 only; frame i >= 1 ignores its own
    k/v; the key width is 2·HW."""
    frames, tokens = 5, 6
    attn = _attention()
    x = torch.randn(frames, tokens, 32)
    with torch.no_grad():
        plain0 = attn(x[:1])  # default processor, frame 0 alone
        attn.set_processor(AttnProcessor2_0())
        state = tav._VideoState("sparse_causal", False)
        state.frames = frames
        attn.set_processor(tav.SparseCausalAttnProcessor(state))
        out = attn(x)
        assert rel(out[:1], plain0) < CLOSE
        # frame 1: q from frame 1, k/v from frame 0 only
        q1 = attn.to_q(x[1]).view(tokens, 4, 8).transpose(0, 1)
        k0 = attn.to_k(x[0]).view(tokens, 4, 8).transpose(0, 1)
        v0 = attn.to_v(x[0]).view(tokens, 4, 8).transpose(0, 1)
        o1 = torch.softmax(q1 @ k0.transpose(1, 2) / 8 ** 0.5, -1) @ v0
        assert rel(out[1], attn.to_out[0](o1.transpose(0, 1).reshape(tokens, 32))) < CLOSE

        # perturb only frame i's keys/values (not its query)
        for i in range(frames):
            to_k, to_v = attn.to_k, attn.to_v
            noise = torch.randn(tokens, 32)

            class Bump(torch.nn.Module):
                def __init__(self, lin):
                    super().__init__()
                    self.lin = lin

                def forward(self, h):
                    y = self.lin(h).clone()
                    y[i] += noise
                    return y

            bump = Bump
            attn.to_k, attn.to_v = bump(to_k), bump(to_v)
            try:
                bumped = attn(x)
            finally:
                attn.to_k, attn.to_v = to_k, to_v
            if i == 0:
                assert rel(bumped[0], out[0]) > CHANGED
            else:
                assert rel(bumped[i], out[i]) < SAME, f"frame {i} sees its own keys"
            if i + 1 < frames:
                assert rel(bumped[i + 1], out[i + 1]) > CHANGED, f"frame {i + 1} ignores frame {i}"

    widths = []
    real_sdpa = F.scaled_dot_product_attention

    def spy(q, k, v, **kw):
        widths.append(k.shape[-2])
        return real_sdpa(q, k, v, **kw)

    tav.F.scaled_dot_product_attention = spy
    try:
        for mode in tav.CROSS_FRAME_MODES:
            state.mode = mode
            with torch.no_grad():
                attn(x)
    finally:
        tav.F.scaled_dot_product_attention = real_sdpa
    assert widths == [2 * tokens, tokens, tokens, frames * tokens]


def test_key_indices():
    assert cross_frame_key_indices("sparse_causal", 4).tolist() == [[0, 0], [0, 0], [0, 1], [0, 2]]
    assert cross_frame_key_indices("first_frame", 3).tolist() == [[0], [0], [0]]
    assert cross_frame_key_indices("middle_frame", 6).tolist() == [[2]] * 6
    assert cross_frame_key_indices("middle_frame", 5).tolist() == [[2]] * 5
    assert cross_frame_key_indices("full", 3).tolist() == [[0, 1, 2]] * 3
    with pytest.raises(ValueError):
        cross_frame_key_indices("causal", 3)


# ------------------------------------------------------------------------------------------------
# Whole UNet, no temporal layers
# ------------------------------------------------------------------------------------------------













# ------------------------------------------------------------------------------------------------
# Temporal attention (§1.2, §6.1.4)
# ------------------------------------------------------------------------------------------------





def test_temporal_block_matches_explicit_formula(ref_temporal, config):
    """Block output = FF-stage output + attn_temp(norm_temp(.)) over the frames of each token and clip."""
    ref = ref_temporal
    ldm = "output_blocks.2.1.transformer_blocks.0"
    block = ref.unet.get_submodule(ref.block_paths[ldm])
    temporal = ref.temporal_module(ldm)
    frames, clips, tokens = 4, 2, 6
    dim = block.attn1.to_q.in_features
    h = torch.randn(clips * frames, tokens, dim)
    ctx = torch.randn(clips * frames, CONTEXT_TOKENS, config["cross_attention_dim"])
    ref._state.frames = frames
    try:
        with torch.no_grad():
            hooked = block(h, encoder_hidden_states=ctx)
            after_ff = block.forward(h, encoder_hidden_states=ctx)  # bypasses the hook
    finally:
        ref._state.frames = None
    heads = block.attn1.heads
    d = dim // heads
    a = temporal.attn_temp
    want = after_ff.clone()
    with torch.no_grad():
        for c in range(clips):
            x = after_ff[c * frames:(c + 1) * frames].transpose(0, 1)  # [tokens, F, C]
            n = F.layer_norm(x, (dim,), temporal.norm_temp.weight, temporal.norm_temp.bias, 1e-5)
            q, k, v = n @ a.to_q.weight.T, n @ a.to_k.weight.T, n @ a.to_v.weight.T
            o = torch.cat([torch.softmax(q[..., s] @ k[..., s].transpose(1, 2) / d ** 0.5, -1) @ v[..., s]
                           for s in (slice(j * d, (j + 1) * d) for j in range(heads))], dim=-1)
            want[c * frames:(c + 1) * frames] = (x + o @ a.to_out[0].weight.T + a.to_out[0].bias).transpose(0, 1)
    assert rel(hooked, want) < CLOSE
    assert rel(after_ff, want) > CHANGED






# ------------------------------------------------------------------------------------------------
# GroupNorm over frames (§1.2 quirk, §6.1.2)
# ------------------------------------------------------------------------------------------------





def test_frame_groupnorm_statistics(ref):
    """A patched GroupNorm normalises each clip over (C/G, F, H, W); the transformer's stays per frame."""
    norm = ref.unet.down_blocks[0].resnets[0].norm1
    frames, clips, c, hw = 3, 2, norm.num_channels, 4
    x = torch.randn(clips * frames, c, hw, hw) * torch.linspace(0.5, 2, clips * frames).view(-1, 1, 1, 1)
    ref._state.frames = frames
    try:
        with torch.no_grad():
            got = norm(x)
            transformer_norm = ref.unet.down_blocks[0].attentions[0].norm(x)
    finally:
        ref._state.frames = None
    g = norm.num_groups
    x6 = x.view(clips, frames, g, c // g, hw, hw)
    mean = x6.mean(dim=(1, 3, 4, 5), keepdim=True)
    var = x6.var(dim=(1, 3, 4, 5), keepdim=True, unbiased=False)
    want = ((x6 - mean) / torch.sqrt(var + norm.eps)).view_as(x) * norm.weight.view(1, -1, 1, 1) \
        + norm.bias.view(1, -1, 1, 1)
    assert rel(got, want) < CLOSE
    per_frame = F.group_norm(x, g, norm.weight, norm.bias, norm.eps)
    assert rel(got, per_frame) > CHANGED
    tn = ref.unet.down_blocks[0].attentions[0].norm
    assert rel(transformer_norm, F.group_norm(x, tn.num_groups, tn.weight, tn.bias, tn.eps)) < SAME


# ------------------------------------------------------------------------------------------------
# CFG chunks, text embeddings, timesteps
# ------------------------------------------------------------------------------------------------



