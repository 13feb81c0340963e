"""The slot matrix (nodes/shared/attention_slots.SLOT_TABLE): every ordered pair of our attention nodes
(sparse-causal in each mode, TokenFlow, FateZero's capture and fusion), a foreign attn1 and attn2 patch,
IPAdapter_plus's real ``set_model_patch_replace`` and AnimateDiff-Evolved's Use Evolved Sampling either composes,
with its output checked, or refuses naming both nodes. The third-party packs come from ``../shared/third_party``
(test fixtures only). What several tests compare against (a node's output alone) is sampled once per session."""

import functools
from collections import Counter

import pytest
import torch

from comfy_server import ANIMATEDIFF_EVOLVED, ANIMATEDIFF_EVOLVED_MODULE

FRAMES, H, W, STEPS = 3, 8, 8, 2
SOURCE, EDIT = "a silver jeep", "a red jeep"
MODES = ("sparse_causal", "first_frame", "middle_frame", "full")
CALLS = Counter()  # by name: ModelPatcher.clone copies patches, so patches count here


def load_pack(folder: str, name: str):
    """Another pack, imported by file path from ../shared/third_party (never from the pack itself)."""
    from comfy_server import THIRD_PARTY, import_pack, third_party_pack

    path = third_party_pack(folder)
    if path is None:
        pytest.skip(f"interop not tested: {THIRD_PARTY / folder} is absent (a clone without ../shared); get "
                    f"{folder} at the commit in ../shared/third_party/README.md to run it")
    return import_pack(path, name)


class ForeignPatch:
    """Another pack's replace patch: plain attention through ComfyUI's kernel, counting its calls."""

    def __init__(self, name):
        self.name = name

    def __call__(self, q, k, v, extra_options):
        from comfy.ldm.modules.attention import optimized_attention

        CALLS[self.name] += 1
        return optimized_attention(q, k, v, extra_options["n_heads"])


def ip_callback(out, q, k, v, extra_options, weight=1.0, **kwargs):
    """A stand-in for IPAdapter's image attention: a deterministic term of the queries, added to the output."""
    CALLS["ipadapter"] += 1
    return weight * torch.tanh(q)


@pytest.fixture(scope="module")
def s(sd15, encode):
    import comfy.sample
    import comfy.samplers
    from types import SimpleNamespace

    from video_edit.kernels.unet_layout import iter_transformer_blocks
    from video_edit.nodes import fatezero, fatezero_capture, inversion, sparse_causal, tokenflow

    model, clip, _ = sd15
    blocks = [key for key, *_ in iter_transformer_blocks(model.model.diffusion_model)]
    latents = torch.randn(FRAMES, 4, H, W, generator=torch.Generator().manual_seed(0))
    source = encode(SOURCE)

    def sample(m, start=latents):
        """KSampler Advanced as the editing workflows use it (ddim, ddim_uniform, no added noise)."""
        return comfy.sample.sample(m, torch.zeros_like(start), STEPS, 7.5, "ddim", "ddim_uniform", encode(EDIT),
                                   encode(""), start, disable_noise=True, disable_pbar=True, seed=0)

    def invert(m, capture=False):
        return inversion.ddim_invert(m, {"samples": latents}, source, STEPS,
                                     fatezero_capture.AttentionCapture() if capture else None)

    def foreign(kind, name, short=False):
        def node(m):
            clone = m.clone()
            for key in blocks:
                getattr(clone, f"set_model_{kind}_replace")(ForeignPatch(name), *(key[:2] if short else key))
            return clone
        return node

    def ipadapter(weight=1.0):
        plus = load_pack("ComfyUI_IPAdapter_plus", "ipadapter_plus_under_test").IPAdapterPlus
        plus.ipadapter_attention = ip_callback  # the callback its set_model_patch_replace installs, without weights

        def node(m):
            clone = m.clone()  # as IPAdapter's nodes do
            for key in blocks:  # SD1.5: the (block, number) keys IPAdapter uses
                plus.set_model_patch_replace(clone, {"weight": weight, "sigma_start": 1e9, "sigma_end": 0.0,
                                                "module_key": "1"}, key[:2])
            return clone
        return node

    def evolved_sampling(m):
        ade = load_pack(ANIMATEDIFF_EVOLVED, ANIMATEDIFF_EVOLVED_MODULE)
        return ade.NODE_CLASS_MAPPINGS["ADE_UseEvolvedSampling"]().use_evolved_sampling(m, "autoselect")[0]

    plain_inversion = invert(model)
    starts = {"clip": latents}  # what `alone` samples from, by name
    tokenflow_start = tokenflow.tokenflow(model, plain_inversion, source, keyframe_chunk_size=2)[1]["samples"]
    captured = {None: invert(model, capture=True)}

    def fusion(m, cross_frame=None):
        """Fusion with the inversion made by the same cross-frame attention (``cross_frame``: its mode)."""
        if cross_frame not in captured:
            captured[cross_frame] = invert(sparse_causal.with_cross_frame_attention(model, cross_frame), True)
        return fatezero.attention_fusion(m, captured[cross_frame], clip, SOURCE, EDIT, "")[0]

    starts.update(tokenflow=tokenflow_start, captured=captured[None].latents[-1])
    return SimpleNamespace(
        model=model, blocks=blocks, sample=sample, invert=invert, foreign=foreign, ipadapter=ipadapter,
        evolved_sampling=evolved_sampling, fusion=fusion, captured=captured,
        cross_frame=functools.cache(lambda mode: lambda m: sparse_causal.with_cross_frame_attention(m, mode)),
        tokenflow=lambda m: tokenflow.tokenflow(m, plain_inversion, source, keyframe_chunk_size=2)[0],
        start=lambda: tokenflow_start, alone=functools.cache(lambda node, start: sample(node(model), starts[start])))


def exact(a, b):
    torch.testing.assert_close(a, b, rtol=0, atol=0)


# ----- ours after ours ------------------------------------------------------------------------------------------

def test_every_transformer_of_a_deep_block_is_its_own_slot(sdxl):
    """SDXL blocks hold several transformers, (block, number, 0..n-1): a patch installed at index t > 0 finds that
    slot empty, not transformer 0's patch (which the short key (block, number) answers on our slot dict), so
    capture and fusion patches are never nested across transformers, nor refused as a second fusion."""
    from video_edit.kernels.unet_layout import iter_transformer_blocks
    from video_edit.nodes import fatezero, fatezero_capture, sparse_causal
    from video_edit.nodes.shared.attention_slots import chain, install, replace_patches

    keys = [key for key, *_ in iter_transformer_blocks(sdxl.model.diffusion_model)]
    assert {key[2] for key in keys} == set(range(10))
    cross_frame = sparse_causal.with_cross_frame_attention(sdxl, "sparse_causal")
    for model, patch_class, roles in ((sdxl, fatezero_capture.SelfAttentionCapture, ["capture"]),
                                      (sdxl, fatezero.SelfAttentionFusion, ["fusion"]),
                                      (cross_frame, fatezero.SelfAttentionFusion, ["fusion", "cross-frame"])):
        clone = model.clone()
        for key in keys:
            install(clone, "attn1", key, patch_class(None, key))
        slots = replace_patches(clone.model_options, "attn1")
        assert set(slots) == set(keys)
        for key in keys:
            assert [p.role for p in chain(slots[key])] == roles
            assert [p.key for p in chain(slots[key]) if isinstance(p, patch_class)] == [key]

@pytest.mark.parametrize("mode", MODES)
def test_sparse_causal_after_fusion_goes_inside_it(s, mode):
    """Issue 27 order 1: the same model as sparse-causal before fusion (was a shape error for sparse_causal and
    silently per-frame attention for the other modes)."""
    cross_frame = s.cross_frame(mode)
    before = s.fusion(cross_frame(s.model), mode)
    after = cross_frame(s.fusion(s.model, mode))
    start = s.captured[mode].latents[-1]
    edited = s.sample(after, start)
    exact(edited, s.sample(before, start))
    per_frame = s.sample(s.fusion(s.model, mode), start)
    assert not torch.allclose(edited, per_frame)  # cross-frame attention really runs


def test_tokenflow_replaces_sparse_causal_and_sparse_causal_after_tokenflow_refuses(s):
    start = s.start()
    exact(s.sample(s.tokenflow(s.cross_frame("middle_frame")(s.model)), start), s.alone(s.tokenflow, "tokenflow"))
    with pytest.raises(ValueError, match="VE Sparse-Causal Attention after VE TokenFlow .*connect VE Sparse-Causal "
                                         "Attention before VE TokenFlow"):
        s.cross_frame("sparse_causal")(s.tokenflow(s.model))


def test_tokenflow_and_fusion_refuse_each_other_and_a_second_fusion(s):
    with pytest.raises(ValueError, match="VE TokenFlow after VE Attention Fusion .*two editing methods"):
        s.tokenflow(s.fusion(s.model))
    with pytest.raises(ValueError, match="VE Attention Fusion after VE TokenFlow .*two editing methods"):
        s.fusion(s.tokenflow(s.model))
    with pytest.raises(ValueError, match="VE Attention Fusion after VE Attention Fusion .*one fusion per model"):
        s.fusion(s.fusion(s.model))


@pytest.mark.parametrize("node", ["sparse_causal", "tokenflow"])
def test_capture_after_our_nodes_changes_no_bit(s, node):
    """VE DDIM Invert with a capture on a cross-frame or TokenFlow MODEL: the capture wraps their patches."""
    model = s.cross_frame("sparse_causal")(s.model) if node == "sparse_causal" else s.tokenflow(s.model)
    exact(s.invert(model, capture=True).latents, s.invert(model).latents)


def test_capture_after_fusion_refuses(s):
    with pytest.raises(ValueError, match="VE DDIM Invert's attention capture after VE Attention Fusion .*invert "
                                         "with the MODEL that went into VE Attention Fusion"):
        s.invert(s.fusion(s.model), capture=True)


# ----- a foreign attn1/attn2 patch, before and after ours --------------------------------------------------------

@pytest.mark.parametrize("mode", MODES)
def test_foreign_patches_before_sparse_causal_are_called(s, mode):
    ours = s.cross_frame(mode)
    CALLS.clear()
    chained = ours(s.foreign("attn2", "f2")(s.foreign("attn1", "f1")(s.model)))
    exact(s.sample(chained), s.alone(ours, "clip"))
    assert CALLS["f1"] > 0 and CALLS["f2"] > 0


@pytest.mark.parametrize("short", [False, True], ids=["full key", "short key"])
@pytest.mark.parametrize("node", ["sparse_causal", "tokenflow", "fusion"])
def test_a_foreign_attn1_patch_after_ours_is_refused_when_sampling(s, node, short):
    """ComfyUI's set_model_attn1_replace replaces our patch (full key) or is never called (short key): either
    would silently drop one of them."""
    ours = {"sparse_causal": s.cross_frame("sparse_causal"), "tokenflow": s.tokenflow, "fusion": s.fusion}[node]
    later = s.foreign("attn1", "f1", short)(ours(s.model))
    with pytest.raises(ValueError, match=r"another pack's patch .*ForeignPatch, connected after VE .*connect another "
                                         r"pack's patch .*ForeignPatch before VE"):
        s.sample(later, s.start() if node == "tokenflow" else s.captured[None].latents[-1])


def test_a_foreign_attn2_patch_and_fusion_refuse_in_both_orders(s):
    with pytest.raises(ValueError, match="VE Attention Fusion after another pack's patch .*ForeignPatch .*attn2.*"
                                         "connect VE Attention Fusion first"):
        s.fusion(s.foreign("attn2", "f2")(s.model))
    with pytest.raises(ValueError, match="connected after VE Attention Fusion, replaced its patch .*cannot share"):
        s.sample(s.foreign("attn2", "f2")(s.fusion(s.model)), s.captured[None].latents[-1])


def test_foreign_attn2_after_sparse_causal_and_tokenflow_composes(s):
    for ours in (s.cross_frame("sparse_causal"), s.tokenflow):
        start = s.start()
        CALLS.clear()
        exact(s.sample(s.foreign("attn2", "f2")(ours(s.model)), start), s.alone(ours, "tokenflow"))
        assert CALLS["f2"] > 0


# ----- IPAdapter_plus (its real set_model_patch_replace) ---------------------------------------------------------

def test_ipadapter_after_fusion_adds_its_attention(s):
    """Issue 27 order 2: IPAdapter finds our attn2 patch and calls .add; the contribution is added to the fused
    output as to plain attention (weight 0 adds nothing), and the MODEL it got is unchanged."""
    fused = s.fusion(s.model)
    start = s.captured[None].latents[-1]
    alone = s.sample(fused, start)
    CALLS.clear()
    exact(s.sample(s.ipadapter(weight=0.0)(fused), start), alone)
    assert CALLS["ipadapter"] > 0
    with_image = s.ipadapter(weight=0.5)(fused)
    assert not torch.allclose(s.sample(with_image, start), alone)
    exact(s.sample(fused, start), alone)  # .add went to IPAdapter's clone only
    slots = (m.model_options["transformer_options"]["patches_replace"]["attn2"] for m in (fused, with_image))
    assert [len(slot[s.blocks[0]].callbacks) for slot in slots] == [0, 1]


def test_ipadapter_contribution_equals_what_it_adds_to_plain_attention(s):
    """At one attn2 call: ours + callback term == ours + (IPAdapter's Attn2Replace - plain attention)."""
    from comfy.ldm.modules.attention import optimized_attention
    from video_edit.nodes.fatezero_capture import CrossAttentionCapture

    ipa = load_pack("ComfyUI_IPAdapter_plus", "ipadapter_plus_under_test")
    kwargs = {"weight": 0.5, "sigma_start": 1e9, "sigma_end": 0.0}
    theirs = ipa.CrossAttentionPatch.Attn2Replace(ip_callback, **kwargs)
    store = s.captured[None].captures["attention"]
    ours = CrossAttentionCapture(store, s.blocks[0])
    ours.add(ip_callback, **kwargs)
    q, k, v = (torch.randn(2, 16, 32, generator=torch.Generator().manual_seed(i)) for i in range(3))
    options = {"n_heads": 2, "sigmas": torch.tensor([999.0]), "cond_or_uncond": [1]}  # no level: not recorded
    exact(ours(q, k, v, options), theirs(q, k, v, options))
    assert not torch.allclose(theirs(q, k, v, options), optimized_attention(q, k, v, 2))


def test_fusion_after_ipadapter_refuses_by_name(s):
    with pytest.raises(ValueError, match="VE Attention Fusion after another pack's patch .*Attn2Replace .*connect VE "
                                         "Attention Fusion first and .*Attn2Replace after it"):
        s.fusion(s.ipadapter()(s.model))


@pytest.mark.parametrize("node", ["sparse_causal", "tokenflow"])
def test_ipadapter_and_attn1_nodes_compose_in_both_orders(s, node):
    ours = s.cross_frame("sparse_causal") if node == "sparse_causal" else s.tokenflow
    start = s.start()
    CALLS.clear()
    first, second = s.sample(ours(s.ipadapter()(s.model)), start), s.sample(s.ipadapter()(ours(s.model)), start)
    exact(first, second)
    assert CALLS["ipadapter"] > 0 and not torch.allclose(first, s.alone(ours, "tokenflow"))


def test_capture_after_ipadapter_wraps_it_and_changes_no_bit(s):
    CALLS.clear()
    model = s.ipadapter()(s.model)
    exact(s.invert(model, capture=True).latents, s.invert(model).latents)
    assert CALLS["ipadapter"] > 0


# ----- AnimateDiff-Evolved's Use Evolved Sampling (no motion model) -----------------------------------------------

@pytest.mark.parametrize("node", ["sparse_causal", "middle_frame", "fusion"])
def test_evolved_sampling_composes_in_both_orders(s, node):
    """Use Evolved Sampling touches no attention slot: without a motion model the output is ours alone."""
    ours = s.fusion if node == "fusion" else s.cross_frame(node)
    start = s.captured[None].latents[-1]
    expected = s.alone(ours, "captured")
    exact(s.sample(s.evolved_sampling(ours(s.model)), start), expected)
    exact(s.sample(ours(s.evolved_sampling(s.model)), start), expected)
