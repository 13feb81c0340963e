"""Regenerate workflows/*.json (UI format) from the API graphs in tools/workflow_graphs.

Starts a headless ComfyUI with the pack, and AnimateDiff-Evolved from ../shared/third_party (the workflows on it
need its node definitions), to read the node definitions, then lays each graph out for the editor in
groups by stage, adds the model download metadata and the Note, and writes the template card: the file named by
the workflow's title (workflows/<title>.json), its thumbnail (workflows/<title>.jpg), and the order the template
browser lists them in (docs/web/template_order.json, which template_order.js reads). Files of workflows no longer
built are removed.
Usage: python tools/build_workflows.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

TOOLS = Path(__file__).resolve().parent
sys.path.insert(0, str(TOOLS))

from comfy_server import ANIMATEDIFF_EVOLVED, REPO_ROOT, default_comfyui_path, object_info_with  # noqa: E402
from workflow_cards import lay_out_by_stage, write_thumbnail  # noqa: E402
from workflow_format import api_to_ui  # noqa: E402
from workflow_titles import TEMPLATE_ORDER, TITLES, WORKFLOWS_DIR, template_order_json, workflow_file  # noqa: E402


# The models the workflows name, with where the frontend downloads them from when they are missing (a loader
# node's properties.models: name, url, directory): SD1.5, SD 2.1-base, SDXL base 1.0 and the ControlNet 1.1 models for
# SD1.5, as safetensors, and AnimateDiff's v2 motion module for SD1.5 (published only as a pickled .ckpt).
MODELS = {
    "v1-5-pruned-emaonly-fp16.safetensors": (
        "https://huggingface.co/Comfy-Org/stable-diffusion-v1-5-archive/resolve/main/v1-5-pruned-emaonly-fp16.safetensors",
        "checkpoints"),
    "v2-1_512-ema-pruned.safetensors": (
        "https://huggingface.co/stabilityai/stable-diffusion-2-1-base/resolve/main/v2-1_512-ema-pruned.safetensors",
        "checkpoints"),
    "sd_xl_base_1.0.safetensors": (
        "https://huggingface.co/stabilityai/stable-diffusion-xl-base-1.0/resolve/main/sd_xl_base_1.0.safetensors",
        "checkpoints"),
    "control_v11p_sd15_canny_fp16.safetensors": (
        "https://huggingface.co/comfyanonymous/ControlNet-v1-1_fp16_safetensors/resolve/main/"
        "control_v11p_sd15_canny_fp16.safetensors", "controlnet"),
    "control_v11f1p_sd15_depth_fp16.safetensors": (
        "https://huggingface.co/comfyanonymous/ControlNet-v1-1_fp16_safetensors/resolve/main/"
        "control_v11f1p_sd15_depth_fp16.safetensors", "controlnet"),
    "mm_sd_v15_v2.ckpt": ("https://huggingface.co/guoyww/animatediff/resolve/main/mm_sd_v15_v2.ckpt",
                          "animatediff_models"),
}
# Other packs' nodes the workflows use: their folder in custom_nodes -> their Comfy Registry id (a node's cnr_id,
# by which the frontend and ComfyUI-Manager offer to install a missing pack).
OTHER_PACK_IDS = {ANIMATEDIFF_EVOLVED: "comfyui-animatediff-evolved"}


def add_model_metadata(workflow: dict) -> None:
    """``properties.models`` on every node whose widgets name a model of MODELS."""
    for node in workflow["nodes"]:
        named = [value for value in node.get("widgets_values") or [] if isinstance(value, str) and value in MODELS]
        if named:
            node["properties"]["models"] = [{"name": name, "url": MODELS[name][0], "directory": MODELS[name][1]}
                                            for name in named]


def add_other_pack_ids(workflow: dict, object_info: dict) -> None:
    """``properties.cnr_id`` on the nodes of the packs of OTHER_PACK_IDS (api_to_ui marks only ours and core's)."""
    for node in workflow["nodes"]:
        folder = (object_info.get(node["type"], {}).get("python_module") or "").removeprefix("custom_nodes.")
        if folder in OTHER_PACK_IDS:
            node["properties"] = {"cnr_id": OTHER_PACK_IDS[folder], **node["properties"]}


def add_note(workflow: dict, text: str) -> None:
    """A Note node above the graph (the frontend shows it; it is not part of the prompt)."""
    workflow["last_node_id"] += 1
    top = min([node["pos"][1] for node in workflow["nodes"]] + [group["bounding"][1] for group in workflow["groups"]])
    workflow["nodes"].append({"id": workflow["last_node_id"], "type": "Note", "pos": [0, top - 280],
                              "size": [560, 220], "flags": {}, "order": len(workflow["nodes"]), "mode": 0,
                              "inputs": [], "outputs": [], "properties": {}, "widgets_values": [text]})


def main() -> int:
    sys.path.insert(0, str(default_comfyui_path()))
    from workflow_graphs import all_workflows, note

    version = next(line.split('"')[1] for line in (REPO_ROOT / "pyproject.toml").read_text().splitlines()
                   if line.startswith("version"))
    object_info = object_info_with([ANIMATEDIFF_EVOLVED], "tools/build_workflows.py (the AnimateDiff workflows' nodes)")
    display_names = {node_type: info.get("display_name") or node_type for node_type, info in object_info.items()}
    for name, build in all_workflows().items():
        workflow = api_to_ui(build(), object_info, pack_version=version)
        lay_out_by_stage(workflow)
        add_model_metadata(workflow)
        add_other_pack_ids(workflow, object_info)
        add_note(workflow, note(name))
        path = workflow_file(name)
        text = json.dumps(workflow, indent=1) + "\n"
        path.write_text(text)
        write_thumbnail(path.with_suffix(".jpg"), text, workflow, name, display_names)
        print(path)
    for stale in [*WORKFLOWS_DIR.glob("*.json"), *WORKFLOWS_DIR.glob("*.jpg")]:
        if stale.stem not in TITLES.values():
            stale.unlink()
            print(f"removed {stale}")
    TEMPLATE_ORDER.write_text(template_order_json())
    print(TEMPLATE_ORDER)
    return 0


if __name__ == "__main__":
    sys.exit(main())
