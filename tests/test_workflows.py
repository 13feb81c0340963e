"""Every workflow of workflows/ runs end to end in the real ComfyUI executor, through the demo's own entry point
and cut to the tiny model by the same code as the demo (workflow_graphs.shrink)."""

from pathlib import Path

import cv2
import pytest

from conftest import in_run_order
from workflow_titles import TITLES

ORDERED = in_run_order(TITLES)


def frame_count(path: Path) -> int:
    capture = cv2.VideoCapture(str(path))
    count = 0
    while capture.read()[0]:
        count += 1
    return count


@pytest.mark.parametrize("frames,size,steps", [(2, 64, 1), (4, 64, 2), (8, 128, 10), (24, 512, 50)])
def test_shrink_keeps_every_workflow_consistent(comfy_lib, frames, size, steps):
    """At the tests' sizes and the demo's defaults (8 frames of 128², 10 steps): every clip and batch has the
    frames, an inversion keeps only levels its own steps reach, keyframe chunks and context windows fit the clip.
    (The demo once cut the inversion to 10 steps but kept TokenFlow's keep_steps 50, which ComfyUI refused.)"""
    from workflow_graphs import all_workflows, shrink

    for name, build in all_workflows().items():
        for node in shrink(build(), frames, size, steps).values():
            inputs = {k: v for k, v in node["inputs"].items() if not isinstance(v, list)}
            assert inputs.get("n_frames", frames) == inputs.get("batch_size", frames) == frames, name
            assert inputs.get("width", size) == inputs.get("height", size) == size, name
            assert inputs.get("steps", steps) == steps, name
            assert inputs.get("keep_steps", 0) in (0, steps), name
            assert inputs.get("keyframe_chunk_size", 1) <= max(1, frames // 2), name
            if "context_length" in inputs:
                assert 0 <= inputs["context_overlap"] < inputs["context_length"] <= frames, name


@pytest.mark.parametrize("name", ORDERED)
def test_workflow_runs_from_the_demo(comfy_lib, comfy, demo_settings, workflow_runs, name):
    """The demo's entry point for one workflow (tools/demo.py run_with_producer) on the test server, at the
    smallest settings: it finishes and every video it saves has every frame."""
    from demo import saved_videos

    videos = saved_videos(comfy, workflow_runs[name])
    assert videos, f"{name} saved no video"
    for video in videos:
        assert video.is_file()
        assert frame_count(video) == demo_settings.frames


def test_long_clip_workflow_runs_in_windows_and_passes(comfy, demo_settings):
    """tokenflow_long_clip on 12 frames: the inversion in 4 context windows of up to 4 frames, the edit in 6 passes
    of one keyframe; every saved video has all 12 frames."""
    from dataclasses import replace

    from workflow_graphs import set_inputs

    prompt = replace(demo_settings, frames=12).prompt("tokenflow_long_clip")
    outputs = comfy.run(set_inputs(prompt, context_length=4, context_overlap=1, keyframe_chunk_size=2,
                                   keyframes_per_pass=1))
    videos = [p for p in comfy.output_files(outputs) if p.suffix == ".mp4"]
    assert len(videos) == 2 and all(frame_count(video) == 12 for video in videos)
    log = comfy.log_tail(200_000)
    assert "VE Context Windows: 12 frames in 4 windows of up to 4" in log
    assert "VE TokenFlow: 6 keyframes in 6 passes" in log


def test_animatediff_motion_lora_is_ades_and_moves_its_output(comfy, demo_settings, workflow_runs):
    """motiondirector_animatediff (after motiondirector_animatediff_train, as the demo runs them): the saved temporal
    LoRA is in ADE's folder and format, trained (not all zero), and ADE's Load AnimateDiff LoRA changes the sampled
    latents against strength 0 (compared losslessly: the KSampler's latents saved by core Save Latent)."""
    import copy

    from safetensors.torch import load_file
    from video_edit.nodes.shared.animatediff import ADE_LORA_FOLDER, is_ade_motion_lora
    from workflow_graphs import set_inputs
    from workflow_graphs.animatediff import LORA_NAME

    workflow_runs["motiondirector_animatediff"]  # skipped, with the reason, where ADE is absent
    lora = load_file(comfy.models_dir(ADE_LORA_FOLDER) / f"{LORA_NAME}_00001_temporal.safetensors")
    assert is_ade_motion_lora(lora) and all("temporal" in key for key in lora)
    assert any(tensor.abs().max() > 0 for key, tensor in lora.items() if ".up." in key)
    latents = {}
    for strength in (0.0, 1.0):
        prompt = set_inputs(copy.deepcopy(demo_settings.prompt("motiondirector_animatediff")), strength=strength)
        sampler = next(key for key, node in prompt.items() if node["class_type"] == "KSampler")
        prompt["ade_check_latent"] = {"class_type": "SaveLatent", "inputs": {
            "samples": [sampler, 0], "filename_prefix": f"ade_check/strength_{strength}"}}
        (saved,) = [p for p in comfy.output_files(comfy.run(prompt)) if p.suffix == ".latent"]
        latents[strength] = load_file(saved)["latent_tensor"]
    assert latents[0.0].shape == latents[1.0].shape and not latents[0.0].equal(latents[1.0])
