"""Regenerate the node-docs pages the frontend shows in its node help panel, one per node:
docs/web/docs/<node id>.md, plus the pictures they show.

ComfyUI serves the pack's WEB_DIRECTORY (docs/web, see __init__.py) at /extensions/<pack folder>/, and the frontend
asks a custom node's help at /extensions/<pack folder>/docs/<node id>/<locale>.md, then .../docs/<node id>.md.
Each page is made from the node's definition in a running ComfyUI (/object_info: description, every input's
tooltip, default and range, every output's tooltip) and from the shipped workflows (which methods use the node,
which nodes feed it and which it feeds), with a hand-written line on what matters first and a picture for
the nodes where one says more. docs/nodes/<method>.md holds the longer notes; each page links its section.

The server gets AnimateDiff-Evolved from ../shared/third_party too: the pages name the nodes of the workflows on it
(``From:`` / ``To:``) by their display names.

Usage: python tools/node_docs.py  (tests/test_node_docs.py checks that the pages are current)
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path

TOOLS = Path(__file__).resolve().parent
sys.path.insert(0, str(TOOLS))

from comfy_server import ANIMATEDIFF_EVOLVED, REPO_ROOT, object_info_with  # noqa: E402
from workflow_format import PACK_ID  # noqa: E402
from workflow_titles import TITLES, workflow_file  # noqa: E402

PAGES_DIR = REPO_ROOT / "docs" / "web" / "docs"
REPOSITORY = "https://github.com/comfyui-video-edit/comfyui-video-edit/blob/main"

METHODS = {  # workflow name prefix -> method
    "tune_a_video": "Tune-A-Video", "tokenflow": "TokenFlow", "fatezero": "FateZero",
    "motiondirector": "MotionDirector", "make_your_video": "Make-Your-Video",
}

# node id -> (the docs/nodes page with its longer notes, what to set first, picture or None)
NOTES = {
    "VE_LoadVideo": ("video_io", "Pick the clip (or upload one). n_frames x frame_stride decides how much of it "
                     "is used; Tune-A-Video takes 24 frames, every 2nd, at 512x512.", None),
    "VE_SaveVideo": ("video_io", "filename_prefix and format; mp4 plays in the node.", None),
    "VE_CompareVideos": ("video_io", "Connect the source frames to 'before' and the decoded edit to 'after'.", None),
    "VE_EditMetrics": ("video_io", "Connect a CLIP vision model for CLIP consistency; warp error needs none.", None),
    "VE_PlotLoss": ("tune_a_video", "Nothing to set: connect a loss output.", None),
    "VE_SparseCausalAttention": ("tune_a_video", "mode: sparse_causal for Tune-A-Video, middle_frame with "
                                 "min_channels 640 for FateZero's zero-shot edits.", "sparse_causal_modes.png"),
    "VE_InflateUNet": ("tune_a_video", "Keep frame_groupnorm on (official). temporal_mask causal and "
                       "temporal_window 15 for Make-Your-Video.", None),
    "VE_OneShotTune": ("tune_a_video", "steps (official 500) and learning_rate (3e-5) are Tune-A-Video's; "
                       "image_mix above 0 turns it into Dreamix.", None),
    "VE_SaveTuned": ("tune_a_video", "filename; the saved path shows in the node.", None),
    "VE_LoadTuned": ("tune_a_video", "Pick the file VE Save Tuned Model wrote and connect the checkpoint it was "
                     "tuned on.", None),
    "VE_DDIMInvert": ("tune_a_video", "steps must equal the sampler's steps (official 50); TokenFlow inverts "
                      "with more and keep_steps 50.", None),
    "VE_AttentionCaptureConfig": ("fatezero", "Defaults follow FateZero (blocks up to 32x32 tokens).", None),
    "VE_AttentionFusion": ("fatezero", "Write the two prompts and the blend_words naming the edited object; "
                           "self_replace / cross_replace decide how much of the source's structure is kept.",
                           "fatezero_blend_mask.png"),
    "VE_MotionClipSet": ("motiondirector", "One node per training video, each with its own prompt.", None),
    "VE_TrainMotionDirector": ("motiondirector", "steps (official: 150 for one video, 300-500 for several); "
                               "rank 32 and learning_rate 5e-4 are MotionDirector's; on AnimateDiff (temporal_target "
                               "AnimateDiff motion module) rank 8 and lora_dropout 0 are AnimateDiff-MotionDirector's.",
                               None),
    "VE_MotionNoisePrior": ("motiondirector", "noise_prior: 0 is plain noise, 0.1-0.5 keeps more of the "
                            "source video's layout.", None),
    "VE_ApplyMotionLoRA": ("motiondirector", "temporal_strength 1, spatial_strength 0 is MotionDirector's "
                           "inference.", None),
    "VE_SaveMotionLoRA": ("motiondirector", "filename; both saved paths show in the node.", None),
    "VE_LoadMotionLoRA": ("motiondirector", "Pick the _temporal file (and the _spatial one only to copy the "
                          "training clips' look).", None),
    "VE_TokenFlow": ("tokenflow", "keyframe_chunk_size 8, pnp_attention_window 0.5, pnp_feature_window 0.8 and "
                     "seed 1 are TokenFlow's; the edit prompt goes to the sampler.", "tokenflow_keyframes.png"),
    "VE_ContextWindows": ("long_clips", "context_length: the length the model was tuned on; context_overlap "
                          "about a quarter of it.", None),
}


def workflow_usage(object_info: dict) -> tuple[dict, dict, dict]:
    """From the shipped workflows: node id -> workflows using it; (node id, input) -> display names of the nodes
    that feed it; (node id, output index) -> display names of the nodes it feeds."""
    used_in, feeds_input, fed_by_output = defaultdict(set), defaultdict(set), defaultdict(set)
    for workflow_name in TITLES:
        workflow = json.loads(workflow_file(workflow_name).read_text())
        types = {node["id"]: node["type"] for node in workflow["nodes"]}
        inputs = {node["id"]: [slot["name"] for slot in node.get("inputs", [])] for node in workflow["nodes"]}
        for node_type in types.values():
            used_in[node_type].add(workflow_name)
        for _, source, out_slot, target, in_slot, _ in workflow["links"]:
            name = lambda node: object_info.get(types[node], {}).get("display_name") or types[node]  # noqa: E731
            feeds_input[(types[target], inputs[target][in_slot])].add(name(source))
            fed_by_output[(types[source], out_slot)].add(name(target))
    return used_in, feeds_input, fed_by_output


def methods_of(workflows: set) -> list[str]:
    return sorted({method for prefix, method in METHODS.items() for name in workflows if name.startswith(prefix)})


def default_text(options: dict) -> str:
    """The default and the range as the page shows them ("" for file pickers, whose choices differ per install)."""
    default = options.get("default")
    if default is None or options.get("image_upload") or options.get("video_upload"):
        return ""
    text = '`""`' if default == "" else f"`{default}`"
    if "min" in options and "max" in options:
        text += f" ({options['min']} to {options['max']})"
    return text


def input_row(name: str, spec: list, sources: set) -> str:
    kind, options = spec[0], (spec[1] if len(spec) > 1 else {}) or {}
    kind = "choice" if isinstance(kind, list) or kind == "COMBO" else kind
    value = default_text(options)
    connected = f" From: {', '.join(sorted(sources))}." if sources else ""
    return f"| {name} | {kind} | {value.strip()} | {options.get('tooltip', '')}{connected} |"


def render(node_id: str, info: dict, usage: tuple[dict, dict, dict]) -> str:
    used_in, feeds_input, fed_by_output = usage
    page, first, picture = NOTES[node_id]
    workflows = [name for name in TITLES if name in used_in.get(node_id, ())]  # the template browser's order
    lines = [f"# {info['display_name']}", "",
             f"`{node_id}` · category `{info['category']}`"
             + (f" · used by {', '.join(methods_of(set(workflows)))}" if workflows else ""), "",
             info["description"], "", f"**Set first:** {first}", ""]
    if picture:
        lines += [f"![{info['display_name']}]({picture})", ""]
    lines += ["## Inputs", "", "| input | type | default (range) | what it does |", "|---|---|---|---|"]
    specs = {**info["input"].get("required", {}), **info["input"].get("optional", {})}
    for name in info["input_order"].get("required", []) + info["input_order"].get("optional", []):
        lines.append(input_row(name, specs[name], feeds_input.get((node_id, name), set())))
    lines += ["", "## Outputs", "", "| output | type | what it is |", "|---|---|---|"]
    for index, (name, kind) in enumerate(zip(info["output_name"], info["output"])):
        targets = fed_by_output.get((node_id, index), set())
        tooltip = (info.get("output_tooltips") or [None] * len(info["output"]))[index] or ""
        connected = f" To: {', '.join(sorted(targets))}." if targets else ""
        lines.append(f"| {name} | {kind} | {tooltip}{connected} |")
    lines += ["", "## Workflows", ""]
    lines += ([f"- **{TITLES[name]}** (Workflow → Browse Templates → {PACK_ID})" for name in workflows]
              or ["- none ships yet"])
    lines += ["", f"More: [{page}.md]({REPOSITORY}/docs/nodes/{page}.md), the method's notes and its "
                  f"differences from the official code.", ""]
    return "\n".join(lines)


def pack_nodes(object_info: dict) -> dict:
    return {node_id: info for node_id, info in object_info.items()
            if (info.get("python_module") or "").endswith(PACK_ID)}


def render_all(object_info: dict) -> dict[str, str]:
    """File name -> text of every node's page."""
    usage = workflow_usage(object_info)
    return {f"{node_id}.md": render(node_id, info, usage) for node_id, info in sorted(pack_nodes(object_info).items())}


def main() -> int:
    from node_pictures import write_pictures

    object_info = object_info_with([ANIMATEDIFF_EVOLVED], "tools/node_docs.py (the AnimateDiff workflows' nodes)")
    PAGES_DIR.mkdir(parents=True, exist_ok=True)
    for name, text in render_all(object_info).items():
        (PAGES_DIR / name).write_text(text)
    for path in write_pictures(PAGES_DIR):
        print(path)
    print(f"{len(pack_nodes(object_info))} pages in {PAGES_DIR}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
