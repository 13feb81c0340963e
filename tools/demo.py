"""The demo: a complete edit of a sample clip in a headless ComfyUI; prints the edited video's path.

Runs a workflow of workflows/ (its API graph, from tools/workflow_graphs) as an artist would queue it, with the
inputs shrunk for a CPU: the generated tiny SD1.5 model and ControlNet (or --checkpoint PATH for real weights), a
generated clip of a skier (or --video PATH), fewer frames and steps. A workflow that loads what another saves (a
tuned model, motion LoRAs) runs that one first when its file is missing. A workflow on another node pack
(AnimateDiff-Evolved) gets it from ../shared/third_party beside the checkout, with a random full-size SD1.5 and a
random AnimateDiff v2 motion module (its motion modules need SD1.5's real channels). The executor's progress
(node, step, loss) is shown as it runs.
With random weights the "edit" is noise; the point is the real pipeline.

    tools/demo.sh [--workflow NAME] [--checkpoint model.safetensors] [--video clip.mp4] [--frames 8] ...
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from workflow_titles import TITLES

TOOLS = Path(__file__).resolve().parent
REPO_ROOT = TOOLS.parent
LOADED_FILES = {  # loader node -> {input: model folder}: files a workflow needs from an earlier one
    "VE_LoadTuned": {"tuned_file": "video_edit_tuned"},
    "VE_LoadMotionLoRA": {"spatial_file": "loras", "temporal_file": "video_edit_motion_lora"},
    "ADE_AnimateDiffLoRALoader": {"name": "animatediff_motion_lora"},
}


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults, except the unset ones (their help says what is used instead)."""

    def _get_help_string(self, action):
        return action.help if action.default is None else super()._get_help_string(action)


def name_of(workflow: str) -> str:
    """A workflow's name from its name or its title (the file's name in workflows/, the template's title)."""
    return next((name for name, title in TITLES.items() if title == workflow.removesuffix(".json")), workflow)


def parse_args(argv=None) -> argparse.Namespace:
    """The demo's arguments, checked before anything is set up (``--check-args`` stops there)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=HelpFormatter)
    parser.add_argument("--workflow", default="tune_a_video_edit", choices=TITLES, metavar="NAME", type=name_of,
                        help="a workflow of workflows/, by name or title: "
                             + "; ".join(f"{name} ('{title}')" for name, title in TITLES.items()))
    parser.add_argument("--checkpoint", type=Path,
                        help="the workflow's base checkpoint: SD1.x, SD2.1-base for tokenflow_sd21, SDXL for "
                             "tokenflow_sdxl (default: a generated tiny random model; a random full-size SD1.5 for "
                             "the AnimateDiff ones)")
    parser.add_argument("--controlnet", type=Path,
                        help="an SD1.x ControlNet for the workflows that use one (default: a generated tiny one, "
                             "which only fits the tiny model)")
    parser.add_argument("--video", type=Path, help="the source clip (default: a generated clip of a skier)")
    parser.add_argument("--frames", type=int, default=8, help="frames of the clip (and of generated videos)")
    parser.add_argument("--size", type=int, default=128, help="frame width and height (multiple of 8)")
    parser.add_argument("--steps", type=int, default=10, help="tuning, inversion and sampling steps")
    parser.add_argument("--workdir", type=Path, default=REPO_ROOT / ".cache" / "demo",
                        help="the demo ComfyUI's base folder (models, input, output)")
    parser.add_argument("--check-args", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for name in ("checkpoint", "controlnet", "video"):
        path = getattr(args, name)
        if path is not None and not path.is_file():
            parser.error(f"--{name}: no such file: {path}")
    if args.size <= 0 or args.size % 8:
        parser.error(f"--size must be a positive multiple of 8, got {args.size}")
    if args.frames < 2 or args.steps < 1:
        parser.error("--frames must be at least 2 and --steps at least 1")
    return args


# ----- what the terminal shows --------------------------------------------------------------------------------------

def log_size(log_path: Path) -> int:
    try:
        return log_path.stat().st_size
    except OSError:
        return 0


def latest_losses(log_path: Path, since: int) -> str:
    """The loss values in the newest training progress bar written to the ComfyUI log after byte ``since``
    ('loss=0.1234', or 'spatial=..., temporal=...'), or ''."""
    try:
        with open(log_path, "rb") as log:
            log.seek(0, 2)
            log.seek(max(since, log.tell() - 4000))
            tail = log.read().decode(errors="replace")
    except OSError:
        return ""
    for chunk in reversed(re.split(r"[\r\n]", tail)):
        match = re.search(r"\[[^\]]*?,\s*((?:\w+=[-+0-9.e]+(?:,\s*)?)+)\]", chunk)
        if match:
            return match.group(1)
    return ""


def show_progress(server, client_id: str, prompt: dict, connected: threading.Event, done: threading.Event) -> None:
    """Print the executor's progress from ComfyUI's websocket: each node as it starts, its steps and losses."""
    import asyncio

    import aiohttp

    async def watch():
        node_started = 0  # where the log stood when the current node started
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(f"{server.url.replace('http', 'ws')}/ws?clientId={client_id}") as ws:
                connected.set()
                while not done.is_set():
                    try:
                        message = await ws.receive(timeout=0.5)
                    except asyncio.TimeoutError:
                        continue
                    if message.type != aiohttp.WSMsgType.TEXT:
                        if message.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                            return
                        continue
                    event = json.loads(message.data)
                    data = event.get("data") or {}
                    node = data.get("node")
                    name = prompt.get(str(node), {}).get("class_type", node)
                    if event["type"] == "executing" and node is not None:
                        node_started = log_size(server.log_path)
                        print(f"\n  running {name} (node {node})", end="", flush=True)
                    elif event["type"] == "progress":
                        losses = latest_losses(server.log_path, node_started)
                        print(f"\r  running {name} (node {node}): step {data['value']}/{data['max']}"
                              f"{'  ' + losses if losses else ''}   ", end="", flush=True)

    try:
        asyncio.run(watch())
    except Exception as error:  # progress is a courtesy: the run itself is awaited elsewhere
        print(f"\n  (no progress display: {error})", flush=True)
    finally:
        connected.set()


def describe_failure(error, prompt: dict) -> str:
    """ComfyUI's own error, node, input and message, without the traceback."""
    try:
        details = json.loads(error.exception_message)
    except (TypeError, ValueError):
        details = None
    if isinstance(details, dict):  # the graph was refused at validation
        lines = [details.get("error", {}).get("message", "the graph is invalid")]
        for node, entry in (details.get("node_errors") or {}).items():
            for problem in entry.get("errors", []):
                name = (problem.get("extra_info") or {}).get("input_name", "")
                lines.append(f"  {entry.get('class_type', prompt.get(node, {}).get('class_type'))} (node {node})"
                             f"{f', input {name!r}' if name else ''}: {problem.get('details') or problem.get('message')}")
        return "\n".join(lines)
    return f"{error.node_type or 'the graph'} failed: {error.exception_message or error}"


# ----- running ------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Settings:
    """What the demo changes in a workflow: the files its loaders name (``ckpt_name``, ``control_net_name``,
    ``file``, ``model_name`` (an AnimateDiff motion module); ``<base>_ckpt_name`` replaces ``ckpt_name`` in
    workflows on another base model: ``sd21_ckpt_name`` on SD2.1, ``sdxl_ckpt_name`` on SDXL,
    ``sd15_full_ckpt_name`` on the full-size SD1.5 that AnimateDiff needs: workflow_graphs.base_model) and the size
    it is cut to."""
    files: dict
    frames: int
    size: int
    steps: int

    def prompt(self, name: str) -> dict:
        """The workflow's API graph (tools/workflow_graphs: the source of its file in workflows/) with these files,
        cut to this size by ``workflow_graphs.shrink``, as the tests cut it."""
        from workflow_graphs import all_workflows, base_model, set_inputs, shrink

        files = {k: v for k, v in self.files.items() if not k.endswith("_ckpt_name")}
        if base_model(name) != "sd15":
            files["ckpt_name"] = self.files[f"{base_model(name)}_ckpt_name"]
        return shrink(set_inputs(all_workflows()[name](), **files), self.frames, self.size, self.steps)


def missing_files(prompt: dict, server) -> list[str]:
    """Files the loaders of ``prompt`` name that the demo's models folders lack."""
    missing = []
    for node in prompt.values():
        for input_name, folder in LOADED_FILES.get(node["class_type"], {}).items():
            name = node["inputs"].get(input_name)
            if isinstance(name, str) and name != "none" and not (server.models_dir(folder) / name).is_file():
                missing.append(f"models/{folder}/{name}")
    return missing


def run_workflow(name: str, server, settings: Settings) -> dict:
    """Queue one workflow, show its progress, return its outputs ``{node id: UI result}`` (SystemExit with
    ComfyUI's error)."""
    from comfy_server import ExecutionError

    prompt = settings.prompt(name)
    started = time.monotonic()
    client_id = uuid.uuid4().hex
    connected, done = threading.Event(), threading.Event()
    watcher = threading.Thread(target=show_progress, args=(server, client_id, prompt, connected, done), daemon=True)
    print(f"running {name}.json", end="", flush=True)
    watcher.start()
    connected.wait(timeout=10)
    prompt_id = None
    try:
        prompt_id = server.queue(prompt, client_id)
        outputs = server.wait(prompt_id, timeout=6 * 3600)
    except ExecutionError as error:
        raise SystemExit(f"\n{name}: {describe_failure(error, prompt)}\n(full log: {server.log_path})") from None
    except KeyboardInterrupt:
        if prompt_id is not None:
            interrupt(server, prompt_id)
        raise
    finally:
        done.set()
        watcher.join(timeout=5)
    print(f"\n{name} finished in {time.monotonic() - started:.0f} s", flush=True)
    return outputs


def saved_videos(server, outputs: dict) -> list[Path]:
    """The videos a run's outputs name."""
    return [p for p in server.output_files(outputs) if p.suffix in (".mp4", ".webm", ".gif", ".webp")]


def interrupt(server, prompt_id: str) -> None:
    """Ctrl-C: ComfyUI interrupts the graph (a save in progress then writes nothing) before its server stops."""
    from comfy_server import ExecutionError

    try:
        server.interrupt()
        server.wait(prompt_id, timeout=60)
    except (ExecutionError, TimeoutError, OSError):
        pass  # interrupted, as asked


def saved_files(workdir: Path) -> set[Path]:
    """Every file written in the demo ComfyUI's output and model folders (not the models it links in)."""
    return {path for folder in (workdir / "output", workdir / "models") if folder.is_dir()
            for path in folder.rglob("*") if path.is_file() and not path.is_symlink()}


def run_with_producer(name: str, server, settings: Settings) -> dict:
    """Run the workflow, first the one that saves what it loads (a tuned model, motion LoRAs) if that is missing."""
    from workflow_graphs import PRODUCERS

    producer = PRODUCERS.get(name)
    if producer and missing_files(settings.prompt(name), server):
        print(f"{name} loads what {producer} saves, which is not there yet: running {producer} first")
        run_workflow(producer, server, settings)
    return run_workflow(name, server, settings)


def demo(args: argparse.Namespace) -> int:
    """Set up the demo ComfyUI (models, clip), run the workflow, print the edited videos' paths."""
    sys.path.insert(0, str(TOOLS))
    from comfy_server import ANIMATEDIFF_EVOLVED, ComfyServer, default_comfyui_path, third_party_packs
    from sample_clip import write_sample_clip

    sys.path.insert(0, str(default_comfyui_path()))
    from tiny_models import (full_size_sd15_checkpoint, random_animatediff_v2, tiny_controlnet, tiny_sd15_checkpoint,
                             tiny_sd21_base_checkpoint, tiny_sdxl_checkpoint)
    from workflow_graphs import base_model, other_packs

    packs = third_party_packs(other_packs(args.workflow), args.workflow)
    server = ComfyServer(args.workdir, other_packs=tuple(packs.values()))
    models = REPO_ROOT / ".cache" / "tiny_models"
    files = dict(file="demo_source.mp4",
                 ckpt_name=server.add_model("checkpoints", args.checkpoint or tiny_sd15_checkpoint(models)),
                 control_net_name=server.add_model("controlnet", args.controlnet or tiny_controlnet(models)))
    base = base_model(args.workflow)
    other_base = {"sd21": tiny_sd21_base_checkpoint, "sdxl": tiny_sdxl_checkpoint,
                  "sd15_full": full_size_sd15_checkpoint}.get(base)
    if other_base is not None:
        files[f"{base}_ckpt_name"] = server.add_model("checkpoints", args.checkpoint or other_base(models))
    if ANIMATEDIFF_EVOLVED in packs:
        files["model_name"] = server.add_model("animatediff_models", random_animatediff_v2(models,
                                                                                           packs[ANIMATEDIFF_EVOLVED]))
    settings = Settings(files, args.frames, args.size, args.steps)
    clip = server.input_dir / "demo_source.mp4"
    server.input_dir.mkdir(parents=True, exist_ok=True)
    if args.video:
        shutil.copyfile(args.video, clip)
    else:
        write_sample_clip(clip)

    with server:
        print(f"ComfyUI {server.comfyui_path} at {server.url} (log: {server.log_path})", flush=True)
        videos = saved_videos(server, run_with_producer(args.workflow, server, settings))
    for video in videos:
        print(f"edited video: {video}")
    return 0 if videos else 1


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.check_args:
        return 0
    before = saved_files(args.workdir)
    try:
        return demo(args)
    except KeyboardInterrupt:  # the server is stopped already (ComfyServer's context)
        kept = sorted(str(path.relative_to(args.workdir)) for path in saved_files(args.workdir) - before)
        print(f"\nstopped; {'kept what finished before: ' + ', '.join(kept) if kept else 'nothing was written'}",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
