"""Every workflows/*.json runs end to end in the real ComfyUI executor, shrunk to the tiny model."""

import json
from pathlib import Path

import cv2
import pytest


REPO_ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = sorted((REPO_ROOT / "workflows").glob("*.json"))


def produces_model_files(path: Path) -> bool:
    """Workflows that save tuned weights or LoRAs run first: others load what they save."""
    types = {node["type"] for node in json.loads(path.read_text())["nodes"]}
    return any(t.startswith("VE_Save") and t != "VE_SaveVideo" for t in types)


ORDERED = sorted(WORKFLOWS, key=lambda p: (not produces_model_files(p), p.name))


def frame_count(path: Path) -> int:
    capture = cv2.VideoCapture(str(path))
    count = 0
    while capture.read()[0]:
        count += 1
    return count


def test_there_are_workflows():
    assert {"tune_a_video_edit", "tune_a_video_controlnet", "tune_a_video_reuse"} <= {p.stem for p in WORKFLOWS}


@pytest.mark.parametrize("path", ORDERED, ids=lambda p: p.stem)
def test_workflow_runs_end_to_end(comfy, comfy_lib, tiny_workflow_inputs, path):
    """The workflow's API graph (tools/workflow_graphs, which the frontend check ties to the shipped JSON)."""
    from workflow_graphs import all_workflows, set_inputs

    prompt = set_inputs(all_workflows()[path.stem](), **tiny_workflow_inputs)
    outputs = comfy.run(prompt)
    videos = [p for p in comfy.output_files(outputs) if p.suffix in (".mp4", ".gif", ".webp")]
    assert videos, f"{path.name} saved no video: {outputs}"
    for video in videos:
        assert video.is_file()
        assert frame_count(video) == tiny_workflow_inputs["n_frames"]


def test_long_clip_workflow_runs_in_windows_and_passes(comfy, comfy_lib, tiny_workflow_inputs):
    """tokenflow_long_clip on 12 frames: the inversion in 4 context windows of up to 4 frames, the edit in 6 passes
    of one keyframe; every saved video has all 12 frames."""
    from workflow_graphs import all_workflows, set_inputs

    inputs = {**tiny_workflow_inputs, "n_frames": 12, "context_length": 4, "context_overlap": 1,
              "keyframes_per_pass": 1}
    outputs = comfy.run(set_inputs(all_workflows()["tokenflow_long_clip"](), **inputs))
    videos = [p for p in comfy.output_files(outputs) if p.suffix == ".mp4"]
    assert len(videos) == 2 and all(frame_count(video) == 12 for video in videos)
    log = comfy.log_tail(200_000)
    assert "VE Context Windows: 12 frames in 4 windows of up to 4" in log
    assert "VE TokenFlow: 6 keyframes in 6 passes" in log
