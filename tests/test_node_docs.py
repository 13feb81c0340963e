"""What the node library and the help panel show, read from a real server's /object_info: the naming scheme, a
tooltip on every input and output, a description on every node, search aliases where ComfyUI has them, and a
node-docs page per node, current (tools/node_docs.py) and served where the frontend asks for it."""

from __future__ import annotations

import re
import urllib.request

import pytest

from conftest import skip_without_packs
from node_docs import PAGES_DIR, pack_nodes, render_all
from node_pictures import PICTURES
from workflow_format import PACK_ID

CATEGORIES = {
    "video_edit/video": {"VE_LoadVideo", "VE_SaveVideo", "VE_CompareVideos", "VE_EditMetrics", "VE_PlotLoss"},
    "video_edit/sampling": {"VE_DDIMInvert", "VE_ContextWindows"},
    "video_edit/tune_a_video": {"VE_InflateUNet", "VE_SparseCausalAttention", "VE_OneShotTune", "VE_SaveTuned",
                                "VE_LoadTuned"},
    "video_edit/tokenflow": {"VE_TokenFlow"},
    "video_edit/fatezero": {"VE_AttentionCaptureConfig", "VE_AttentionFusion"},
    "video_edit/motiondirector": {"VE_MotionClipSet", "VE_TrainMotionDirector", "VE_MotionNoisePrior",
                                  "VE_ApplyMotionLoRA", "VE_SaveMotionLoRA", "VE_LoadMotionLoRA"},
}
# What artists type, and a node each must find (ComfyUI 0.33 searches aliases too).
SEARCHES = {"tune a video": {"VE_InflateUNet", "VE_SparseCausalAttention", "VE_OneShotTune"},
            "dreamix": {"VE_OneShotTune"}, "make your video": {"VE_InflateUNet"}, "ddim inversion": {"VE_DDIMInvert"},
            "motion lora": {"VE_TrainMotionDirector", "VE_LoadMotionLoRA"}, "tokenflow": {"VE_TokenFlow"},
            "fatezero": {"VE_AttentionFusion"}, "motiondirector": {"VE_TrainMotionDirector"}}


@pytest.fixture(scope="module")
def nodes(object_info):
    found = pack_nodes(object_info)
    assert len(found) == sum(len(ids) for ids in CATEGORIES.values())
    return found


def test_names_follow_the_scheme(nodes):
    for node_id, info in nodes.items():
        assert re.fullmatch(r"VE( [A-Z][\w/+-]*)+", info["display_name"]), (node_id, info["display_name"])
        assert node_id in CATEGORIES.get(info["category"], ()), (node_id, info["category"])
        for name in info["output_name"]:
            assert re.fullmatch(r"[a-z][a-z0-9_]*", name), (node_id, name)


def test_every_input_and_output_has_a_tooltip_and_every_node_a_description(nodes):
    display_names = {info["display_name"] for info in nodes.values()}
    for node_id, info in nodes.items():
        assert len(info["description"]) > 40, node_id
        # Nodes named in a description are named as the UI shows them, never by id.
        assert not re.search(r"\bVE_[A-Z]", info["description"]), node_id
        for named in re.findall(r"\bVE(?: [A-Z][\w/+-]*)+", info["description"]):
            assert any(named.startswith(name) for name in display_names), (node_id, named)
        for section in ("required", "optional"):
            for name, spec in (info["input"].get(section) or {}).items():
                assert (spec[1] if len(spec) > 1 else {}).get("tooltip"), (node_id, name)
        tooltips = info.get("output_tooltips") or [None] * len(info["output"])
        assert all(tooltips), (node_id, info["output_name"], tooltips)


def test_search_aliases_where_comfyui_has_them(nodes):
    if not any("search_aliases" in info for info in nodes.values()):  # ComfyUI 0.3.75: none may be sent
        pytest.skip("this ComfyUI has no search aliases")
    for words, expected in SEARCHES.items():
        found = {node_id for node_id, info in nodes.items()
                 if words in (info.get("search_aliases") or []) or words in info["display_name"].lower()}
        assert expected <= found, (words, expected - found)


def test_every_node_has_a_current_docs_page_served_where_the_frontend_asks(comfy, object_info, nodes):
    """(The pages name the AnimateDiff-Evolved nodes of the workflows on it: without ADE here they cannot match.)"""
    skip_without_packs("motiondirector_animatediff")
    pages = render_all(object_info)
    assert set(pages) == {f"{node_id}.md" for node_id in nodes}
    for name, text in pages.items():
        assert (PAGES_DIR / name).read_text() == text, f"{name} is stale: run python tools/node_docs.py"
        for picture in re.findall(r"!\[[^]]*\]\(([^)]+)\)", text):
            assert picture in PICTURES and (PAGES_DIR / picture).is_file(), (name, picture)
    for node_id in ("VE_OneShotTune", "VE_TokenFlow"):  # the frontend's fallback URL for a page without locale
        with urllib.request.urlopen(f"{comfy.url}/extensions/{PACK_ID}/docs/{node_id}.md", timeout=30) as response:
            assert response.read().decode() == pages[f"{node_id}.md"]
