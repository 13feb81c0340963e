"""The dtype path a GPU user gets (issue 17, goal 4), on the CPU: the tiny SD1.5 loaded as ComfyUI's --bf16-unet /
--fp16-unet load it (``model_options={"dtype": ...}``). On a CPU ComfyUI keeps such weights in half precision but
computes in fp32 (manual cast); a GPU computes in half precision, which ``native`` reproduces by telling the loader
the device supports it. Tuning still lowers the loss, what it trains (query deltas, temporal layers) is fp32 so
small updates are not rounded away, and the edit runs."""

import pytest
import torch

FRAMES, H, W = 4, 8, 8


# (weights, compute). fp16 computed natively is emulated on CPUs (about 100 s for this test, passed when run by
# hand), so CI checks fp16 weights through ComfyUI's CPU path only.
SETUPS = [(torch.bfloat16, "cast"), (torch.bfloat16, "native"), (torch.float16, "cast")]


@pytest.fixture(scope="module", params=SETUPS, ids=lambda p: f"{str(p[0]).removeprefix('torch.')}-{p[1]}")
def half(request, comfy_lib, tiny_models):
    import comfy.model_management
    import comfy.sd

    dtype, compute = request.param
    with pytest.MonkeyPatch.context() as patch:
        if compute == "native":  # as on a GPU that computes in this dtype: no manual cast to fp32
            patch.setattr(comfy.model_management, "unet_manual_cast", lambda *args, **kwargs: None)
        model, clip, _, _ = comfy.sd.load_checkpoint_guess_config(str(tiny_models["checkpoint"]), output_vae=False,
                                                                  model_options={"dtype": dtype})
    assert model.model.manual_cast_dtype == (torch.float32 if compute == "cast" else None)
    return model, clip.encode_from_tokens_scheduled(clip.tokenize("a man is skiing")), dtype


def test_half_precision_weights_tune_in_fp32_and_the_edit_runs(half):
    from benchmarks.inversion_round_trip import sample_back
    from video_edit.nodes import inversion, sparse_causal, tuning
    from video_edit.nodes.shared import video_unet
    from video_edit.nodes.shared.patcher import PatcherKeys

    model, cond, dtype = half
    weights = {p.dtype for p in model.model.diffusion_model.parameters()}
    assert weights == {dtype}, weights  # ComfyUI keeps the UNet in half precision
    video = torch.randn(FRAMES, 4, H, W, generator=torch.Generator().manual_seed(0))
    base = sparse_causal.with_cross_frame_attention(video_unet.inflate(model), "sparse_causal")
    latent = {"samples": video}

    # Each step of the bfloat16-native case is 14 s of emulated bf16 arithmetic on a CPU, so the loss is compared on
    # one draw of noise and timestep: the first of the tuning (seed 1), before it and once it is done.
    tuned, losses = tuning.one_shot_tune(base, latent, cond, steps=8, learning_rate=2e-3, seed=1)
    assert all(torch.isfinite(torch.tensor(losses["loss"])))
    before = losses["loss"][0]
    after = tuning.one_shot_tune(tuned, latent, cond, steps=1, learning_rate=1e-12, seed=1)[1]["loss"][0]
    assert after < 0.9 * before, (before, after)

    trained = tuned.get_attachment(PatcherKeys.TUNING)
    assert {d.dtype for d in trained.query_deltas.values()} == {torch.float32}
    assert {t.dtype for t in trained.temporal.values()} == {torch.float32}
    # updates of lr 2e-3 survive: the deltas are far from what half-precision rounding of the weights would allow
    assert min(float(d.abs().max()) for d in trained.query_deltas.values()) > 0
    assert {p.dtype for p in model.model.diffusion_model.parameters()} == {dtype}  # the shared MODEL is untouched

    noisy = inversion.ddim_invert(tuned, latent, cond, 1).noisiest
    edited = sample_back(tuned, noisy, cond, 1)
    assert edited.shape == video.shape and torch.isfinite(edited).all()


def test_injected_layers_are_comfy_ops_counted_and_partially_loadable(sd15):
    """The temporal layers are comfy.ops layers in a ModelPatcher of their own: ComfyUI counts their size when it
    loads the MODEL, and low-VRAM partial loading casts them per call with the MODEL's patches (a motion LoRA)
    applied, giving what a full load gives. Plain torch layers would neither be cast nor patched there."""
    import comfy.model_management
    import comfy.ops
    import comfy.sampler_helpers
    from video_edit.nodes import motion_lora_io
    from video_edit.nodes.shared import video_unet

    inflated = video_unet.inflate(sd15[0])
    layers = video_unet.require_inflated(inflated).layers
    with_weights = [m for m in layers.modules() if list(m.parameters(recurse=False))]
    assert with_weights and all(isinstance(m, comfy.ops.CastWeightBiasOp) for m in with_weights)

    comfy.sampler_helpers.prepare_sampling(inflated, (2, 4, 8, 8), {}, inflated.model_options)  # as sampling does
    loaded = [m.model for m in comfy.model_management.current_loaded_models]
    temporal = video_unet.temporal_patcher(inflated)
    assert any(m is temporal for m in loaded)
    assert temporal.model_size() == comfy.model_management.module_size(layers) > 0
    comfy.model_management.unload_all_models()

    shapes = motion_lora_io.temporal_lora_shapes(inflated)
    generator = torch.Generator().manual_seed(3)
    lora = {}
    for key, (out_features, in_features) in shapes.items():
        lora[f"{key}.lora_up.weight"] = torch.randn(out_features, 2, generator=generator)
        lora[f"{key}.lora_down.weight"] = torch.randn(2, in_features, generator=generator)
        lora[f"{key}.alpha"] = torch.tensor(2.0)
    patcher = video_unet.temporal_patcher(motion_lora_io.apply_motion_lora(inflated, None, 0.0, lora, 1.0))
    path = layers.paths[0]
    x = torch.randn(4, 16, layers.layer(path).norm_temp.normalized_shape[0], generator=generator)
    cpu = torch.device("cpu")

    def temporal_output(**load):
        patcher.load(cpu, **load)
        try:
            with torch.no_grad():
                return layers.layer(path)(x, 1), [m.comfy_cast_weights for m in with_weights]
        finally:
            patcher.unpatch_model(cpu)

    with torch.no_grad():
        bare = layers.layer(path)(x, 1)
    full, _ = temporal_output(full_load=True)
    partial, cast = temporal_output(lowvram_model_memory=1)
    assert all(cast)  # nothing fitted: every layer is cast (and patched) per call
    assert not torch.allclose(full, bare)  # the LoRA changes the output
    torch.testing.assert_close(partial, full)
