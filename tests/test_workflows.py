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
