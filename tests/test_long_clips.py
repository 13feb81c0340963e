"""Long clips (issue 15): VE Context Windows on the tiny SD1.5 through ComfyUI's real sampler stack; windows, blend
weights and references of kernels/windows.py."""

from types import SimpleNamespace

import pytest
import torch

H = W = 8


# ------------------------------------------------------------------------------------------------------ kernels


def test_windows_cover_the_clip_with_fixed_length_and_overlap():
    from video_edit.kernels.windows import frame_windows, window_weights

    assert frame_windows(5, 8, 2) == [[0, 1, 2, 3, 4]]
    windows = frame_windows(20, 8, 2)
    assert [w[0] for w in windows] == [0, 6, 12]
    assert [len(w) for w in windows] == [8, 8, 8] and all(w == list(range(w[0], w[-1] + 1)) for w in windows)
    assert sorted({f for w in windows for f in w}) == list(range(20))
    assert frame_windows(21, 8, 2)[-1] == [18, 19, 20]  # the last window ends on the last frame, overlapping by 2
    assert frame_windows(22, 8, 2)[-1] == [18, 19, 20, 21]
    for bad in ((20, 8, 8), (20, 0, 0), (20, 8, -1)):
        with pytest.raises(ValueError):
            frame_windows(*bad)
    weights = [window_weights(w, 20, 2) for w in windows]
    assert torch.allclose(weights[0], torch.tensor([1.0] * 6 + [2 / 3, 1 / 3]))
    assert torch.allclose(weights[1], torch.tensor([1 / 3, 2 / 3, 1, 1, 1, 1, 2 / 3, 1 / 3]))
    assert weights[2].tolist()[-1] == 1.0
    total = torch.zeros(20)
    for w, weight in zip(windows, weights):
        total[w] += weight
    assert (total > 0).all()


def test_window_references_borrow_the_anchor_and_stay_inside_the_window():
    from video_edit.kernels.windows import anchor_frames, window_references

    assert anchor_frames(9, "sparse_causal") == [0] and anchor_frames(9, "middle_frame") == [4]
    assert anchor_frames(9, "full") == []
    # frames 6..9 of 10; frame 0 borrowed (row 4): frame 6's previous frame (5) is outside, so it sees itself
    assert window_references([6, 7, 8, 9], 10, "sparse_causal", [0]).tolist() == [[4, 0], [4, 0], [4, 1], [4, 2]]
    assert window_references([0, 1, 2], 10, "sparse_causal", []).tolist() == [[0, 0], [0, 0], [0, 1]]
    assert window_references([6, 7], 10, "first_frame", []).tolist() == [[0], [1]]  # nothing to borrow: itself
    assert window_references([0, 1], 10, "middle_frame", [4]).tolist() == [[2], [2]]


# ------------------------------------------------------------------------------------------------ through ComfyUI


@pytest.fixture(scope="module")
def long(sd15, encode, denoise):
    from video_edit.nodes import context_windows, sparse_causal
    from video_edit.nodes.shared import video_unet

    base = sd15[0]
    specs = video_unet.temporal_layer_specs(base.model.diffusion_model)
    generator = torch.Generator().manual_seed(3)
    state = {name: 0.2 * torch.randn(tensor.shape, generator=generator)
             for name, tensor in video_unet.TemporalLayers(specs).state_dict().items()}
    cond = encode("a man is skiing")
    return SimpleNamespace(
        base=base, cond=cond, denoise=lambda m, x, **kw: denoise(m, x, cond, **kw),
        windows=context_windows.with_context_windows, cross_frame=sparse_causal.with_cross_frame_attention,
        inflated=video_unet.inflate(base, temporal_state=state, frame_groupnorm=True))


def moving_clip(frames: int, seed: int = 0) -> torch.Tensor:
    """A latent texture panning one pixel per frame, plus a little per-frame noise."""
    generator = torch.Generator().manual_seed(seed)
    texture = torch.randn(1, 4, H, W + frames, generator=generator)
    clip = torch.cat([texture[..., f:f + W] for f in range(frames)])
    return clip + 0.1 * torch.randn(clip.shape, generator=generator)


def test_identical_frames_edited_in_windows_equal_the_clip_at_once(long):
    """Tune-A-Video's model (trained-like temporal layers, frame GroupNorm, sparse-causal) and FateZero's
    middle-frame anchor: a clip of 14 identical frames in windows of 4 gives what the whole clip gives."""
    clip = moving_clip(1).repeat(14, 1, 1, 1)
    for mode in ("sparse_causal", "middle_frame"):
        model = long.cross_frame(long.inflated, mode)
        whole = long.denoise(model, clip)
        windowed = long.denoise(long.windows(model, 4, 1), clip)
        torch.testing.assert_close(windowed, whole, rtol=1e-4, atol=1e-4)
        assert (whole - long.denoise(long.base, clip)).abs().max() > 1e-3  # the temporal layers do act


def test_inversion_and_edit_in_windows_equal_the_clip_at_once_on_identical_frames(long):
    """VE DDIM Invert and the edit's sampler both run window by window under VE Context Windows."""
    from benchmarks.inversion_round_trip import sample_back
    from video_edit.nodes.inversion import ddim_invert

    clip = moving_clip(1).repeat(10, 1, 1, 1)
    model = long.cross_frame(long.inflated, "sparse_causal")
    edits = []
    for subject in (model, long.windows(model, 4, 1)):
        noisy = ddim_invert(subject, {"samples": clip}, long.cond, 3).noisiest
        edits.append((noisy, sample_back(subject, noisy, long.cond, 3)))
    for whole, windowed in zip(*edits):
        torch.testing.assert_close(windowed, whole, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("mode", ["first_frame", "middle_frame"])
def test_windows_keep_the_global_anchor_exactly(long, mode):
    """Without temporal layers every frame depends only on itself and the anchor: windows change nothing, on a
    moving clip, although most windows do not hold the anchor."""
    clip = moving_clip(13)
    model = long.cross_frame(long.base, mode)
    whole = long.denoise(model, clip, cfg=2.0, negative=long.cond)
    windowed = long.denoise(long.windows(model, 4, 1), clip, cfg=2.0, negative=long.cond)
    torch.testing.assert_close(windowed, whole, rtol=1e-4, atol=1e-4)
    local = clip.clone()
    local[9] = 0  # a frame that is not the anchor changes only itself
    changed = (long.denoise(long.windows(model, 4, 1), local) - long.denoise(long.windows(model, 4, 1), clip))
    assert [f for f in range(13) if changed[f].abs().max() > 1e-5] == [9]


def test_sparse_causal_windows_attend_to_the_clip_first_frame(long):
    clip = moving_clip(12)
    model = long.windows(long.cross_frame(long.base, "sparse_causal"), 4, 0)
    out = long.denoise(model, clip)
    changed = clip.clone()
    changed[0] += 1.0
    moved = long.denoise(model, changed)
    assert all((moved[f] - out[f]).abs().max() > 1e-4 for f in (4, 8, 11))  # later windows read frame 0


def test_moving_clip_shows_no_step_at_window_seams(long):
    """Frame-to-frame change at the frames where one window hands over to the next is no larger than the change
    between frames inside the windows (Tune-A-Video's model, windows of 6 overlapping by 2)."""
    from video_edit.kernels.windows import frame_windows

    clip = moving_clip(22)
    model = long.windows(long.cross_frame(long.inflated, "sparse_causal"), 6, 2)
    out = long.denoise(model, clip)
    steps = (out[1:] - out[:-1]).abs().mean(dim=(1, 2, 3))
    seams = {w[0] - 1 for w in frame_windows(22, 6, 2)[1:]} | {w[0] + 1 for w in frame_windows(22, 6, 2)[1:]}
    inside = [float(steps[f]) for f in range(21) if f not in seams]
    assert max(float(steps[f]) for f in seams) <= 1.2 * max(inside), (steps, seams)


def test_per_frame_controlnet_hints_follow_the_window(long, tiny_models):
    """Frames are independent without cross-frame attention: windows must give each frame its own hint."""
    import comfy.controlnet
    import comfy.sample
    import comfy.samplers
    import nodes

    control_net = comfy.controlnet.load_controlnet(str(tiny_models["controlnet"]))
    hints = torch.rand(10, 64, 64, 3, generator=torch.Generator().manual_seed(5))
    positive, negative = nodes.ControlNetApplyAdvanced().apply_controlnet(long.cond, long.cond, control_net, hints,
                                                                          1.0, 0.0, 1.0)
    clip = moving_clip(10)

    def sample(model):
        return comfy.sample.sample_custom(model, torch.zeros_like(clip), 1.0, comfy.samplers.sampler_object("euler"),
                                          torch.tensor([4.0, 0.0]), positive, negative, clip, disable_pbar=True)

    torch.testing.assert_close(sample(long.windows(long.base, 4, 1)), sample(long.base), rtol=1e-4, atol=1e-4)


def test_context_windows_leave_the_input_model_alone(long, model_state):
    before = model_state(long.base)
    long.windows(long.base, 4, 1)
    assert model_state(long.base) == before


def test_motion_lora_generation_in_windows(long):
    """MotionDirector's generator (inflated UNet with a temporal LoRA) samples a clip longer than its windows: on
    identical frames as at once, and the LoRA acts."""
    from video_edit.kernels.lora import lora_file_tensors
    from video_edit.nodes import motion_lora_io

    generator = torch.Generator().manual_seed(7)
    shapes = motion_lora_io.temporal_lora_shapes(long.inflated)
    temporal = lora_file_tensors({path: (0.5 * torch.randn(out, 4, generator=generator),
                                         torch.randn(4, inp, generator=generator))
                                  for path, (out, inp) in shapes.items()})
    model = long.cross_frame(motion_lora_io.apply_motion_lora(long.inflated, None, 0.0, temporal, 1.0),
                             "sparse_causal")
    noise = 4.0 * moving_clip(1, seed=2).repeat(10, 1, 1, 1)
    whole = long.denoise(model, noise)
    torch.testing.assert_close(long.denoise(long.windows(model, 4, 1), noise), whole, rtol=1e-4, atol=1e-4)
    assert (whole - long.denoise(long.cross_frame(long.inflated, "sparse_causal"), noise)).abs().max() > 1e-3


# ------------------------------------------------------------------------------------------- TokenFlow in passes


def test_propagation_of_a_run_of_frames_equals_those_rows_of_the_whole_clip():
    from video_edit.kernels.tokenflow import propagate

    generator = torch.Generator().manual_seed(0)
    frames, chunk, tokens = 11, 3, 6
    source = torch.randn(frames, tokens, 8, generator=generator)
    keyframe_tokens = torch.randn(4, tokens, 8, generator=generator)
    keyframe_outputs = torch.randn(2 * 4, tokens, 5, generator=generator)
    whole = propagate(source, keyframe_tokens, keyframe_outputs, chunk).unflatten(0, (2, frames))
    for first_chunk, first_frame in ((0, 0), (0, 2), (1, 6), (2, 9)):
        part = propagate(source[first_frame:], keyframe_tokens[first_chunk:],
                         keyframe_outputs.unflatten(0, (2, 4))[:, first_chunk:].flatten(0, 1), chunk,
                         first_frame, first_chunk).unflatten(0, (2, frames - first_frame))
        torch.testing.assert_close(part, whole[:, first_frame:], rtol=0, atol=0)


@pytest.fixture(scope="module")
def tokenflow_long(sd15, encode):
    import comfy.sample
    from video_edit.nodes import inversion, tokenflow

    source, edit, negative = encode("a man is skiing"), encode("a marble statue skiing"), encode("blurry")

    def run(clip, **options):
        inverted = inversion.ddim_invert(sd15[0], {"samples": clip}, source, 3)
        model, start = tokenflow.tokenflow(sd15[0], inverted, source, keyframe_chunk_size=2, **options)
        return comfy.sample.sample(model, torch.zeros_like(clip), 3, 7.5, "ddim", "ddim_uniform", edit, negative,
                                   start["samples"], disable_noise=True, seed=0, disable_pbar=True)

    return run


def test_tokenflow_in_passes_equals_the_clip_at_once_on_identical_frames(tokenflow_long):
    """Equal in exact arithmetic. In float32 the passes' smaller batches round differently from the whole clip's,
    and 3 steps at cfg 7.5 carry that to 5.2e-4 on some CPUs (an AMD EPYC, 2026-12-06; under 1e-4 on others), on
    outputs up to 12. The bound, 5e-3, is far below what a pass's wrong injection does: without the attention
    injection the output moves by 0.12, without the feature injection by 3.4 (measured on this clip)."""
    clip = moving_clip(1).repeat(14, 1, 1, 1)
    torch.testing.assert_close(tokenflow_long(clip, keyframes_per_pass=3), tokenflow_long(clip), rtol=0, atol=5e-3)


def test_tokenflow_passes_on_a_moving_clip(tokenflow_long):
    """One pass holding every keyframe is the official all-at-once edit; passes of 2 keyframes show no step at the
    frames where one pass hands over to the next."""
    clip = moving_clip(16)
    whole = tokenflow_long(clip)
    torch.testing.assert_close(tokenflow_long(clip, keyframes_per_pass=8), whole, rtol=0, atol=0)
    passes = tokenflow_long(clip, keyframes_per_pass=2)  # passes of frames 0-3, 4-7, 8-11, 12-15
    assert (passes - whole).abs().max() > 1e-4
    steps = (passes[1:] - passes[:-1]).abs().mean(dim=(1, 2, 3))
    seams = [3, 7, 11]
    assert max(float(steps[f]) for f in seams) <= 1.2 * max(float(steps[f]) for f in range(15) if f not in seams)


def test_tokenflow_refuses_a_model_with_context_windows(sd15, encode):
    import comfy.sample
    from video_edit.nodes import context_windows, inversion, tokenflow

    source, clip = encode("a man is skiing"), moving_clip(6)
    inverted = inversion.ddim_invert(sd15[0], {"samples": clip}, source, 2)
    model, start = tokenflow.tokenflow(context_windows.with_context_windows(sd15[0], 4, 1), inverted, source,
                                       keyframe_chunk_size=2)
    with pytest.raises(ValueError, match="streams long clips itself.*keyframes_per_pass"):
        comfy.sample.sample(model, torch.zeros_like(clip), 2, 1.0, "ddim", "ddim_uniform", source, source,
                            start["samples"], disable_noise=True, seed=0, disable_pbar=True)


# --------------------------------------------------------------------------------------------- FateZero in windows


def fatezero_edit(model, clip_model, encode, clip, blend):
    """Capture while inverting, then fuse while editing, both with ``model`` (3 steps, CFG 7.5)."""
    import comfy.sample
    from video_edit.nodes import fatezero, fatezero_capture, inversion

    inverted = inversion.ddim_invert(model, {"samples": clip}, encode("a silver jeep"), 3,
                                     fatezero_capture.AttentionCapture())
    fused, plan = fatezero.attention_fusion(model, inverted, clip_model, "a silver jeep", "a red jeep", "jeep",
                                            self_replace=1.0, mask_threshold=0.5, blend=blend, blend_end=2.0)
    start = inverted.latents[-1]
    edited = comfy.sample.sample(fused, torch.zeros_like(start), 3, 7.5, "ddim", "ddim_uniform", encode("a red jeep"),
                                 encode(""), start, disable_noise=True, disable_pbar=True, seed=0)
    return edited, plan


@pytest.mark.parametrize("blend", ["latents", "both"])
def test_fatezero_in_windows_equals_the_clip_at_once(long, sd15, encode, blend):
    """FateZero's middle-frame anchor without temporal layers: each frame depends on itself and the anchor, so
    capturing and fusing window by window (most windows borrow the anchor) edits a moving clip exactly as at once:
    the stored maps, the blend masks and the edit words' mask are assembled frame by frame."""
    clip = moving_clip(11)
    model = long.cross_frame(long.base, "middle_frame")
    whole, plan = fatezero_edit(model, sd15[1], encode, clip, blend)
    windowed, windowed_plan = fatezero_edit(long.windows(model, 4, 1), sd15[1], encode, clip, blend)
    # The store keeps fp16: float noise between the two runs can round a stored value the other way.
    torch.testing.assert_close(windowed, whole, rtol=1e-3, atol=1e-3)
    for level in (1, 2, 3):
        for key in plan.store.blocks:
            torch.testing.assert_close(windowed_plan.store.read("cross", key, level).float(),
                                       plan.store.read("cross", key, level).float(), rtol=0, atol=2e-3)
    torch.testing.assert_close(windowed_plan.edit_word_total, plan.edit_word_total, rtol=1e-4, atol=1e-5)


def test_attention_store_lives_in_an_unnamed_file_and_reads_back_what_was_written(tmp_path):
    from video_edit.kernels.fatezero import AttentionStore, BlockSpec

    block = BlockSpec(("input", 1, 0), 2, 2, 8, 2)
    store = AttentionStore([block], torch.tensor([0.0, 1.0, 2.0]), frames=5, context=3, directory=str(tmp_path))
    assert list(tmp_path.iterdir()) == []  # nothing with a name: nothing is left behind, whatever happens
    q = torch.randn(5, 4, 8)
    store.put_self(block.key, 2, q, -q)
    store.put_self(block.key, 1, torch.zeros(3, 4, 8), torch.zeros(3, 4, 8), [1, 2, 4])
    torch.testing.assert_close(store.read("queries", block.key, 2), q.half())
    torch.testing.assert_close(store.read("keys", block.key, 2, [3, 4]), -q[3:].half())
    assert store.read("queries", block.key, 1, [1, 2, 4]).abs().max() == 0
