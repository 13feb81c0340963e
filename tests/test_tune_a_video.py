"""Tune-A-Video through ComfyUI's real model objects (tiny SD1.5): the invariants of docs/design.md §3, clone
isolation, save/load."""

import math
from types import SimpleNamespace

import pytest
import torch

FRAMES, H, W = 4, 8, 8


@pytest.fixture(scope="module")
def tav(sd15, encode, denoise):
    from video_edit.nodes import inversion, sparse_causal, tuned_io, tuning
    from video_edit.nodes.shared import video_unet

    cond = encode("a man is skiing")
    return SimpleNamespace(
        model=sd15[0], cond=cond, denoise=lambda m, x: denoise(m, x, cond),
        video_unet=video_unet, inversion=inversion, sparse_causal=sparse_causal, tuning=tuning, tuned_io=tuned_io,
        video=torch.randn(FRAMES, 4, H, W, generator=torch.Generator().manual_seed(0)))


def tuning_of(model):
    """The TunedWeights a tuned MODEL carries."""
    from video_edit.nodes.shared.patcher import PatcherKeys

    return model.get_attachment(PatcherKeys.TUNING)


def test_sparse_causal_frame0_equals_the_image_model(tav):
    plain = tav.denoise(tav.model, tav.video)
    patched = tav.denoise(tav.sparse_causal.with_cross_frame_attention(tav.model, "sparse_causal"), tav.video)
    torch.testing.assert_close(patched[0], plain[0], rtol=1e-4, atol=1e-4)
    assert (patched[1:] - plain[1:]).abs().max() > 1e-3  # the other frames do look across frames


def test_identical_frames_give_the_image_model_output(tav):
    video = tav.video[:1].repeat(FRAMES, 1, 1, 1)
    plain = tav.denoise(tav.model, video)
    for mode in ("sparse_causal", "first_frame", "middle_frame", "full"):
        patched = tav.denoise(tav.sparse_causal.with_cross_frame_attention(tav.model, mode), video)
        torch.testing.assert_close(patched, plain, rtol=1e-4, atol=1e-4)
    inflated = tav.sparse_causal.with_cross_frame_attention(tav.video_unet.inflate(tav.model, frame_groupnorm=True), "sparse_causal")
    torch.testing.assert_close(tav.denoise(inflated, video), plain, rtol=1e-4, atol=1e-4)


def test_frame_i_never_sees_its_own_keys_in_the_real_patch(tav):
    """The patch ComfyUI calls, on real projected q/k/v of the tiny model's first block."""
    from comfy.ldm.modules.attention import optimized_attention

    patch = tav.sparse_causal.CrossFrameAttentionPatch("sparse_causal", 1e9, 0.0)
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2 * FRAMES, 16, 320, generator=g) for _ in range(3))
    options = {"n_heads": 8, "cond_or_uncond": [0, 1], "sigmas": torch.tensor([3.0])}
    out = patch(q, k, v, options)
    torch.testing.assert_close(out[[0, FRAMES]], optimized_attention(q[[0, FRAMES]], k[[0, FRAMES]], v[[0, FRAMES]], 8))
    k2, v2 = k.clone(), v.clone()
    k2[2] += 5.0
    v2[2] -= 5.0
    torch.testing.assert_close(patch(q, k2, v2, options)[2], out[2], rtol=0, atol=0)
    outside = tav.sparse_causal.CrossFrameAttentionPatch("sparse_causal", 2.0, 1.0)  # sigma 3 is outside [1, 2]
    torch.testing.assert_close(outside(q, k, v, options), optimized_attention(q, k, v, 8))


def test_untuned_inflated_model_equals_the_image_model(tav):
    plain = tav.denoise(tav.model, tav.video)
    torch.testing.assert_close(tav.denoise(tav.video_unet.inflate(tav.model, frame_groupnorm=False), tav.video), plain,
                               rtol=1e-5, atol=1e-5)
    # The official frame-spanning GroupNorm is a real change on a clip whose frames differ.
    assert (tav.denoise(tav.video_unet.inflate(tav.model, frame_groupnorm=True), tav.video) - plain).abs().max() > 1e-3


def test_injection_is_gone_after_unload(tav):
    import comfy.model_management

    inflated = tav.video_unet.inflate(tav.model)
    tav.denoise(inflated, tav.video)
    comfy.model_management.unload_all_models()
    unet = tav.model.model.diffusion_model
    names = {type(m).__name__ for m in unet.modules()}
    assert "InflatedTransformerBlock" not in names and "FrameSpanningGroupNorm" not in names


@pytest.fixture(scope="module")
def tuned(tav, model_state):
    base = tav.sparse_causal.with_cross_frame_attention(tav.video_unet.inflate(tav.model, frame_groupnorm=True),
                                                        "sparse_causal")
    before = model_state(base)
    model, losses = tav.tuning.one_shot_tune(base, {"samples": tav.video}, tav.cond, steps=3, learning_rate=1e-3, seed=0)
    assert model_state(base) == before
    return base, model, losses


def test_trainable_set_is_exactly_the_official_one(tav, tuned):
    base, model, _ = tuned
    record = tuning_of(model)
    unet = tav.model.model.diffusion_model
    blocks = [path for _, path, _, _ in tav.video_unet.iter_transformer_blocks(unet)]
    assert set(record.query_deltas) == {f"diffusion_model.{p}.{a}.to_q.weight" for p in blocks for a in ("attn1", "attn2")}
    assert all(d.abs().max() > 0 for d in record.query_deltas.values())
    start = tav.video_unet.get_inflation(base).layers.state_dict()
    for key, value in record.temporal.items():
        moved = not torch.equal(value, start[key].float())
        assert moved == (".attn_temp." in key), key  # attn_temp all trained, norm_temp frozen


def test_tuning_leaves_the_input_model_and_changes_the_output(tav, tuned):
    base, model, losses = tuned
    assert list(losses) == ["loss"] and len(losses["loss"]) == 3 and all(torch.isfinite(torch.tensor(losses["loss"])))
    assert (tav.denoise(model, tav.video) - tav.denoise(base, tav.video)).abs().max() > 1e-4


def test_save_then_load_is_bit_identical(tav, tuned, tmp_path):
    base, model, _ = tuned
    path = str(tmp_path / "clip.safetensors")
    tav.tuned_io.save_tuned(tuning_of(model), path)
    reloaded = tav.tuned_io.load_tuned(path)
    assert reloaded.metadata["frames"] == FRAMES and reloaded.frame_groupnorm is True
    again = tav.video_unet.apply_tuned(base, reloaded)
    assert torch.equal(tav.denoise(again, tav.video), tav.denoise(model, tav.video))
    assert [p.name for p in tmp_path.iterdir()] == ["clip.safetensors"]


def test_tuning_lowers_the_loss(tav):
    """Evaluate the ε-MSE at the same fixed timesteps and noise before and after tuning (lr 0 = evaluation)."""
    base = tav.video_unet.inflate(tav.model)
    latent = {"samples": tav.video}

    def loss(m):
        return sum(tav.tuning.one_shot_tune(m, latent, tav.cond, steps=3, learning_rate=1e-12, seed=7)[1]["loss"]) / 3

    tuned_model, _ = tav.tuning.one_shot_tune(base, latent, tav.cond, steps=8, learning_rate=2e-3, seed=1)
    before, after = loss(base), loss(tuned_model)
    assert after < 0.9 * before, (before, after)


def test_bad_inputs_fail_with_clear_messages(tav):
    with pytest.raises(ValueError, match="model: one-shot tuning trains the temporal layers"):
        tav.tuning.one_shot_tune(tav.model, {"samples": tav.video}, tav.cond, 1, 1e-5, 0)
    with pytest.raises(ValueError, match="latent: a clip of at least 2 frames"):
        tav.tuning.one_shot_tune(tav.video_unet.inflate(tav.model), {"samples": tav.video[:1]}, tav.cond, 1, 1e-5, 0)
    with pytest.raises(FloatingPointError, match="loss became nan at step 0"):
        bad = tav.video.clone()
        bad[0, 0, 0, 0] = float("nan")
        tav.tuning.one_shot_tune(tav.video_unet.inflate(tav.model), {"samples": bad}, tav.cond, 1, 1e-5, 0)


def test_no_node_alters_its_input_model(tav, tuned, tmp_path, model_state):
    """Every Tune-A-Video node returns a clone; the MODEL it was given keeps its patches, options and outputs."""
    base, model, _ = tuned
    plain_before, plain_out = model_state(tav.model), tav.denoise(tav.model, tav.video)
    from video_edit.nodes.inflate import InflateUNet

    inflated = InflateUNet.execute(tav.model, True)[0]
    inflated_before = model_state(inflated)
    tav.sparse_causal.SparseCausalAttention.execute(inflated, "sparse_causal", 0.0, 1.0)
    assert model_state(inflated) == inflated_before
    path = tmp_path / "t.safetensors"
    tav.tuned_io.save_tuned(tuning_of(model), str(path))
    tav.video_unet.apply_tuned(tav.model, tav.tuned_io.load_tuned(str(path)))
    tav.inversion.ddim_invert(inflated, {"samples": tav.video}, tav.cond, 2)
    assert model_state(inflated) == inflated_before
    assert model_state(tav.model) == plain_before
    assert torch.equal(tav.denoise(tav.model, tav.video), plain_out)


def test_only_the_trainable_weights_get_gradients(tav, tiny_models):
    """After tuning (with a ControlNet in the conditioning) no weight of the UNet, the temporal layers or the
    ControlNet requires or holds a gradient, and the shared model's weights are unchanged."""
    import comfy.controlnet
    import nodes as core_nodes

    controlnet = comfy.controlnet.load_controlnet(str(tiny_models["controlnet"]))
    hint = torch.rand(FRAMES, H * 8, W * 8, 3, generator=torch.Generator().manual_seed(3))
    positive, _ = core_nodes.ControlNetApplyAdvanced().apply_controlnet(tav.cond, tav.cond, controlnet, hint, 1.0,
                                                                        0.0, 1.0)
    unet = tav.model.model.diffusion_model
    before = {name: p.detach().clone() for name, p in unet.named_parameters()}
    tuned, _ = tav.tuning.one_shot_tune(tav.video_unet.inflate(tav.model), {"samples": tav.video}, positive, steps=2,
                                        learning_rate=1e-3, seed=0)
    weights = {"UNet": unet.parameters(), "ControlNet": controlnet.control_model.parameters(),
               "temporal layers": tav.video_unet.get_inflation(tuned).layers.parameters()}
    for what, params in weights.items():
        params = list(params)
        assert params and not any(p.requires_grad or p.grad is not None for p in params), what
    assert all(torch.equal(p, before[name]) for name, p in unet.named_parameters())


def test_the_trainers_adamw_takes_torchs_default_adamw_steps(comfy_lib):
    """Tuning and MotionDirector step with torch's fused AdamW on a CPU (one pass over all parameters); its
    steps, with the official settings and a group without weight decay, are the default implementation's."""
    from video_edit.nodes.shared.training import adamw

    g = torch.Generator().manual_seed(6)
    start = [torch.randn(shape, generator=g) for shape in ((8, 8), (8,), (4, 8))]
    grads = [[torch.randn(p.shape, generator=g) for p in start] for _ in range(5)]

    def trained(make_optimizer):
        params = [torch.nn.Parameter(p.clone()) for p in start]
        optimizer = make_optimizer([{"params": params[:1], "weight_decay": 0.0}, {"params": params[1:]}])
        for step in grads:
            for p, grad in zip(params, step):
                p.grad = grad.clone()
            optimizer.step()
        return optimizer, [p.detach() for p in params]

    fused, ours = trained(lambda groups: adamw(groups, 3e-2, 1e-2, torch.device("cpu")))
    assert all(group["fused"] for group in fused.param_groups)
    _, default = trained(lambda groups: torch.optim.AdamW(groups, lr=3e-2, betas=(0.9, 0.999), eps=1e-8,
                                                          weight_decay=1e-2))
    for p, expected, first in zip(ours, default, start):
        torch.testing.assert_close(p, expected, rtol=1e-6, atol=1e-7)
        assert not torch.equal(p, first)


def test_a_query_delta_holds_no_copy_of_its_layers_own_weight(comfy_lib):
    """ComfyUI hands weight wrappers a copy of the weight. When that is the layer's own weight (the wrapper comes
    first), the weight decay reads the layer's weight instead of keeping the copy through the step; after
    another function (e.g. a LoRA patched on the fly), it keeps the weight as it was used."""
    from video_edit.nodes.tuning import QueryDelta

    layer = torch.nn.Linear(4, 4, bias=False)
    delta = QueryDelta(layer, "cpu")
    with torch.no_grad():
        delta.delta.fill_(0.5)
    layer.weight_function = [delta]
    out = delta(layer.weight.detach().clone())
    assert delta.used is None and torch.equal(delta.base, layer.weight)
    torch.testing.assert_close(out, layer.weight + 0.5)
    patched = layer.weight.detach() + 1
    layer.weight_function = [lambda weight: weight + 1, delta]
    out = delta(patched)
    assert delta.used is not None and torch.equal(delta.base, patched)
    torch.testing.assert_close(out, layer.weight + 1.5)


def test_causal_temporal_mask_in_the_unet_and_the_tuned_file(tav, tmp_path):
    """Make-Your-Video's causal mask (VE_InflateUNet temporal_mask causal) with per-frame GroupNorm and
    sparse-causal attention: the whole UNet is causal, frame i's output ignores later frames. One-shot tuning
    keeps the mask, and the tuned file restores it."""
    from video_edit.kernels.temporal import TemporalMask
    from video_edit.nodes import inflate as inflate_node

    causal = inflate_node.InflateUNet.execute(tav.model, False, "causal", 0).result[0]
    layers = tav.video_unet.get_inflation(causal).layers
    g = torch.Generator().manual_seed(4)
    layers.load_state_dict({k: 0.2 * torch.randn(v.shape, generator=g) for k, v in layers.state_dict().items()})
    video_model = tav.sparse_causal.with_cross_frame_attention(causal, "sparse_causal")
    later = tav.video.clone()
    later[2:] = torch.randn(FRAMES - 2, 4, H, W, generator=g)
    before, after = tav.denoise(video_model, tav.video), tav.denoise(video_model, later)
    torch.testing.assert_close(after[:2], before[:2], rtol=1e-5, atol=1e-5)
    assert (after[2:] - before[2:]).abs().max() > 1e-2

    tuned, _ = tav.tuning.one_shot_tune(video_model, {"samples": tav.video}, tav.cond, 1, 1e-4, 0,
                                        gradient_checkpointing=False)
    assert tav.video_unet.get_inflation(tuned).mask == TemporalMask("causal", 0)
    path = str(tmp_path / "causal.safetensors")
    tav.tuned_io.save_tuned(tuning_of(tuned), path)
    assert tav.tuned_io.load_tuned(path).mask == TemporalMask("causal", 0)
    reloaded = tav.video_unet.apply_tuned(tav.model, tav.tuned_io.load_tuned(path))
    assert tav.video_unet.get_inflation(reloaded).mask.mode == "causal"


def test_dreamix_image_steps_train_frames_as_images(tav):
    """VE_OneShotTune image_mix (Dreamix): image steps run the frames as independent images through the image
    model's path and leave the temporal layers as they are; video steps train them; 0 is Tune-A-Video."""
    g = torch.Generator().manual_seed(5)
    inflated = tav.video_unet.inflate(tav.model, frame_groupnorm=True)
    layers = tav.video_unet.get_inflation(inflated).layers
    start = {k: 0.1 * torch.randn(v.shape, generator=g) for k, v in layers.state_dict().items()}
    base = tav.sparse_causal.with_cross_frame_attention(tav.video_unet.inflate(tav.model, start), "sparse_causal")
    with tav.video_unet.bypass_temporal():  # the image steps' model: every frame on its own, as the image model
        torch.testing.assert_close(tav.denoise(base, tav.video), tav.denoise(tav.model, tav.video), rtol=1e-4,
                                   atol=1e-4)

    def tune(image_mix, steps=1, seed=0):
        tuned, losses = tav.tuning.one_shot_tune(base, {"samples": tav.video}, tav.cond, steps, 1e-3, seed,
                                                 gradient_checkpointing=False, image_mix=image_mix)
        return tuning_of(tuned), losses

    images, image_losses = tune(1.0)
    video, video_losses = tune(0.0)
    assert all(torch.equal(images.temporal[k], v) for k, v in start.items())  # no gradient, no decay
    assert any(d.abs().max() > 0 for d in images.query_deltas.values())  # the image step did train
    changed = [k for k, v in start.items() if ".attn_temp." in k and not torch.equal(video.temporal[k], v)]
    assert changed and list(video_losses) == ["loss"]
    plain, _ = tav.tuning.one_shot_tune(base, {"samples": tav.video}, tav.cond, 1, 1e-3, 0,
                                        gradient_checkpointing=False)  # image_mix 0 draws nothing more: the same run
    for k, v in video.temporal.items():  # (repeated CPU runs agree to ~2e-5, not bit for bit)
        torch.testing.assert_close(tuning_of(plain).temporal[k], v, rtol=0, atol=1e-4)
    assert math.isnan(image_losses["video"][0]) and math.isfinite(image_losses["image"][0])
    _, mixed = tune(0.5, steps=6, seed=3)
    kinds = [math.isfinite(v) for v in mixed["image"]]
    assert any(kinds) and not all(kinds) and [not k for k in kinds] == [math.isfinite(v) for v in mixed["video"]]
    with pytest.raises(ValueError, match="image_mix: 1.5 is not a fraction of the steps"):
        tune(1.5)
