"""The template cards' titles and order: each workflow's file is workflows/<title>.json (the template browser
shows the file's name as the card's title), listed simplest first (docs/web/template_order.js, written from
TITLES by tools/build_workflows.py; tests/test_workflow_cards.py checks it is current). No dependencies: the
demo's argument check (system python) reads it."""

from __future__ import annotations

import json
from pathlib import Path

WORKFLOWS_DIR = Path(__file__).resolve().parents[1] / "workflows"

# Workflow name -> title, simplest first: training-free edits, then tuning, then the workflows that load what
# another one saves (after it). The template browser lists the pack's cards in this order
# (docs/web/template_order.js, written from this table by tools/build_workflows.py). Titles are file names valid
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


def workflow_name(path: Path) -> str:
    """The name of the workflow in ``path`` (a file of workflows/, named by its title)."""
    return next(name for name, title in TITLES.items() if title == path.stem)


TEMPLATE_ORDER_JS = """\
// Written by tools/build_workflows.py from TITLES in tools/workflow_titles.py: edit that table, not this file.
// ComfyUI's server lists a pack's templates in the order its file system returns the files (unsorted on most
// Linux file systems), and the template browser shows them in that order. This wraps api.getWorkflowTemplates,
// calls it, and puts this pack's own list simplest first; other packs' lists and every name stay as they are.
const { api } = window.comfyAPI.api;

const ORDER = %s;
// Served at /extensions/<the pack's folder>/, and the server lists the templates under that folder's name.
const PACK = decodeURIComponent(new URL(import.meta.url).pathname.match(/\\/extensions\\/([^/]+)\\//)[1]);

function rank(name) {
  const i = ORDER.indexOf(name);
  return i === -1 ? ORDER.length : i; // a workflow the artist added to the folder goes last
}

const getWorkflowTemplates = api.getWorkflowTemplates;
if (typeof getWorkflowTemplates === "function") {
  api.getWorkflowTemplates = async function () {
    const templates = await getWorkflowTemplates.apply(this, arguments);
    if (Array.isArray(templates?.[PACK])) templates[PACK].sort((a, b) => rank(a) - rank(b));
    return templates;
  };
}
"""


def template_order_js() -> str:
    """docs/web/template_order.js: the frontend extension that lists the pack's templates in TITLES' order."""
    return TEMPLATE_ORDER_JS % json.dumps(list(TITLES.values()), indent=2)
