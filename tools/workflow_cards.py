"""What tools/build_workflows.py adds to a laid-out workflow for the artist: nodes placed in titled groups by stage
(load -> tune / invert -> edit -> save / compare) with room for the previews the nodes grow to, and the template
card's thumbnail (workflows/<title>.jpg), a drawn diagram of those stages that records the hash of the workflow
it was drawn from (tests/test_workflow_cards.py checks it is current)."""

from __future__ import annotations

import hashlib
import json
import re
import textwrap
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from workflow_titles import TITLES, workflow_file

STAGES = ("Load", "Tune / invert", "Edit", "Save / compare")
STAGE_OF = {  # node type -> index in STAGES; every other node is an edit step
    **dict.fromkeys(("CheckpointLoaderSimple", "VE_LoadVideo", "ControlNetLoader", "CLIPTextEncode", "VE_LoadTuned",
                     "VE_LoadMotionLoRA", "CLIPVisionLoader", "ADE_LoadAnimateDiffModel",
                     "ADE_AnimateDiffLoRALoader"), 0),
    **dict.fromkeys(("VAEEncode", "VE_InflateUNet", "VE_SparseCausalAttention", "VE_OneShotTune", "VE_DDIMInvert",
                     "VE_AttentionCaptureConfig", "VE_MotionClipSet", "VE_TrainMotionDirector", "Canny",
                     "VE_ContextWindows", "ADE_ApplyAnimateDiffModelSimple", "ADE_UseEvolvedSampling"), 1),
    **dict.fromkeys(("VE_SaveVideo", "VE_CompareVideos", "VE_EditMetrics", "VE_PlotLoss", "VE_SaveTuned",
                     "VE_SaveMotionLoRA"), 3),
}
# Height a node grows by once its preview shows (a picked clip, a saved video, a plot), and its width then.
PREVIEW = {"VE_LoadVideo": (340, 300), "VE_SaveVideo": (340, 320), "VE_PlotLoss": (420, 340),
           "VE_EditMetrics": (420, 360)}
# The nodes that show their result as text in a box the pack's frontend extension adds (docs/web/result_text.js).
RESULT_TEXT_NODES = set(json.loads(re.search(r"RESULT_TEXT_NODES = (\[[^]]*\])", (
    Path(__file__).resolve().parents[1] / "docs" / "web" / "result_text.js").read_text()).group(1)))
RESULT_TEXT_HEIGHT = 100
STAGE_COLORS = ("#3f789e", "#8a6f3f", "#5f8a3f", "#7a4f8a")
GAP, COLUMN_HEIGHT, GROUP_TITLE = 70, 1450, 50


def stage_of(node: dict) -> int:
    return STAGE_OF.get(node["type"], 2)


def lay_out_by_stage(workflow: dict) -> None:
    """Place the nodes in columns inside one group per stage, left to right, sized for their previews."""
    x = 0
    workflow["groups"] = []
    for stage, title in enumerate(STAGES):
        members = [node for node in workflow["nodes"] if node["type"] != "Note" and stage_of(node) == stage]
        if not members:
            continue
        left, y, width = x, 0, 0
        for node in sorted(members, key=lambda n: (n["pos"][0], n["pos"][1])):  # api_to_ui's order: by depth
            if node["type"] in PREVIEW:
                node["size"] = [max(node["size"][0], PREVIEW[node["type"]][0]),
                                node["size"][1] + PREVIEW[node["type"]][1]]
            if node["type"] in RESULT_TEXT_NODES:
                node["size"][1] += RESULT_TEXT_HEIGHT
            if y > 0 and y + node["size"][1] > COLUMN_HEIGHT:
                x, y, width = x + width + GAP, 0, 0
            node["pos"] = [x + 20, y + GROUP_TITLE + 40]
            y += node["size"][1] + GAP
            width = max(width, node["size"][0] + 40)
        bottom = max(n["pos"][1] + n["size"][1] for n in members) + 20
        workflow["groups"].append({"id": len(workflow["groups"]) + 1, "title": f"{stage + 1}. {title}",
                                   "bounding": [left, 0, x + width - left, bottom], "color": STAGE_COLORS[stage],
                                   "font_size": 24, "flags": {}})
        x += width + GAP


def workflow_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def all_workflows_hash() -> str:
    """The hash of the workflow files in the template browser's order (names, order and contents): what the
    README's screenshots show."""
    return workflow_hash("".join(f"{name}\n{workflow_file(name).read_text()}" for name in TITLES))


def draw_thumbnail(workflow: dict, name: str, display_names: dict, width: int = 640, height: int = 400) -> Image.Image:
    """The pipeline as four stage columns of node names, with the workflow's title on top."""
    image = Image.new("RGB", (width, height), (250, 250, 248))
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=15)
    big = ImageFont.load_default(size=26)
    draw.text((20, 14), TITLES[name], fill=(30, 30, 30), font=big)
    column = (width - 40) // len(STAGES)
    for stage, title in enumerate(STAGES):
        left = 20 + stage * column
        draw.rectangle([left + 4, 60, left + column - 8, height - 16], fill=STAGE_COLORS[stage])
        draw.text((left + 12, 66), title, fill="white", font=font)
        # the default font has no emoji (AnimateDiff-Evolved's names end in some): only the words are drawn
        names = sorted({re.sub(r"[^\x20-\x7e]", "", display_names.get(n["type"], n["type"])).strip()
                        for n in workflow["nodes"]
                        if n["type"] != "Note" and stage_of(n) == stage})
        y = 94
        for label in names[:9]:
            lines = textwrap.wrap(label, 17)[:2]
            box = 12 + 18 * len(lines)
            draw.rounded_rectangle([left + 10, y, left + column - 14, y + box], 5, fill="white")
            for i, line in enumerate(lines):
                draw.text((left + 16, y + 5 + 18 * i), line, fill=(30, 30, 30), font=font)
            y += box + 6
        if stage:
            draw.polygon([(left - 4, 200), (left + 6, 208), (left - 4, 216)], fill=(60, 60, 60))
    return image


def write_thumbnail(path: Path, workflow_text: str, workflow: dict, name: str, display_names: dict) -> None:
    """workflows/<title>.jpg, its JPEG comment the hash of the workflow file it shows."""
    draw_thumbnail(workflow, name, display_names).save(path, "JPEG", quality=88,
                                                        comment=workflow_hash(workflow_text).encode())
