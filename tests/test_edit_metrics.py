"""VE_EditMetrics: warp error along the source's optical flow (kernels/metrics.py, OpenCV DIS) and CLIP frame
consistency with a real ComfyUI CLIP vision model (tiny, random weights)."""

import json
import math

import numpy as np
import pytest
import torch
from sample_clip import skier_frame

from video_edit.kernels.metrics import consecutive_cosine, sample_at, unoccluded, warp_errors

FRAMES, SIZE = 8, 96


def skier_clip(frames: int = FRAMES, size: int = SIZE) -> torch.Tensor:
    """The sample clip as an IMAGE batch (RGB in [0, 1])."""
    return torch.from_numpy(np.stack([skier_frame(i, frames, size)[..., ::-1] for i in range(frames)]).copy()) / 255


def test_sampling_along_a_constant_flow_shifts_the_frame():
    image = torch.arange(30.0).view(1, 1, 5, 6)
    flow = torch.zeros(1, 2, 5, 6)
    flow[:, 0] = 1.0  # every pixel looks one to the right
    torch.testing.assert_close(sample_at(image, flow)[..., :-1], image[..., 1:])
    mask = unoccluded(flow, -flow)
    assert mask[..., :-1].all() and not mask[..., -1].any()  # the last column looks outside the frame
    assert not unoccluded(flow, flow)[..., :-1].any()  # a backward flow that does not bring it back: occluded


def test_warp_error_is_zero_for_frames_the_flow_explains():
    g = torch.Generator().manual_seed(0)
    base = torch.rand(1, 3, 12, 16, generator=g)
    frames = torch.cat([base, torch.roll(base, shifts=-2, dims=-1)])  # frame 1 = frame 0 moved 2 pixels left
    forward = torch.zeros(1, 2, 12, 16)
    forward[:, 0] = -2.0
    assert warp_errors(frames, forward, -forward).item() < 1e-12
    assert warp_errors(frames.flip(0), forward, -forward).item() > 1e-2
    torch.testing.assert_close(consecutive_cosine(torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 2.0]])),
                               torch.tensor([1.0, 0.0]))


@pytest.fixture(scope="module")
def metrics(comfy_lib):
    from video_edit.nodes import compare

    return compare


def panning_clip(frames: int = FRAMES, size: int = 96, speed: int = 3) -> torch.Tensor:
    """A camera panning over a smooth random texture, ``speed`` pixels a frame: an IMAGE batch."""
    import cv2

    noise = np.random.default_rng(0).random((size, size + speed * frames, 3)).astype(np.float32)
    texture = cv2.GaussianBlur(noise, (0, 0), 2.0)
    texture = (texture - texture.min()) / (texture.max() - texture.min())
    return torch.from_numpy(np.stack([texture[:, speed * i:speed * i + size] for i in range(frames)]))


def test_warp_error_of_the_clip_itself_its_shuffle_and_a_shifted_copy(metrics):
    source = panning_clip()
    itself = metrics.edit_metrics(source, source)["warp error"]
    shuffled = metrics.edit_metrics(source, source[torch.randperm(FRAMES, generator=torch.Generator().manual_seed(1))])
    shifted = metrics.edit_metrics(source, torch.roll(source, shifts=(2, 3), dims=(1, 2)))  # the whole clip moved
    print(f"warp error: itself {itself.mean():.2e}, shuffled {shuffled['warp error'].mean():.2e}, "
          f"shifted {shifted['warp error'].mean():.2e}")
    assert itself.shape == (FRAMES - 1,) and itself.mean() < 1e-3
    assert shuffled["warp error"].mean() > 10 * itself.mean()
    assert shifted["warp error"].mean() < 2 * itself.mean() + 1e-3  # the source's flow still explains it


def test_the_node_shows_and_plots_its_numbers(metrics, tmp_path):
    import comfy.clip_vision

    config = {"hidden_act": "quick_gelu", "hidden_size": 32, "image_size": 28, "intermediate_size": 64,
              "layer_norm_eps": 1e-5, "model_type": "clip_vision_model", "num_attention_heads": 2,
              "num_channels": 3, "num_hidden_layers": 2, "patch_size": 14, "projection_dim": 16}
    (tmp_path / "tiny_clip_vision.json").write_text(json.dumps(config))
    clip_vision = comfy.clip_vision.ClipVisionModel(str(tmp_path / "tiny_clip_vision.json"))
    g = torch.Generator().manual_seed(0)
    clip_vision.load_sd({k: 0.2 * torch.randn(v.shape, generator=g) for k, v in clip_vision.get_sd().items()})

    source = skier_clip()
    output = metrics.EditMetrics.execute(source, source, clip_vision)
    warp, consistency, plot = output.result
    assert warp == pytest.approx(metrics.edit_metrics(source, source)["warp error"].mean().item())
    assert 0.9 < consistency <= 1.0 + 1e-6  # consecutive frames of a slow clip look alike
    shown = output.ui
    assert shown["text"][0].startswith("warp error: ") and shown["text"][1].startswith("CLIP frame consistency: ")
    assert plot.shape == (1, 2 * 360, 640, 3) and shown["images"]
    warp_only, no_clip, one_plot = metrics.EditMetrics.execute(source, source[:, :64, :64]).result
    assert math.isnan(no_clip) and one_plot.shape == (1, 360, 640, 3) and warp_only < 0.05
    with pytest.raises(ValueError, match="edited: 7 frames for a 8-frame source"):
        metrics.EditMetrics.execute(source, source[:7])
