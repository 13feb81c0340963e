"""FateZero through ComfyUI's real model objects (tiny SD1.5, 4 frames, 8x8 latents): docs/design.md §6."""

from types import SimpleNamespace

import pytest
import torch

FRAMES, H, W, STEPS = 4, 8, 8, 3
SOURCE, EDIT = "a silver jeep", "a red jeep"
SMALL_BLOCKS = {("input", 3, 0), ("middle", 0, 0), ("output", 0, 0), ("output", 1, 0)}  # 4x4, 640 channels
ALL_BLOCKS = SMALL_BLOCKS | {("input", 1, 0), ("output", 2, 0), ("output", 3, 0)}  # + 8x8, 320 channels


@pytest.fixture(scope="module")
def fz(sd15, encode):
    import comfy.sample
    from video_edit.nodes import fatezero, fatezero_capture, inversion, sparse_causal

    model, clip, _ = sd15

    def edit(m, start, prompt=EDIT, steps=STEPS):
        """KSampler Advanced as the workflows use it: ddim, ddim_uniform, no added noise, CFG 7.5."""
        return comfy.sample.sample(m, torch.zeros_like(start), steps, 7.5, "ddim", "ddim_uniform", encode(prompt),
                                   encode(""), start, disable_noise=True, disable_pbar=True, seed=0)

    latent = {"samples": torch.randn(FRAMES, 4, H, W, generator=torch.Generator().manual_seed(0))}
    return SimpleNamespace(
        model=model, clip=clip, encode=encode, edit=edit, fatezero=fatezero, inversion=inversion,
        sparse_causal=sparse_causal, capture=fatezero_capture.AttentionCapture, latent=latent,
        captured=inversion.ddim_invert(model, latent, encode(SOURCE), STEPS, fatezero_capture.AttentionCapture()))


def test_capture_stores_the_blocks_under_the_token_threshold_and_changes_nothing(fz):
    inv = fz.inversion
    store = fz.captured.captures["attention"]
    assert set(store.blocks) == ALL_BLOCKS  # 8x8 latents: every block has at most 1024 tokens
    for level in range(1, STEPS + 1):
        assert store.read("queries", ("input", 1, 0), level).shape == (FRAMES, 64, 320)
        cross = store.read("cross", ("middle", 0, 0), level)
        assert cross.shape == (FRAMES, 8, 16, 77) and cross.dtype == torch.float16
        sums = store.read("cross", ("input", 1, 0), level).float().sum(-1)
        torch.testing.assert_close(sums, torch.ones_like(sums), atol=2e-3, rtol=0)  # post-softmax maps
    assert store.read("keys", ("input", 1, 0), 2, [1, 2]).shape == (2, 64, 320)
    plain = inv.ddim_invert(fz.model, fz.latent, fz.encode(SOURCE), STEPS)
    assert torch.equal(fz.captured.latents, plain.latents)  # same kernel, recording only

    small = inv.ddim_invert(fz.model, fz.latent, fz.encode(SOURCE), STEPS, fz.capture(max_query_tokens=16))
    assert set(small.captures["attention"].blocks) == SMALL_BLOCKS
    fused, _ = fz.fatezero.attention_fusion(fz.model, small, fz.clip, SOURCE, EDIT, "jeep")
    replaced = fused.model_options["transformer_options"]["patches_replace"]
    assert set(replaced["attn1"]) == set(replaced["attn2"]) == SMALL_BLOCKS  # the 8x8 blocks are never touched


def test_the_threshold_is_a_resolution_rule(fz):
    from video_edit.kernels.fatezero import captured_blocks

    unet = fz.model.model.diffusion_model
    # At 512x512 (64x64 latents) the tiny UNet's 320-channel level is 64x64 = 4096 tokens: left out by 1024.
    assert {s.key for s in captured_blocks(unet, 64, 64, 1024)} == SMALL_BLOCKS
    assert {(s.key, s.height) for s in captured_blocks(unet, 64, 64, 1024)} == {(k, 32) for k in SMALL_BLOCKS}
    assert {s.key for s in captured_blocks(unet, 8, 8, 1024)} == ALL_BLOCKS
    assert captured_blocks(unet, 8, 8, 15) == []


def test_editing_step_k_reads_the_inversion_level_with_the_same_sigma(fz):
    import comfy.samplers

    store = fz.captured.captures["attention"]
    sampling = fz.model.get_model_object("model_sampling")
    sample_sigmas = comfy.samplers.calculate_sigmas(sampling, "ddim_uniform", STEPS)
    levels = [store.level(float(s)) for s in sample_sigmas[:-1]]
    assert levels == [3, 2, 1] and [store.step_of(j) for j in levels] == [0, 1, 2]
    torch.testing.assert_close(fz.captured.sigmas[levels], sample_sigmas[:-1].float())
    # The fused model's calls, recorded during a real edit, only ever read those levels in that order.
    fused, plan = fz.fatezero.attention_fusion(fz.model, fz.captured, fz.clip, SOURCE, EDIT, "")
    seen = []
    original = plan.step
    plan.step = lambda extra: seen.append(original(extra)) or seen[-1]
    fz.edit(fused, fz.captured.latents[-1])
    assert sorted(set(seen), reverse=True) == [(3, 0), (2, 1), (1, 2)]
    with pytest.raises(ValueError, match="same step count as VE DDIM Invert"):
        fz.edit(fused, fz.captured.latents[-1], steps=STEPS + 2)


def test_windows_zero_touch_nothing_and_full_windows_change_the_edit(fz):
    start = fz.captured.latents[-1]
    plain = fz.edit(fz.model, start)
    off, _ = fz.fatezero.attention_fusion(fz.model, fz.captured, fz.clip, SOURCE, EDIT, "", self_replace=0.0,
                                          cross_replace=0.0)
    torch.testing.assert_close(fz.edit(off, start), plain, rtol=1e-5, atol=1e-5)
    for self_replace, cross_replace in ((1.0, 0.0), (0.0, 1.0)):
        on, _ = fz.fatezero.attention_fusion(fz.model, fz.captured, fz.clip, SOURCE, EDIT, "",
                                             self_replace=self_replace, cross_replace=cross_replace)
        assert (fz.edit(on, start) - plain).abs().max() > 1e-4


def test_self_fusion_uses_source_queries_keys_and_the_cross_frame_key_set(fz):
    """In the window, the conditional chunk attends with the source Q and K over the middle frame's keys and
    its own values; the unconditional chunk and steps after the window are the plain cross-frame attention."""
    from comfy.ldm.modules.attention import optimized_attention

    store = fz.captured.captures["attention"]
    _, plan = fz.fatezero.attention_fusion(fz.model, fz.captured, fz.clip, SOURCE, EDIT, "", self_replace=0.5)
    key = ("input", 3, 0)
    cross_frame = fz.sparse_causal.CrossFrameAttentionPatch("middle_frame", 1e9, 0.0)
    patch = fz.fatezero.SelfAttentionFusion(plan, key, cross_frame)
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2 * FRAMES, 16, 640, generator=g) for _ in range(3))

    def options(level):
        return {"n_heads": 8, "cond_or_uncond": [1, 0], "sigmas": fz.captured.sigmas[level:level + 1]}

    out = patch(q, k, v, options(3))  # step 0 < int(3 * 0.5)
    q_src, k_src = (store.read(kind, key, 3).float() for kind in ("queries", "keys"))
    mid = (FRAMES - 1) // 2
    for f in range(FRAMES):
        expected = optimized_attention(q_src[f:f + 1], k_src[mid:mid + 1], v[FRAMES + mid:FRAMES + mid + 1], 8)
        torch.testing.assert_close(out[FRAMES + f], expected[0], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out[:FRAMES], cross_frame(q, k, v, options(3))[:FRAMES])
    torch.testing.assert_close(patch(q, k, v, options(2)), cross_frame(q, k, v, options(2)))  # step 1: after


def test_prompt_to_prompt_alignment_on_real_tokenizations(fz):
    from video_edit.kernels.fatezero import CrossAttentionEdit

    tokens = fz.fatezero.prompt_tokens
    source, red = tokens(fz.clip, SOURCE, "source_prompt"), tokens(fz.clip, EDIT, "edit_prompt")
    assert source.ids == [49406, 320, 3467, 11286, 49407] and source.positions_of("jeep") == [3]
    replace = CrossAttentionEdit.for_prompts(source, red, {"red": 2.0})
    assert replace.replace is not None and torch.equal(replace.replace, torch.eye(77))  # one token for one
    assert replace.equalizer[2] == 2.0 and replace.equalizer.sum() == 78.0
    minivan = tokens(fz.clip, "a silver minivan", "edit_prompt")  # "minivan" is two CLIP tokens
    spread = CrossAttentionEdit.for_prompts(source, minivan, {}).replace
    assert spread[3, 3] == spread[3, 4] == 0.5
    refine = CrossAttentionEdit.for_prompts(tokens(fz.clip, "a jeep", "source_prompt"), red, {})
    assert refine.replace is None
    assert refine.mapper[:5].tolist() == [0, 1, 0, 2, 3] and refine.alphas[:5].tolist() == [1, 1, 0, 1, 1]


def test_threshold_2_keeps_the_source_and_the_mask_has_f_frames(fz, model_state):
    """Mask all 0, every step blended: each step lands on the inversion latent. Official (LatentBlend): the stored
    DDPM latent one level noisier than the step's result, so the last step gives level 1's (latents_store[0]);
    'same level' gives back the source clip itself."""
    before = model_state(fz.model)
    fused, plan = fz.fatezero.attention_fusion(fz.model, fz.captured, fz.clip, SOURCE, EDIT, "jeep",
                                               mask_threshold=2.0, blend_start=0.0, blend_end=2.0)
    out = fz.edit(fused, fz.captured.noisiest)
    level_1 = fz.captured.latents[1] / (1 + float(fz.captured.sigmas[1]) ** 2) ** 0.5
    torch.testing.assert_close(out, level_1, rtol=1e-4, atol=1e-4)
    same, _ = fz.fatezero.attention_fusion(fz.model, fz.captured, fz.clip, SOURCE, EDIT, "jeep", mask_threshold=2.0,
                                           blend_start=0.0, blend_end=2.0, blend_source="same level")
    torch.testing.assert_close(fz.edit(same, fz.captured.noisiest), fz.latent["samples"], rtol=1e-4, atol=1e-4)
    assert (out - fz.latent["samples"]).abs().max() > 1e-2
    assert (fz.edit(fz.model, fz.captured.noisiest) - out).abs().max() > 1e-3
    assert plan.preview_mask().shape == (FRAMES, 8 * H, 8 * W) and plan.preview_mask().eq(0).all()
    assert model_state(fz.model) == before


def test_a_fixed_point_inversion_serves_fatezero(fz):
    """Maps captured during fixed-point inversion (the last refinement's) fuse; blending the same level everywhere
    gives back the clip exactly, as it starts at sigma 0."""
    captured = fz.inversion.ddim_invert(fz.model, fz.latent, fz.encode(SOURCE), STEPS, fz.capture(),
                                        method="fixed_point", iterations=2)
    same, _ = fz.fatezero.attention_fusion(fz.model, captured, fz.clip, SOURCE, EDIT, "jeep", mask_threshold=2.0,
                                           blend_start=0.0, blend_end=2.0, blend_source="same level")
    torch.testing.assert_close(fz.edit(same, captured.noisiest), fz.latent["samples"], rtol=1e-4, atol=1e-4)
    fused, _ = fz.fatezero.attention_fusion(fz.model, captured, fz.clip, SOURCE, EDIT, "jeep")
    assert torch.isfinite(fz.edit(fused, captured.noisiest)).all()


def test_official_blend_takes_the_noisier_ddpm_latent(fz):
    """Blending after the first step only, with an all-0 mask, puts the sampler on the noisiest level's DDPM
    latent written at the second level: x = x_vp(sigma_3) / sqrt(alpha(sigma_2))."""
    import comfy.sample

    fused, _ = fz.fatezero.attention_fusion(fz.model, fz.captured, fz.clip, SOURCE, EDIT, "jeep", mask_threshold=2.0,
                                            blend_start=0.0, blend_end=0.7)  # int(3 * 0.7) = 2: step 0 only
    seen = {}
    start = fz.captured.noisiest
    comfy.sample.sample(fused, torch.zeros_like(start), STEPS, 7.5, "ddim", "ddim_uniform", fz.encode(EDIT),
                        fz.encode(""), start, disable_noise=True, disable_pbar=True, seed=0,
                        callback=lambda step, x0, x, total: seen.setdefault(step, x.clone()))
    sigma_3, sigma_2 = (float(fz.captured.sigmas[k]) for k in (3, 2))
    expected = 0.18215 * fz.captured.latents[3] * ((1 + sigma_2 ** 2) / (1 + sigma_3 ** 2)) ** 0.5
    torch.testing.assert_close(seen[1], expected, rtol=1e-4, atol=1e-5)


def test_the_node_returns_a_model_and_an_f_frame_mask(fz):
    from comfy_api.latest import io

    output = fz.fatezero.AttentionFusion.execute(fz.model, fz.captured, fz.clip, SOURCE, EDIT, "jeep", 0.8, 0.8, 0.3,
                                                 "", 0.0, 0.8, "latents")
    model, mask = output.result
    assert isinstance(output, io.NodeOutput) and model is not fz.model
    assert mask.shape == (FRAMES, 8 * H, 8 * W) and set(mask.unique().tolist()) <= {0.0, 1.0} and mask.sum() > 0
    assert mask.flatten(1).amax(1).eq(1).all()  # each frame's maximum passes any threshold below 1


def test_fusion_composes_with_sparse_causal_modes(fz):
    for mode in ("middle_frame", "sparse_causal"):
        model = fz.sparse_causal.with_cross_frame_attention(fz.model, mode)
        inv = fz.inversion.ddim_invert(model, fz.latent, fz.encode(SOURCE), 2, fz.capture())
        fused, _ = fz.fatezero.attention_fusion(model, inv, fz.clip, SOURCE, EDIT, "jeep", blend_start=0.0)
        inner = fused.model_options["transformer_options"]["patches_replace"]["attn1"][("input", 1, 0)].inner
        assert isinstance(inner, fz.sparse_causal.CrossFrameAttentionPatch) and inner.mode == mode
        out = fz.edit(fused, inv.latents[-1], steps=2)
        assert out.shape == (FRAMES, 4, H, W) and torch.isfinite(out).all()


def test_bad_inputs_fail_with_clear_messages(fz):
    fuse = fz.fatezero.attention_fusion
    with pytest.raises(ValueError, match="blend_words: 'car' is in neither the source prompt 'a silver jeep' nor"):
        fuse(fz.model, fz.captured, fz.clip, SOURCE, EDIT, "jeep, car")
    with pytest.raises(ValueError, match="self-attention blending uses the source prompt's words"):
        fuse(fz.model, fz.captured, fz.clip, SOURCE, EDIT, "red", blend="both")
    with pytest.raises(ValueError, match="edit_prompt: .* tokens; at most 75 fit"):
        fuse(fz.model, fz.captured, fz.clip, SOURCE, " ".join(["jeep"] * 80), "jeep")
    plain = fz.inversion.ddim_invert(fz.model, fz.latent, fz.encode(SOURCE), STEPS)
    with pytest.raises(ValueError, match="inversion: it holds no attention maps.*attention_capture"):
        fuse(fz.model, plain, fz.clip, SOURCE, EDIT, "jeep")
    with pytest.raises(MemoryError, match="attention_capture: the maps need .* Lower steps.*max_query_tokens"):
        fz.inversion.ddim_invert(fz.model, fz.latent, fz.encode(SOURCE), STEPS,
                                 fz.capture(memory_limit_gb=1e-4))
    with pytest.raises(ValueError, match="reweight: 'red=2' is not 'word:value'"):
        fuse(fz.model, fz.captured, fz.clip, SOURCE, EDIT, "jeep", reweight="red=2")


def official_mask(layer_maps, positions, size, threshold):
    """FateZero's SpatialBlender.get_mask for one prompt, written after the official code: the layers' maps
    ``(F, heads, n, 77)`` concatenated on the heads axis, times the word mask, summed over words, mean over
    heads x layers, 3x3 max-pool, nearest resize, per-frame max normalisation, ``> threshold``."""
    import torch.nn.functional as F
    from einops import rearrange

    grid = int(layer_maps[0].shape[2] ** 0.5)
    maps = torch.cat([rearrange(m.double(), "c h (rh rw) w -> h c rh rw w", rh=grid) for m in layer_maps])
    alpha = torch.zeros(77, dtype=torch.float64)
    alpha[positions] = 1
    maps = (maps * alpha).sum(-1).mean(0)[None]  # 1, F, rh, rw
    maps = F.interpolate(F.max_pool2d(maps, 3, 1, 1), size=size)
    maps = maps / maps.amax(-2, keepdim=True).amax(-1, keepdim=True)
    return maps.gt(threshold)[0]


def test_latent_mask_is_the_source_mask_or_the_edit_words_mask_summed_over_steps(fz):
    """"jeep car" on "a silver jeep" -> "a red car": the source mask of "jeep" from the inversion maps of the
    step, OR the mask of "car" from the editing cross-attention summed over the steps so far (§4.3.6). The random
    tiny model's maps are nearly flat, so a high threshold gives masks that are not all ones."""
    store = fz.captured.captures["attention"]
    fused, plan = fz.fatezero.attention_fusion(fz.model, fz.captured, fz.clip, SOURCE, "a red car", "jeep car",
                                               cross_replace=0.5, mask_threshold=0.95, blend_start=0.0, blend_end=2.0)
    assert plan.source_positions == [3] and plan.edit_positions == [3]
    keys = [b.key for b in plan.mask_blocks]
    assert set(keys) == {("input", 1, 0), ("output", 2, 0), ("output", 3, 0)}  # 8x8 here: nearest to 16x16
    recorded, used = [], []
    record, latent_mask = plan.record_edit_attention, plan.latent_mask
    plan.record_edit_attention = lambda key, probs, rows: recorded.append((key, probs.clone())) or record(key, probs,
                                                                                                          rows)
    plan.latent_mask = lambda level, size: used.append((level, latent_mask(level, size))) or used[-1][1]
    fz.edit(fused, fz.captured.latents[-1])
    assert [level for level, _ in used] == [3, 2, 1] and len(recorded) == STEPS * len(keys)
    target_sum = {key: 0 for key in keys}
    some_edit_only = False
    for step, (level, mask) in enumerate(used):
        for key, probs in recorded[step * len(keys):(step + 1) * len(keys)]:
            target_sum[key] = target_sum[key] + probs.double()
        source = official_mask([store.read("cross", k, level) for k in keys], [3], (H, W), 0.95)
        target = official_mask([target_sum[k] for k in keys], [3], (H, W), 0.95)
        assert torch.equal(mask.bool(), source | target)
        some_edit_only |= bool((target & ~source).any())
    assert some_edit_only  # the edit words' mask adds area the source mask does not cover


def test_self_attention_blend_keeps_the_edited_attention_inside_the_source_mask(fz):
    """Inside the self window, query tokens where the source mask is 1 take the edited self-attention, the rest
    the source's (§4.3.5); the unconditional chunk is plain attention."""
    from comfy.ldm.modules.attention import optimized_attention

    store = fz.captured.captures["attention"]
    _, plan = fz.fatezero.attention_fusion(fz.model, fz.captured, fz.clip, SOURCE, EDIT, "jeep", self_replace=1.0,
                                           mask_threshold=0.95, blend="self-attention")
    key, level = ("input", 1, 0), 3
    patch = fz.fatezero.SelfAttentionFusion(plan, key)
    g = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(2 * FRAMES, 64, 320, generator=g) for _ in range(3))
    out = patch(q, k, v, {"n_heads": 8, "cond_or_uncond": [1, 0], "sigmas": fz.captured.sigmas[level:level + 1]})
    mask = official_mask([store.read("cross", b.key, level) for b in plan.mask_blocks], [3], (8, 8), 0.95)
    mask = mask.flatten(1)  # F, tokens
    assert 0 < mask.float().mean() < 1
    cond = slice(FRAMES, 2 * FRAMES)
    edited = optimized_attention(q[cond], k[cond], v[cond], 8)
    source = optimized_attention(store.read("queries", key, level).float(), store.read("keys", key, level).float(),
                                 v[cond], 8)
    torch.testing.assert_close(out[cond][mask], edited[mask], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out[cond][~mask], source[~mask], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out[:FRAMES], optimized_attention(q[:FRAMES], k[:FRAMES], v[:FRAMES], 8))


def test_self_attention_blend_thresholds_2_and_0_are_pure_source_and_pure_edit(fz):
    start = fz.captured.latents[-1]

    def edit(blend_words, threshold, self_replace, blend):
        fused, plan = fz.fatezero.attention_fusion(fz.model, fz.captured, fz.clip, SOURCE, EDIT, blend_words,
                                                   self_replace=self_replace, mask_threshold=threshold, blend=blend)
        return fz.edit(fused, start), plan

    replaced, _ = edit("", 0.3, 1.0, "latents")
    unreplaced, _ = edit("", 0.3, 0.0, "latents")
    assert (replaced - unreplaced).abs().max() > 1e-4
    all_source, _ = edit("jeep", 2.0, 1.0, "self-attention")
    torch.testing.assert_close(all_source, replaced, rtol=1e-5, atol=1e-5)
    all_edit, plan = edit("jeep", 0.0, 1.0, "self-attention")
    assert all(plan.source_mask(level, (b.height, b.width)).eq(1).all()
               for level in (1, 2, 3) for b in plan.store.blocks.values())
    torch.testing.assert_close(all_edit, unreplaced, rtol=1e-5, atol=1e-5)


def test_word_swap_replace_is_the_default_and_refine_is_a_choice(fz):
    """Official: replace when is_replace_controller (default true) and the prompts have as many words; the
    attribute and style configs set it false and refine."""
    _, replace = fz.fatezero.attention_fusion(fz.model, fz.captured, fz.clip, SOURCE, EDIT, "")
    _, refine = fz.fatezero.attention_fusion(fz.model, fz.captured, fz.clip, SOURCE, EDIT, "", word_swap="refine")
    assert replace.edit.replace is not None and refine.edit.replace is None
    edited = [fz.edit(fz.fatezero.attention_fusion(fz.model, fz.captured, fz.clip, SOURCE, EDIT, "",
                                                   word_swap=swap)[0], fz.captured.latents[-1])
              for swap in ("replace", "refine")]
    assert (edited[0] - edited[1]).abs().max() > 1e-4
    with pytest.raises(ValueError, match="word_swap: 'swap' is not one of replace, refine"):
        fz.fatezero.attention_fusion(fz.model, fz.captured, fz.clip, SOURCE, EDIT, "", word_swap="swap")
