"""The shipped workflows in the real ComfyUI frontend (bundled and newest), tools/workflow_format.py's api_to_ui, and
videos the pack saves playing in the browser.

One headless chromium session (tests/frontend/check_workflows.mjs) loads every workflow of ``workflows/`` plus a few
workflows written here (a broken one, a core txt2img graph made with ``api_to_ui``, a widget-layout sample of
this pack's nodes and tricky core nodes, and a graph with bypassed / muted nodes, a Reroute, a PrimitiveNode and
a Note) into the frontend served by the ``comfy`` server, and records per workflow the node types it misses,
the page errors, and the prompt ``app.graphToPrompt()`` builds.

Needs node, tests/frontend/node_modules (``npm ci``) and /usr/bin/chromium: ``tools/setup/setup_env.sh --test``.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from conftest import skip_without_packs
from workflow_format import PACK_ID, api_to_ui, node_layout, strip_meta
from workflow_titles import TITLES, workflow_file

REPO_ROOT = Path(__file__).resolve().parents[1]
FRONTEND_DIR = REPO_ROOT / "tests" / "frontend"
CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
WORKFLOWS = list(TITLES)  # by name; each in workflow_file(name)

BROKEN_TYPE = "VE_DoesNotExist"
# Core nodes whose widgets exercise the converter's rules: seed controls (flag, legacy name rule, flag false),
# upload widgets, optional and forceInput widgets, V1 list combos and V3 COMBO specs.
LAYOUT_CORE_TYPES = ["KSampler", "KSamplerAdvanced", "RandomNoise", "RandomCropImages", "MoonvalleyVideo2VideoNode",
                     "StabilityUpscaleCreativeNode", "CLIPLoader", "RegexReplace", "LoadImage", "LoadImageMask",
                     "LoadVideo", "CLIPTextEncode", "EmptyLatentImage", "ImageScaleBy", "SaveAnimatedWEBP",
                     "ControlNetApplyAdvanced", "CheckpointLoaderSimple", "ModelSamplingSD3"]


def _frontend_missing() -> str | None:
    if shutil.which("node") is None:
        return "node is not installed"
    if not (FRONTEND_DIR / "node_modules" / "playwright-core").is_dir():
        return "tests/frontend/node_modules missing (npm ci in tests/frontend)"
    if not Path(CHROMIUM).exists():
        return f"no chromium at {CHROMIUM}"
    return None


def core_prompt(checkpoint: str) -> dict:
    """A plain SD1.5 txt2img graph in API format."""
    return {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": checkpoint}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a cat on a sofa", "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["4", 1]}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "3": {"class_type": "KSampler", "inputs": {
            "seed": 1234, "steps": 3, "cfg": 7.5, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0,
            "model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["5", 0]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "ve_frontend_test", "images": ["8", 0]}},
    }


def layout_prompt(object_info: dict) -> dict:
    """One unconnected node of each pack node type and of LAYOUT_CORE_TYPES, every widget off its default."""
    types = sorted(t for t, info in object_info.items() if (info.get("python_module") or "").endswith(PACK_ID))
    types += [t for t in LAYOUT_CORE_TYPES if t in object_info]
    prompt = {}
    for i, node_type in enumerate(types, start=1):
        info = object_info[node_type]
        specs = {**(info["input"].get("required") or {}), **(info["input"].get("optional") or {})}
        inputs = {}
        for w in node_layout(node_type, info).widgets:
            if w.kind != "value":
                continue
            spec = specs[w.input]
            default = w.default
            if isinstance(default, bool):
                value = not default
            elif isinstance(default, int):
                value = default + 1
            elif isinstance(default, float):
                value = default + 0.25
            elif spec[0] == "STRING":
                value = f"text for {w.name}"
            else:   # a combo: its last option, or a made-up file name when it has none
                options = spec[0] if isinstance(spec[0], list) else (spec[1].get("options") or [])
                value = options[-1] if options else f"missing_{w.name}.mp4"
            inputs[w.input] = value
        prompt[str(i)] = {"class_type": node_type, "inputs": inputs}
    return prompt


def edge_case_workflow(object_info: dict, checkpoint: str) -> dict:
    """The core graph with a bypassed and a muted node, a Reroute, a PrimitiveNode and a Note added."""
    prompt = core_prompt(checkpoint)
    prompt["11"] = {"class_type": "LatentUpscaleBy", "inputs": {"upscale_method": "bilinear", "scale_by": 2.0,
                                                                 "samples": ["3", 0]}}
    prompt["8"]["inputs"]["samples"] = ["11", 0]
    prompt["12"] = {"class_type": "ImageInvert", "inputs": {"image": ["8", 0]}}
    prompt["13"] = {"class_type": "PreviewImage", "inputs": {"images": ["12", 0]}}
    prompt["6"]["inputs"]["text"] = "a {cat} on a sofa \\{kept\\} // comment"
    ui = api_to_ui(prompt, object_info)
    nodes = {n["id"]: n for n in ui["nodes"]}
    nodes[11]["mode"] = 4   # bypassed: VAEDecode.samples comes from KSampler
    nodes[12]["mode"] = 2   # muted: PreviewImage.images is dropped
    next_node, next_link = ui["last_node_id"], ui["last_link_id"]
    # a Reroute between the checkpoint's CLIP and the negative prompt
    link = next(l for l in ui["links"] if l[3] == 7)
    next_node += 1
    next_link += 1
    reroute = next_node
    ui["nodes"].append({"id": reroute, "type": "Reroute", "pos": [200, 700], "size": [75, 26], "flags": {},
                        "order": 20, "mode": 0, "inputs": [{"name": "", "type": "*", "link": link[0]}],
                        "outputs": [{"name": "", "type": "CLIP", "links": [next_link]}],
                        "properties": {"showOutputText": False, "horizontal": False}})
    link[3], link[4] = reroute, 0
    next(i for i in nodes[7]["inputs"] if i["name"] == "clip")["link"] = next_link
    ui["links"].append([next_link, reroute, 0, 7, 0, "CLIP"])
    # a PrimitiveNode driving KSampler.steps (a widget converted to an input)
    next_node += 1
    next_link += 1
    ui["nodes"].append({"id": next_node, "type": "PrimitiveNode", "pos": [0, 900], "size": [210, 82], "flags": {},
                        "order": 21, "mode": 0, "inputs": [], "title": "steps",
                        "outputs": [{"name": "INT", "type": "INT", "widget": {"name": "steps"}, "links": [next_link]}],
                        "properties": {"Run widget replace on values": False}, "widgets_values": [5, "fixed"]})
    nodes[3]["inputs"].append({"name": "steps", "type": "INT", "widget": {"name": "steps"}, "link": next_link})
    ui["links"].append([next_link, next_node, 0, 3, len(nodes[3]["inputs"]) - 1, "INT"])
    next_node += 1
    ui["nodes"].append({"id": next_node, "type": "Note", "pos": [0, 1100], "size": [300, 100], "flags": {},
                        "order": 22, "mode": 0, "inputs": [], "outputs": [], "properties": {},
                        "widgets_values": ["not part of the prompt"]})
    ui["last_node_id"], ui["last_link_id"] = next_node, next_link
    return ui


@pytest.fixture(scope="session")
def run_results(workflow_runs, tmp_path_factory) -> Path:
    """runs.json for check_workflows.mjs --outputs: each shipped workflow's path → the outputs of its run (the
    workflows that failed to run are left out; their after-run test says so)."""
    from conftest import in_run_order, missing_packs

    results = {}
    for name in in_run_order(WORKFLOWS):
        if missing_packs(name):
            continue
        try:
            results[str(workflow_file(name))] = workflow_runs[name]
        except SystemExit:
            pass
    target = tmp_path_factory.mktemp("runs") / "runs.json"
    target.write_text(json.dumps(results))
    return target


@pytest.fixture(scope="session")
def frontend(comfy, run_results, tmp_path_factory):
    """Runs check_workflows.mjs once over all workflows; ``report[path]`` is {missing, errors, warnings, prompt,
    overlaps after load, previews and the run}."""
    reason = _frontend_missing()
    if reason:
        pytest.skip(f"frontend check unavailable: {reason}; run tools/setup/setup_env.sh --test")
    object_info = comfy.object_info()
    work = tmp_path_factory.mktemp("frontend")
    core_ui = api_to_ui(core_prompt(comfy.checkpoint_name), object_info)
    broken = copy.deepcopy(core_ui)
    next(n for n in broken["nodes"] if n["type"] == "VAEDecode")["type"] = BROKEN_TYPE
    synthetic = {
        "broken": broken,
        "core": core_ui,
        "layout": api_to_ui(layout_prompt(object_info), object_info),
        "edge_cases": edge_case_workflow(object_info, comfy.checkpoint_name),
    }
    paths = {}
    for name, workflow in synthetic.items():
        paths[name] = work / f"{name}.json"
        paths[name].write_text(json.dumps(workflow, indent=1))
    out = work / "report.json"
    shots = Path(os.environ.get("VE_FRONTEND_SCREENSHOTS", work / "screenshots"))
    files = [str(workflow_file(name)) for name in WORKFLOWS] + [str(p) for p in paths.values()]
    started = time.monotonic()
    result = subprocess.run(["node", str(FRONTEND_DIR / "check_workflows.mjs"), comfy.url, str(out),
                             "--screenshots", str(shots), "--outputs", str(run_results), *files],
                            cwd=FRONTEND_DIR, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"check_workflows.mjs failed:\n{result.stdout}\n{result.stderr}"
    report = json.loads(out.read_text())
    return {"report": report, "paths": {k: str(v) for k, v in paths.items()}, "synthetic": synthetic,
            "object_info": object_info, "seconds": time.monotonic() - started, "screenshots": shots}


NEWEST_FRONTEND = REPO_ROOT / ".cache" / "frontend-newest"  # tools/setup/setup_env.sh --test installs it there


def copy_results(runs: Path, source, target) -> None:
    """The files the runs' outputs name (saved videos, previews in temp), from the source server's folders into the
    same places of the target's."""
    for outputs in json.loads(runs.read_text()).values():
        for path in source.output_files(outputs):
            copy = target.base_dir / path.relative_to(source.base_dir)
            copy.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, copy)


@pytest.fixture(scope="session")
def newest_frontend(tmp_path_factory, tiny_models, animatediff, comfy, run_results, frontend):
    """The shipped workflows in the newest frontend: a second server started with --front-end-root (with
    AnimateDiff-Evolved where ../shared has it, as the ``comfy`` server)."""
    from comfy_server import ComfyServer

    static = NEWEST_FRONTEND / "comfyui_frontend_package" / "static"
    if not static.is_dir():
        pytest.skip(f"no newest frontend at {NEWEST_FRONTEND}; run tools/setup/setup_env.sh --test")
    version = next(NEWEST_FRONTEND.glob("comfyui_frontend_package-*.dist-info")).name.split("-")[1][:-len(".dist")]
    base = tmp_path_factory.mktemp("comfyui_newest_frontend")
    server = ComfyServer(base, extra_args=("--front-end-root", str(static)),
                         other_packs=(animatediff["pack"],) if animatediff else ())
    server.add_model("checkpoints", tiny_models["checkpoint"])
    server.add_model("controlnet", tiny_models["controlnet"])
    if animatediff:
        server.add_model("animatediff_models", animatediff["motion_module"])
    out = base / "report.json"
    with server:
        copy_results(run_results, comfy, server)  # once started: ComfyUI empties its temp folder on start
        result = subprocess.run(["node", str(FRONTEND_DIR / "check_workflows.mjs"), server.url, str(out),
                                 "--outputs", str(run_results), *[str(workflow_file(name)) for name in WORKFLOWS],
                                 frontend["paths"]["broken"]],
                                cwd=FRONTEND_DIR, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"check_workflows.mjs failed:\n{result.stdout}\n{result.stderr}"
    return {"version": version, "report": json.loads(out.read_text())}


def _entry(frontend, key: str) -> dict:
    report = frontend["report"]
    assert key in report, f"{key} was not checked; report has {sorted(report)}"
    return report[key]


# Widgets the frontends add to a node for their own previews. Once a clip's preview has loaded, graphToPrompt
# serialises the upload preview as an input, "video-preview": "" (frontends 1.32 and 1.58 alike); the server ignores
# inputs a node does not declare. When it appears depends on how fast the preview loads, so prompts are compared
# without it.
FRONTEND_PREVIEW_WIDGETS = ("video-preview",)


def queued(prompt: dict) -> dict:
    """The frontend's prompt as the server reads it: no ``_meta`` and no frontend preview widget."""
    return {k: {**v, "inputs": {name: value for name, value in v["inputs"].items()
                                if name not in FRONTEND_PREVIEW_WIDGETS}}
            for k, v in strip_meta(prompt).items()}


def _describe(entry: dict) -> str:
    return json.dumps({k: entry.get(k) for k in ("missing", "errors", "warnings")}, indent=1)[:6000]


@pytest.mark.parametrize("name", WORKFLOWS)
def test_workflow_loads_in_frontend(frontend, name):
    skip_without_packs(name)
    entry = _entry(frontend, str(workflow_file(name)))
    assert not entry["missing"], f"{name}: node types missing in the frontend:\n{_describe(entry)}"
    assert not entry["errors"], f"{name}: errors while loading in the frontend:\n{_describe(entry)}"
    assert entry["prompt"], f"{name}: the frontend built an empty prompt"
    _assert_opens_clean(entry, name)


def _assert_opens_clean(entry: dict, where: str):
    """The sample clip is there (no missing-media warning) and no two nodes overlap, as loaded and once the
    clips' previews have grown their nodes."""
    assert not [w for w in entry["warnings"] if "media" in w and "model" not in w], f"{where}:\n{_describe(entry)}"
    assert entry["overlaps_after_load"] == [], f"{where}: overlapping nodes after loading"
    assert entry["overlaps_after_previews"] == [], f"{where}: overlapping nodes once the previews loaded"


@pytest.mark.parametrize("which", ["bundled", "newest"])
@pytest.mark.parametrize("name", WORKFLOWS)
def test_no_overlap_after_a_run(frontend, newest_frontend, workflow_runs, name, which):
    """The results of a real run of the workflow (the demo's settings), handed to the page as the server hands them
    over: every result file shows (a video or an image), and no node grows over another."""
    skip_without_packs(name)
    entry = _entry(frontend if which == "bundled" else newest_frontend, str(workflow_file(name)))
    assert name not in workflow_runs.failures, workflow_runs.failures.get(name)
    shown = entry["shown_after_run"]
    assert shown["expected"] > 0 and shown["videos"] + shown["images"] == shown["expected"], \
        f"{name} in the {which} frontend: not every result shows: {shown}"
    assert entry["overlaps_after_run"] == [], f"{name} in the {which} frontend: overlapping nodes after a run"


@pytest.mark.parametrize("which", ["bundled", "newest"])
def test_template_browser_lists_every_workflow_with_its_card_and_help_pages_are_served(frontend, newest_frontend,
                                                                                       which):
    """Every workflow, by its title, simplest first (TITLES' order, which docs/web/template_order.js gives the
    frontend from template_order.json: the server's own order is the file system's), each card's thumbnail a JPEG, and the cards the
    template browser shows first are those titles in that order, their thumbnails loaded."""
    startup = (frontend if which == "bundled" else newest_frontend)["report"]["__startup__"]
    templates = startup["templates"]
    titles = list(TITLES.values())
    assert templates["names"] == titles
    assert set(templates["thumbnails"].values()) == {"image/jpeg"}, templates["thumbnails"]
    cards = templates["cards"]
    assert len(cards) >= 8 and [card["title"] for card in cards] == titles[:len(cards)], cards
    assert all(card["loaded"] for card in cards) and templates["failed"] == [], (cards, templates["failed"])
    assert all(line.startswith("# VE ") for line in startup["help_pages"].values()), startup["help_pages"]


@pytest.mark.parametrize("name", WORKFLOWS)
def test_workflow_loads_in_the_newest_frontend(frontend, newest_frontend, name):
    skip_without_packs(name)
    workflow = workflow_file(name)
    entry = _entry(newest_frontend, str(workflow))
    where = f"{name} in frontend {newest_frontend['version']}"
    assert not entry["missing"], f"{where}: node types missing:\n{_describe(entry)}"
    assert not entry["errors"], f"{where}: errors while loading:\n{_describe(entry)}"
    assert queued(entry["prompt"]) == queued(_entry(frontend, str(workflow))["prompt"]), where
    _assert_opens_clean(entry, where)


@pytest.mark.parametrize("name", WORKFLOWS)
def test_shipped_workflow_is_its_api_graph(frontend, comfy_lib, name):
    """What the frontend queues from the workflow's file is exactly the API graph tests and the demo run."""
    from workflow_graphs import all_workflows

    skip_without_packs(name)
    entry = _entry(frontend, str(workflow_file(name)))
    assert queued(entry["prompt"]) == strip_meta(all_workflows()[name]())


def test_broken_workflow_is_reported(frontend):
    entry = _entry(frontend, frontend["paths"]["broken"])
    assert BROKEN_TYPE in entry["missing"]
    # the frontend's own missing-nodes notice was detected too (a dialog; an error overlay in newer frontends)
    assert any(BROKEN_TYPE in e and e.startswith(("dialog:", "overlay:")) for e in entry["errors"]), _describe(entry)


def test_broken_workflow_is_reported_by_the_newest_frontend(frontend, newest_frontend):
    entry = _entry(newest_frontend, frontend["paths"]["broken"])
    assert BROKEN_TYPE in entry["missing"]
    assert any(BROKEN_TYPE in e or e.startswith("overlay:") for e in entry["errors"]), _describe(entry)


@pytest.mark.parametrize("name", ["core", "layout", "edge_cases"])
def test_synthetic_workflow_loads(frontend, name):
    entry = _entry(frontend, frontend["paths"][name])
    assert not entry["missing"] and not entry["errors"], _describe(entry)


def test_core_graph_round_trips_through_frontend(frontend, comfy):
    entry = _entry(frontend, frontend["paths"]["core"])
    assert queued(entry["prompt"]) == strip_meta(core_prompt(comfy.checkpoint_name))
    layout = _entry(frontend, frontend["paths"]["layout"])
    assert queued(layout["prompt"]) == strip_meta(layout_prompt(frontend["object_info"]))


def test_edge_cases_resolved_like_frontend(frontend):
    prompt = _entry(frontend, frontend["paths"]["edge_cases"])["prompt"]
    assert "11" not in prompt and "12" not in prompt                          # bypassed, muted
    assert prompt["13"]["inputs"] == {}                                       # its input came from the muted node
    assert prompt["8"]["inputs"]["samples"] == ["3", 0]                       # routed through the bypass
    assert prompt["7"]["inputs"]["clip"] == ["4", 1]                          # through the Reroute
    assert prompt["3"]["inputs"]["steps"] == 5                                # from the PrimitiveNode
    assert prompt["6"]["inputs"]["text"] == "a cat on a sofa {kept} "         # dynamic prompt syntax


# ----- converter tests without the browser (object_info from the server) ---------------------------------------------------------------------------

def test_api_to_ui_round_trip(comfy):
    object_info = comfy.object_info()
    prompt = core_prompt(comfy.checkpoint_name)
    ui = api_to_ui(prompt, object_info)
    assert ui["version"] == 0.4
    assert len(ui["nodes"]) == len(prompt) and len(ui["links"]) == 9
    nodes = {n["id"]: n for n in ui["nodes"]}
    assert nodes[3]["widgets_values"] == [1234, "fixed", 3, 7.5, "euler", "normal", 1.0]
    assert nodes[3]["properties"]["Node name for S&R"] == "KSampler"
    assert nodes[4]["properties"]["cnr_id"] == "comfy-core"
    xs = {k: nodes[int(k)]["pos"][0] for k in prompt}
    assert xs["4"] < xs["6"] < xs["3"] < xs["8"] < xs["9"]                     # left to right by depth
    for link_id, src, src_slot, dst, dst_slot, type_ in ui["links"]:
        assert nodes[dst]["inputs"][dst_slot]["link"] == link_id
        assert link_id in nodes[src]["outputs"][src_slot]["links"]
        assert nodes[src]["outputs"][src_slot]["type"] == type_


def test_api_to_ui_pack_nodes(comfy):
    object_info = comfy.object_info()
    ours = [t for t, i in object_info.items() if (i.get("python_module") or "").endswith(PACK_ID)]
    if not ours:
        pytest.skip("no nodes of this pack are registered")
    prompt = layout_prompt(object_info)
    ui = api_to_ui(prompt, object_info)
    for node in ui["nodes"]:
        if node["type"] in ours:
            assert node["properties"]["cnr_id"] == PACK_ID


def test_node_layout_rules():
    """The widget rules of the 1.32.9 frontend, on a made-up node definition (no server); the frontend itself
    checks the layouts of real nodes (the layout workflow)."""
    info = {
        "input": {
            "required": {
                "model": ["MODEL", {}],
                "seed": ["INT", {"default": 1}],                                  # legacy name rule
                "other_seed": ["INT", {"default": 2, "control_after_generate": True}],
                "noise_seed": ["INT", {"default": 3, "control_after_generate": False}],
                "file": ["COMBO", {"options": ["a.mp4"], "video_upload": True}],
                "mode": [["x", "y"], {"control_after_generate": True}],
                "text": ["STRING", {"forceInput": True}],
            },
            "optional": {"strength": ["FLOAT", {"default": 0.5}]},
        },
        "input_order": {"required": ["model", "seed", "other_seed", "noise_seed", "file", "mode", "text"],
                        "optional": ["strength"]},
        "output": ["MODEL"], "output_name": ["MODEL"], "display_name": "Test", "python_module": f"custom_nodes.{PACK_ID}",
    }
    layout = node_layout("VE_Test", info)
    assert [(w.name, w.kind) for w in layout.widgets] == [
        ("seed", "value"), ("control_after_generate", "control"),
        ("other_seed", "value"), ("control_after_generate", "control"),
        ("noise_seed", "value"),
        ("file", "value"),
        ("mode", "value"), ("control_after_generate", "control"), ("control_filter_list", "filter"),
        ("strength", "value"),
        ("upload", "upload"),
    ]
    assert [s.name for s in layout.sockets] == ["model", "text", "seed", "other_seed", "noise_seed", "file", "mode",
                                                "strength", "upload"]
    prompt = {"1": {"class_type": "VE_Test", "inputs": {"seed": 5, "other_seed": 6, "noise_seed": 7, "file": "a.mp4",
                                                        "mode": "y", "strength": 0.75, "text": ["2", 0]}},
              "2": {"class_type": "VE_Text", "inputs": {}}}
    object_info = {"VE_Test": info, "VE_Text": {"input": {"required": {}}, "output": ["STRING"],
                                                "output_name": ["text"], "python_module": "nodes"}}
    ui = api_to_ui(prompt, object_info)
    node = next(n for n in ui["nodes"] if n["id"] == 1)
    assert node["widgets_values"] == [5, "fixed", 6, "fixed", 7, "a.mp4", "y", "fixed", "", 0.75, "image"]
    assert node["properties"] == {"cnr_id": PACK_ID, "Node name for S&R": "VE_Test"}
    assert [i["name"] for i in node["inputs"]] == ["model", "text"]


def test_saved_videos_play_in_chromium(comfy, comfy_lib, tmp_path):
    """What VE_SaveVideo writes plays in a <video> element, served by ComfyUI's /view as the preview is; an
    MPEG-4 Part 2 file (what OpenCV writes) does not, so the check can tell."""
    import urllib.parse

    import cv2
    import numpy as np
    from comfy_execution.graph_utils import GraphBuilder

    reason = _frontend_missing()
    if reason:
        pytest.skip(f"chromium check unavailable: {reason}; run tools/setup/setup_env.sh --test")
    g = GraphBuilder(prefix="")
    frames = g.node("EmptyImage", width=96, height=64, batch_size=6, color=0x3366CC)
    saves = {fmt: g.node("VE_SaveVideo", images=frames.out(0), fps=8.0, filename_prefix=f"ve_play/{fmt}", format=fmt)
             for fmt in ("mp4", "webm")}
    outputs = comfy.run(g.finalize())
    previews = {fmt: outputs[node.id]["images"][0] for fmt, node in saves.items()}
    mp4v = comfy.output_dir / "ve_play" / "opencv_mp4v.mp4"
    writer = cv2.VideoWriter(str(mp4v), cv2.VideoWriter_fourcc(*"mp4v"), 8.0, (96, 64))
    for _ in range(6):
        writer.write(np.full((64, 96, 3), 128, np.uint8))
    writer.release()
    previews["mp4v"] = {"filename": mp4v.name, "subfolder": "ve_play", "type": "output"}
    urls = {fmt: f"{comfy.url}/api/view?{urllib.parse.urlencode(item)}" for fmt, item in previews.items()}
    out = tmp_path / "played.json"
    result = subprocess.run(["node", str(FRONTEND_DIR / "play_videos.mjs"), str(out), *urls.values()],
                            cwd=FRONTEND_DIR, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"play_videos.mjs failed:\n{result.stdout}\n{result.stderr}"
    played = {fmt: json.loads(out.read_text())[url] for fmt, url in urls.items()}
    for fmt in ("mp4", "webm"):
        state = played[fmt]
        assert state["error"] is None and state["readyState"] >= 2, (fmt, state)
        assert (state["videoWidth"], state["videoHeight"]) == (96, 64) and state["advanced"], (fmt, state)
    assert played["mp4v"]["error"] is not None or played["mp4v"]["readyState"] < 2, played["mp4v"]


def _run_preview(server, workflow: dict, work: Path, values: dict | None = None) -> dict:
    """Run ``workflow`` in the frontend ``server`` serves (its widgets set from the API prompt ``values``, if given);
    the video previews the page shows afterwards, the overlapping nodes then, and the result texts."""
    (work / "preview.json").write_text(json.dumps(workflow))
    (work / "values.json").write_text(json.dumps(values or {}))
    out = work / "preview_report.json"
    result = subprocess.run(["node", str(FRONTEND_DIR / "run_preview.mjs"), server.url, str(out),
                             str(work / "preview.json"), str(work / "values.json")], cwd=FRONTEND_DIR,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"run_preview.mjs failed:\n{result.stdout}\n{result.stderr}"
    return json.loads(out.read_text())


def test_save_video_previews_in_the_node_after_run(comfy, tiny_models, tmp_path):
    """Queue EmptyImage -> VE Save Video (mp4) from the frontend: the node shows a video that decodes, in the
    bundled frontend and in the newest one."""
    from comfy_server import ComfyServer

    reason = _frontend_missing()
    if reason:
        pytest.skip(f"frontend check unavailable: {reason}; run tools/setup/setup_env.sh --test")
    prompt = {"1": {"class_type": "EmptyImage", "inputs": {"width": 96, "height": 64, "batch_size": 6,
                                                             "color": 0x3366CC}},
              "2": {"class_type": "VE_SaveVideo", "inputs": {"images": ["1", 0], "fps": 8.0,
                                                               "filename_prefix": "ve_preview/run", "format": "mp4"}}}
    workflow = api_to_ui(prompt, comfy.object_info())
    static = NEWEST_FRONTEND / "comfyui_frontend_package" / "static"
    newest = ComfyServer(tmp_path / "newest", extra_args=("--front-end-root", str(static))) if static.is_dir() else None
    reports = {"bundled": _run_preview(comfy, workflow, tmp_path)}
    if newest is not None:
        with newest:
            (tmp_path / "newest_work").mkdir()
            reports["newest"] = _run_preview(newest, workflow, tmp_path / "newest_work")
    for name, report in reports.items():
        playable = [v for v in report["videos"] if "ve_preview" in v["src"] and v["readyState"] >= 2]
        assert playable and playable[0]["error"] is None and (playable[0]["width"], playable[0]["height"]) == (96, 64), \
            (name, report)


def test_shipped_workflow_after_a_run_shows_results_and_no_node_overlaps(comfy, comfy_lib, demo_settings, tmp_path):
    """tune_a_video_edit as shipped, its widgets cut to the tests' size, run from the bundled frontend: once its
    videos, plot and result texts are in, no two nodes overlap, and the result boxes hold the results."""
    reason = _frontend_missing()
    if reason:
        pytest.skip(f"frontend check unavailable: {reason}; run tools/setup/setup_env.sh --test")
    workflow = json.loads(workflow_file("tune_a_video_edit").read_text())
    report = _run_preview(comfy, workflow, tmp_path, values=demo_settings.prompt("tune_a_video_edit"))
    assert any("type=output" in v["src"] and v["readyState"] >= 2 for v in report["videos"]), report
    assert report["overlaps"] == [], report["overlaps"]
    results = report["results"]
    assert "video_edit_tuned" in results["VE_SaveTuned"] and "method: ddim" in results["VE_DDIMInvert"], results
    assert results["VE_EditMetrics"].startswith("warp error:") and "last" in results["VE_OneShotTune"], results
