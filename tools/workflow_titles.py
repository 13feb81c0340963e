"""The template cards' titles and order: each workflow's file is workflows/<title>.json (the template browser
shows the file's name as the card's title), listed simplest first (docs/web/template_order.js reads the order
from TEMPLATE_ORDER, written from TITLES by tools/build_workflows.py; tests/test_workflow_cards.py checks it is
current). No dependencies: the demo's argument check (system python) reads it."""

from __future__ import annotations

import json
from pathlib import Path

WORKFLOWS_DIR = Path(__file__).resolve().parents[1] / "workflows"
TEMPLATE_ORDER = Path(__file__).resolve().parents[1] / "docs" / "web" / "template_order.json"

# Workflow name -> title, simplest first: training-free edits, then tuning, then the workflows that load what
# another one saves (after it). The template browser lists the pack's cards in this order
# (docs/web/template_order.js, from TEMPLATE_ORDER, written from this table). Titles are file names valid
# on every system and in a URL: ASCII letters, digits, spaces, ``-``, ``.`` and parentheses.
TITLES = {
    "tokenflow_edit": "TokenFlow - edit a clip",
    "tokenflow_fast": "TokenFlow - fast recipe",
    "tokenflow_sd21": "TokenFlow - SD 2.1 (official default)",
    "tokenflow_sdxl": "TokenFlow - SDXL at 1024",
    "tokenflow_long_clip": "TokenFlow - long clip in passes",
    "fatezero_edit": "FateZero - edit a clip",
    "fatezero_fast": "FateZero - fast recipe",
    "tune_a_video_edit": "Tune-A-Video - tune and edit a clip",
    "tune_a_video_reuse": "Tune-A-Video - edit again with the tuned model",
    "tune_a_video_fast": "Tune-A-Video - fast edit with the tuned model",
    "tune_a_video_controlnet": "Tune-A-Video - with ControlNet (Canny)",
    "fatezero_shape_edit": "FateZero - shape edit on the tuned model",
    "tokenflow_on_tuned": "TokenFlow - on the tuned model",
    "motiondirector_train": "MotionDirector - learn a motion",
    "motiondirector_generate": "MotionDirector - generate with the motion",
    "make_your_video_depth": "Make-Your-Video - depth-guided with the motion",
    "motiondirector_animatediff_train": "MotionDirector on AnimateDiff - learn a motion",
    "motiondirector_animatediff": "MotionDirector on AnimateDiff - generate with the motion",
}


def workflow_file(name: str) -> Path:
    """workflows/<title>.json, the file of the workflow ``name``."""
    return WORKFLOWS_DIR / f"{TITLES[name]}.json"


def template_order_json() -> str:
    """docs/web/template_order.json: the titles in TITLES' order, which docs/web/template_order.js reads."""
    return json.dumps(list(TITLES.values()), indent=1) + "\n"
