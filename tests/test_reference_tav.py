"""Checks of the independent Tune-A-Video reference (tests/reference/tav_diffusers.py) against
docs/design.md §3, on a tiny random-weight UNet on the CPU."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F

from reference import tav_diffusers as tav
from reference.tav_diffusers import (
    ReferenceTAV,
    build_reference_unet,
    cross_frame_key_indices,
    diffusers_to_ldm_unet_state_dict,
    ldm_to_diffusers_block_paths,
)
from tiny_models import tiny_unet_diffusers_config

diffusers = pytest.importorskip("diffusers")
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

FRAMES = 6
LATENT = 4
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


def random_ldm_unet(config: dict, seed: int = 0) -> dict:
    torch.manual_seed(seed)
    return diffusers_to_ldm_unet_state_dict(UNet2DConditionModel.from_config(dict(config)))


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
def ldm_weights(config):
    return random_ldm_unet(config, seed=0)


@pytest.fixture(scope="module")
def plain(ldm_weights, config):
    """The same weights as a plain, per-frame diffusers UNet."""
    return build_reference_unet(ldm_weights, config)


@pytest.fixture(scope="module")
def make_ref(ldm_weights, config):
    def make(temporal=None, **kwargs):
        return ReferenceTAV.from_ldm(ldm_weights, config, temporal, **kwargs)

    return make


@pytest.fixture(scope="module")
def temporal_weights(plain):
    return random_temporal(plain)


@pytest.fixture(scope="module")
def _shared_refs(make_ref, temporal_weights):
    return {"spatial": make_ref(), "temporal": make_ref(temporal_weights)}


def _reset(ref):
    ref.mode = "sparse_causal"
    ref.frame_groupnorm = False
    return ref


@pytest.fixture
def ref(_shared_refs):
    """Shared ReferenceTAV without temporal layers, reset to sparse_causal / per-frame GroupNorm."""
    yield _reset(_shared_refs["spatial"])
    _reset(_shared_refs["spatial"])


@pytest.fixture
def ref_temporal(_shared_refs):
    """Shared ReferenceTAV with random (non-zero) temporal layers, reset like ``ref``."""
    yield _reset(_shared_refs["temporal"])
    _reset(_shared_refs["temporal"])


@pytest.fixture(scope="module")
def inputs(config):
    gen = torch.Generator().manual_seed(1)
    latents = torch.randn(FRAMES, 4, LATENT, LATENT, generator=gen)
    context = torch.randn(1, CONTEXT_TOKENS, config["cross_attention_dim"], generator=gen)
    return latents, torch.tensor(500), context


def plain_eps(plain, latents, t, context):
    """The ordinary image UNet applied to every frame independently."""
    with torch.no_grad():
        return plain(latents, t, encoder_hidden_states=context.expand(latents.shape[0], -1, -1)).sample


def run(ref, latents, t, context, chunks=1):
    with torch.no_grad():
        return ref(latents, t, context, chunks=chunks)


def random_temporal(unet, seed: int = 3, zero_out: bool = False) -> dict:
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
        sd[f"{ldm}.attn_temp.to_out.0.weight"] = torch.zeros_like(out_w) if zero_out else out_w
        sd[f"{ldm}.attn_temp.to_out.0.bias"] = torch.zeros_like(out_b) if zero_out else out_b
    return sd


def transformer_block_names(unet) -> list[str]:
    return [n for n, m in unet.named_modules() if type(m).__name__ == "BasicTransformerBlock"]


# ------------------------------------------------------------------------------------------------
# Weights and block paths
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("layout", ["tiny", "sd1_shaped", "depth2"])
def test_block_paths_cover_every_transformer_block_once(layout, config):
    cfg = {"tiny": config, "sd1_shaped": SD1_SHAPED_CONFIG,
           "depth2": {**SD1_SHAPED_CONFIG, "transformer_layers_per_block": 2}}[layout]
    unet = UNet2DConditionModel.from_config(dict(cfg))
    paths = ldm_to_diffusers_block_paths(unet)
    blocks = transformer_block_names(unet)
    assert sorted(paths.values()) == sorted(blocks)
    assert len(set(paths.values())) == len(paths) == len(blocks)
    ldm_re = re.compile(r"^(input_blocks\.\d+\.1|middle_block\.1|output_blocks\.\d+\.1)\.transformer_blocks\.\d+$")
    assert all(ldm_re.match(k) for k in paths), list(paths)
    if layout == "sd1_shaped":
        assert len(paths) == 16
        expected = {
            "input_blocks.1.1.transformer_blocks.0": "down_blocks.0.attentions.0.transformer_blocks.0",
            "input_blocks.2.1.transformer_blocks.0": "down_blocks.0.attentions.1.transformer_blocks.0",
            "input_blocks.4.1.transformer_blocks.0": "down_blocks.1.attentions.0.transformer_blocks.0",
            "input_blocks.8.1.transformer_blocks.0": "down_blocks.2.attentions.1.transformer_blocks.0",
            "middle_block.1.transformer_blocks.0": "mid_block.attentions.0.transformer_blocks.0",
            "output_blocks.3.1.transformer_blocks.0": "up_blocks.1.attentions.0.transformer_blocks.0",
            "output_blocks.5.1.transformer_blocks.0": "up_blocks.1.attentions.2.transformer_blocks.0",
            "output_blocks.11.1.transformer_blocks.0": "up_blocks.3.attentions.2.transformer_blocks.0",
        }
        assert {k: paths[k] for k in expected} == expected
    if layout == "tiny":
        assert list(paths) == [
            "input_blocks.1.1.transformer_blocks.0", "input_blocks.3.1.transformer_blocks.0",
            "middle_block.1.transformer_blocks.0",
            "output_blocks.0.1.transformer_blocks.0", "output_blocks.1.1.transformer_blocks.0",
            "output_blocks.2.1.transformer_blocks.0", "output_blocks.3.1.transformer_blocks.0",
        ]
    if layout == "depth2":
        assert paths["output_blocks.11.1.transformer_blocks.1"] == "up_blocks.3.attentions.2.transformer_blocks.1"


@pytest.mark.parametrize("layout", ["tiny", "sd1_shaped"])
def test_diffusers_converter_round_trip_agrees_with_block_paths(layout, config):
    """diffusers -> LDM (our inverse) -> diffusers (diffusers' converter) is the identity, and each
    mapped LDM transformer block's weights land on the mapped diffusers block."""
    cfg = config if layout == "tiny" else SD1_SHAPED_CONFIG
    torch.manual_seed(7)
    source = UNet2DConditionModel.from_config(dict(cfg))
    ldm = diffusers_to_ldm_unet_state_dict(source)
    for key in ("time_embed.0.weight", "input_blocks.0.0.weight", "out.0.weight", "out.2.bias",
                "middle_block.0.in_layers.0.weight", "middle_block.2.out_layers.3.weight",
                "input_blocks.1.1.proj_in.weight", "input_blocks.1.0.emb_layers.1.weight"):
        assert key in ldm
    if layout == "sd1_shaped":  # upsampler slots of SD1: .1.conv after a plain up block, .2.conv otherwise
        for key in ("input_blocks.3.0.op.weight", "output_blocks.2.1.conv.weight", "output_blocks.5.2.conv.weight",
                    "output_blocks.8.2.conv.weight", "input_blocks.4.0.skip_connection.weight"):
            assert key in ldm
    rebuilt = build_reference_unet(ldm, cfg)
    src, dst = source.state_dict(), rebuilt.state_dict()
    assert src.keys() == dst.keys()
    assert all(torch.equal(src[k], dst[k]) for k in src)
    for ldm_path, diff_path in ldm_to_diffusers_block_paths(rebuilt).items():
        for leaf in ("attn1.to_q.weight", "attn2.to_k.weight", "ff.net.2.bias", "norm3.weight"):
            assert torch.equal(ldm[f"{ldm_path}.{leaf}"], dst[f"{diff_path}.{leaf}"])


def test_build_reference_unet_is_strict(ldm_weights, config):
    prefixed = {tav.LDM_UNET_PREFIX + k: v for k, v in ldm_weights.items()}
    unet = build_reference_unet(prefixed, config)
    assert next(unet.parameters()).dtype == torch.float32
    assert all(not p.is_meta for p in unet.parameters())
    missing = dict(ldm_weights)
    missing.pop("input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight")
    with pytest.raises(RuntimeError):
        build_reference_unet(missing, config)
    extra = dict(ldm_weights)
    extra["input_blocks.1.1.transformer_blocks.0.attn_temp.to_q.weight"] = torch.zeros(320, 320)
    with pytest.raises(RuntimeError):  # the converter passes it through; the strict load rejects it
        build_reference_unet(extra, config)
    extra = dict(ldm_weights)
    extra["label_emb.0.0.weight"] = torch.zeros(4, 4)
    with pytest.raises(ValueError):  # the converter drops it silently; we do not
        build_reference_unet(extra, config)


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

def test_frame0_equals_plain_unet_on_frame0(ref, plain, inputs):
    latents, t, context = inputs
    out = run(ref, latents, t, context)
    assert out.shape == latents.shape
    assert rel(out[:1], plain_eps(plain, latents[:1], t, context)) < CLOSE
    # and it is not simply the per-frame UNet for the other frames
    per_frame = plain_eps(plain, latents, t, context)
    assert all(rel(out[i], per_frame[i]) > CHANGED for i in range(1, FRAMES))


def test_sparse_causal_is_causal(ref, inputs):
    """Frame i's output depends on frames <= i only (frame_groupnorm off), and on frame i-1."""
    latents, t, context = inputs
    base = run(ref, latents, t, context)
    for k in range(FRAMES):
        bumped = latents.clone()
        bumped[k] += torch.randn(bumped[k].shape, generator=torch.Generator().manual_seed(k))
        out = run(ref, bumped, t, context)
        for i in range(FRAMES):
            if i < k:
                assert rel(out[i], base[i]) < SAME, f"frame {i} depends on later frame {k}"
            else:
                assert rel(out[i], base[i]) > CHANGED, f"frame {i} does not depend on frame {k}"


def test_first_and_middle_frame_modes(ref, plain, inputs):
    latents, t, context = inputs
    per_frame = plain_eps(plain, latents, t, context)
    for mode, anchor in (("first_frame", 0), ("middle_frame", (FRAMES - 1) // 2)):
        ref.mode = mode
        base = run(ref, latents, t, context)
        assert rel(base[anchor], per_frame[anchor]) < CLOSE
        other = (anchor + 3) % FRAMES
        bumped = latents.clone()
        bumped[other] += 1.0
        out = run(ref, bumped, t, context)
        for i in range(FRAMES):
            moved = rel(out[i], base[i])
            assert (moved > CHANGED) if i == other else (moved < SAME), (mode, i)
        bumped = latents.clone()
        bumped[anchor] += 1.0
        out = run(ref, bumped, t, context)
        assert all(rel(out[i], base[i]) > CHANGED for i in range(FRAMES))


def test_full_mode_is_permutation_equivariant(ref, inputs):
    latents, t, context = inputs
    ref.mode = "full"
    base = run(ref, latents, t, context)
    perm = torch.tensor([3, 0, 5, 1, 4, 2])
    out = run(ref, latents[perm], t, context)
    assert rel(out, base[perm]) < CLOSE
    bumped = latents.clone()
    bumped[FRAMES - 1] += 1.0
    assert rel(run(ref, bumped, t, context)[0], base[0]) > CHANGED


@pytest.mark.parametrize("mode", tav.CROSS_FRAME_MODES)
def test_identical_frames_equal_per_frame_unet(mode, ref, plain, inputs):
    latents, t, context = inputs
    video = latents[:1].expand(FRAMES, -1, -1, -1).contiguous()
    ref.mode = mode
    out = run(ref, video, t, context)
    single = plain_eps(plain, latents[:1], t, context)
    for i in range(FRAMES):
        assert rel(out[i], single[0]) < CLOSE
    ref.frame_groupnorm = True  # identical frames: clip statistics = frame statistics
    out = run(ref, video, t, context)
    assert rel(out, single.expand_as(out)) < CLOSE


def test_mode_can_be_switched(ref, inputs):
    latents, t, context = inputs
    a = run(ref, latents, t, context)
    ref.mode = "full"
    b = run(ref, latents, t, context)
    ref.mode = "sparse_causal"
    c = run(ref, latents, t, context)
    assert rel(b, a) > CHANGED and rel(c, a) < SAME
    with pytest.raises(ValueError):
        ref.mode = "causal"


# ------------------------------------------------------------------------------------------------
# Temporal attention (§1.2, §6.1.4)
# ------------------------------------------------------------------------------------------------

def test_zero_to_out_temporal_changes_nothing(ref, make_ref, plain, inputs):
    latents, t, context = inputs
    base = run(ref, latents, t, context)
    ref = make_ref(random_temporal(plain, zero_out=True))
    assert ref.has_temporal
    out = run(ref, latents, t, context)
    assert torch.allclose(out, base, rtol=0, atol=1e-6 * base.abs().max().item())


def test_fresh_init_branch_output_is_the_bias():
    torch.manual_seed(0)
    module = tav.TemporalAttention(dim=16, heads=4)
    torch.nn.init.zeros_(module.attn_temp.to_out[0].weight)
    torch.nn.init.normal_(module.attn_temp.to_out[0].bias)
    h = torch.randn(2 * 3, 5, 16)
    with torch.no_grad():
        out = module(h, frames=3)
    assert torch.allclose(out - h, module.attn_temp.to_out[0].bias.expand_as(h), atol=1e-6)


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


def test_temporal_layers_make_frames_interact(ref_temporal, inputs):
    latents, t, context = inputs
    ref = ref_temporal
    base = run(ref, latents, t, context)
    bumped = latents.clone()
    bumped[FRAMES - 1] += 1.0
    out = run(ref, bumped, t, context)
    assert rel(out[0], base[0]) > CHANGED  # frame 0 now sees the last frame (no causal mask)
    # no positional encoding: with full cross-frame attention the whole model is permutation-equivariant
    ref.mode = "full"
    ref.frame_groupnorm = True
    base = run(ref, latents, t, context)
    perm = torch.tensor([5, 3, 1, 0, 2, 4])
    assert rel(run(ref, latents[perm], t, context), base[perm]) < CLOSE


def test_temporal_weights_are_validated(plain, temporal_weights, ref):
    """Bad temporal dicts are rejected before the UNet is modified (``plain`` stays plain)."""
    sd = temporal_weights
    incomplete = {k: v for k, v in sd.items() if not k.startswith("middle_block.1.")}
    with pytest.raises(KeyError):
        ReferenceTAV(plain, incomplete)
    with pytest.raises(KeyError):
        ReferenceTAV(plain, {**sd, "middle_block.1.transformer_blocks.0.attn_temp.pos.weight": torch.zeros(1)})
    missing_leaf = dict(sd)
    missing_leaf.pop("input_blocks.1.1.transformer_blocks.0.attn_temp.to_out.0.bias")
    with pytest.raises(RuntimeError):
        ReferenceTAV(plain, missing_leaf)
    with pytest.raises(ValueError):
        ReferenceTAV(plain, mode="causal")
    assert all(type(m.processor) is AttnProcessor2_0 for m in plain.modules() if isinstance(m, Attention))
    with pytest.raises(RuntimeError):  # one wrapper per UNet
        ReferenceTAV(ref.unet)


# ------------------------------------------------------------------------------------------------
# GroupNorm over frames (§1.2 quirk, §6.1.2)
# ------------------------------------------------------------------------------------------------

def test_frame_groupnorm_spans_frames(ref, inputs):
    latents, t, context = inputs
    ref.frame_groupnorm = True
    base = run(ref, latents, t, context)
    bumped = latents.clone()
    bumped[5] += 1.0
    assert rel(run(ref, bumped, t, context)[0], base[0]) > CHANGED
    ref.frame_groupnorm = False
    base = run(ref, latents, t, context)
    assert rel(run(ref, bumped, t, context)[0], base[0]) < SAME


def test_frame_groupnorm_patches_exactly_resnet_and_out_norms(ref):
    resnets = [n for n, m in ref.unet.named_modules() if type(m).__name__ == "ResnetBlock2D"]
    expected = {f"{r}.norm{i}" for r in resnets for i in (1, 2)} | {"conv_norm_out"}
    patched = {id(norm) for _, norm in ref._patched_norms}
    modules = dict(ref.unet.named_modules())
    assert {n for n in expected if id(modules[n]) in patched} == expected
    assert len(patched) == len(expected)
    transformer_norms = [m for n, m in modules.items() if re.search(r"attentions\.\d+\.norm$", n)]
    assert transformer_norms and not any(id(m) in patched for m in transformer_norms)


def test_frame_groupnorm_statistics(ref):
    """A patched GroupNorm normalises each clip over (C/G, F, H, W); the transformer's stays per frame."""
    ref.frame_groupnorm = True
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

def test_chunks_are_independent_clips(ref_temporal, inputs):
    latents, t, context = inputs
    ref = ref_temporal
    ref.frame_groupnorm = True
    gen = torch.Generator().manual_seed(9)
    latents2 = torch.randn(latents.shape, generator=gen)
    context2 = torch.randn(context.shape, generator=gen)
    both = run(ref, torch.cat([latents, latents2]), t, torch.cat([context, context2]), chunks=2)
    assert both.shape == (2 * FRAMES, *latents.shape[1:])
    assert rel(both[:FRAMES], run(ref, latents, t, context)) < CLOSE
    assert rel(both[FRAMES:], run(ref, latents2, t, context2)) < CLOSE
    # per-frame embeddings and per-chunk / per-frame timesteps are accepted and mean the same
    per_frame_ctx = torch.cat([context, context2]).repeat_interleave(FRAMES, dim=0)
    same = run(ref, torch.cat([latents, latents2]), torch.tensor([500, 500]), per_frame_ctx, chunks=2)
    assert rel(same, both) < SAME
    same = run(ref, torch.cat([latents, latents2]), torch.full((2 * FRAMES,), 500), per_frame_ctx, chunks=2)
    assert rel(same, both) < SAME
    with pytest.raises(ValueError):
        run(ref, latents[:5], t, context, chunks=2)


def test_restore_gives_back_the_plain_unet(make_ref, plain, temporal_weights, inputs):
    latents, t, context = inputs
    ref = make_ref(temporal_weights, frame_groupnorm=True)
    ref.restore()
    assert not ref.unet._reference_tav_installed
    with torch.no_grad():
        out = ref.unet(latents, t, encoder_hidden_states=context.expand(FRAMES, -1, -1)).sample
    assert rel(out, plain_eps(plain, latents, t, context)) < SAME
