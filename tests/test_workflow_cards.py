"""What the shipped workflows give an artist before anything runs (tools/build_workflows.py, tools/workflow_cards.py,
tools/workflow_titles.py): a file named by its title, listed in the template browser's order, a current template
card, a Note, the download metadata of the models they name, the pack's sample clip selected (copied into ComfyUI's
input folder at start, never over a file), and stage groups in which no two nodes overlap at the sizes their
previews grow to."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from PIL import Image

from workflow_cards import PREVIEW, STAGES, all_workflows_hash, stage_of, workflow_hash
from workflow_titles import TEMPLATE_ORDER, TITLES, WORKFLOWS_DIR, template_order_json, workflow_file

REPO_ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = [workflow_file(name) for name in TITLES]
SAMPLES = REPO_ROOT / "workflows" / "input"
# Loader node -> the model folder and file types its download metadata may name (AnimateDiff's motion modules are
# published only as pickled .ckpt files).
MODEL_LOADERS = {"CheckpointLoaderSimple": ("checkpoints", (".safetensors",)),
                 "ControlNetLoader": ("controlnet", (".safetensors",)),
                 "ADE_LoadAnimateDiffModel": ("animatediff_models", (".ckpt", ".safetensors"))}
TITLE_BAR = 30  # LiteGraph draws a node's title above its pos


def nodes_of(path: Path) -> list[dict]:
    return json.loads(path.read_text())["nodes"]


def test_every_workflow_has_a_title_and_its_file_and_the_template_order_is_current(comfy_lib):
    """workflows/ holds exactly the titled workflows' files (and their cards), every workflow tools/workflow_graphs
    builds has a title, and docs/web/template_order.json (which template_order.js reads) lists the titles in
    TITLES' order."""
    from workflow_graphs import all_workflows

    assert set(all_workflows()) == set(TITLES)
    assert len({title.lower() for title in TITLES.values()}) == len(TITLES)  # distinct on case-insensitive systems
    assert {p.name for p in WORKFLOWS_DIR.glob("*.json")} == {p.name for p in WORKFLOWS}
    assert {p.name for p in WORKFLOWS_DIR.glob("*.jpg")} == {p.with_suffix(".jpg").name for p in WORKFLOWS}
    assert TEMPLATE_ORDER.read_text() == template_order_json(), \
        f"{TEMPLATE_ORDER.name} is stale: run python tools/build_workflows.py"


@pytest.mark.parametrize("title", TITLES.values())
def test_title_reads_as_words_and_is_a_file_name_valid_everywhere(title):
    """Words (the method first), and only characters every file system and a URL path take as they are (no
    reserved Windows characters, no '%', '#', '?', no leading or trailing space or dot)."""
    assert re.fullmatch(r"[A-Z][A-Za-z0-9 .()-]*[A-Za-z0-9)]", title) and "  " not in title


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_card_is_current(path):
    thumbnail = path.with_suffix(".jpg")
    assert thumbnail.is_file(), f"no card for {path.name}: run python tools/build_workflows.py"
    comment = Image.open(thumbnail).info.get("comment", b"").decode()
    assert comment == workflow_hash(path.read_text()), f"{thumbnail.name} is stale: run tools/build_workflows.py"


@pytest.mark.parametrize("name", ["templates", "after_run"])
def test_readme_screenshot_is_current(name):
    shot = REPO_ROOT / "docs" / "images" / f"{name}.jpg"
    assert f"docs/images/{name}.jpg" in (REPO_ROOT / "README.md").read_text(), f"the README does not show {shot.name}"
    comment = Image.open(shot).info.get("comment", b"").decode()
    assert comment == all_workflows_hash(), \
        f"{shot.name} shows other workflows than workflows/ holds: run python tools/readme_screenshots.py"


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_note_models_and_sample_clip(path):
    nodes = nodes_of(path)
    notes = [node["widgets_values"][0] for node in nodes if node["type"] == "Note"]
    assert len(notes) == 1 and all(part in notes[0] for part in ("Change first:", "What matters:", "Time on a GPU:"))
    for node in nodes:
        if node["type"] in MODEL_LOADERS:
            (model,) = node["properties"]["models"]
            directory, suffixes = MODEL_LOADERS[node["type"]]
            assert model["name"] == node["widgets_values"][0] and model["name"].endswith(suffixes)
            assert model["url"].startswith("https://huggingface.co/") and model["url"].endswith("/" + model["name"])
            assert model["directory"] == directory
        if node["type"] == "VE_LoadVideo":
            assert (SAMPLES / node["widgets_values"][0]).is_file(), node["widgets_values"][0]


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_stage_groups_hold_their_nodes_and_no_nodes_overlap(path):
    workflow = json.loads(path.read_text())
    groups = {group["title"].split(". ", 1)[1]: group["bounding"] for group in workflow["groups"]}
    boxes = []
    for node in workflow["nodes"]:
        x, y = node["pos"]
        w, h = node["size"]
        if node["type"] in PREVIEW:
            assert h >= PREVIEW[node["type"]][1], (node["type"], "no room for its preview")
        box = (x, y - TITLE_BAR, x + w, y + h)
        if node["type"] != "Note":
            gx, gy, gw, gh = groups[STAGES[stage_of(node)]]
            assert gx <= box[0] and box[2] <= gx + gw and gy <= box[1] and box[3] <= gy + gh, node["type"]
        boxes.append((node["type"], box))
    for i, (name_a, a) in enumerate(boxes):
        for name_b, b in boxes[i + 1:]:
            assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1], (path.stem, name_a, name_b)


def test_sample_clips_are_copied_into_the_input_folder_never_over_a_file(comfy_lib, tmp_path, monkeypatch):
    import folder_paths
    from video_edit.nodes import video_io

    monkeypatch.setattr(folder_paths, "get_input_directory", lambda: str(tmp_path))
    (tmp_path / "video_edit_skier.mp4").write_bytes(b"the artist's own file")
    written = video_io.install_sample_clips()
    assert written == [str(tmp_path / "video_edit_skier_depth.mp4")]
    assert (tmp_path / "video_edit_skier.mp4").read_bytes() == b"the artist's own file"
    assert (tmp_path / "video_edit_skier_depth.mp4").read_bytes() == (SAMPLES / "video_edit_skier_depth.mp4").read_bytes()
    assert video_io.install_sample_clips() == []
    assert "video_edit_skier_depth.mp4" in video_io.list_input_videos()
