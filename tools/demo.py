"""The demo: a complete Tune-A-Video edit of a sample clip in a headless ComfyUI; prints the edited video's path.

Runs workflows/tune_a_video_edit.json (or --workflow NAME) exactly as an artist would queue it, with the inputs
shrunk for a CPU: the generated tiny SD1.5 model (or --checkpoint PATH for real weights), a generated clip of a
skier (or --video PATH), fewer frames and steps. Usage (after tools/setup_env.sh):

    .venv/bin/python tools/demo.py [--checkpoint model.safetensors] [--frames 8] [--size 128] [--steps 10]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

TOOLS = Path(__file__).resolve().parent
sys.path.insert(0, str(TOOLS))

from comfy_server import REPO_ROOT, ComfyServer, default_comfyui_path  # noqa: E402
from sample_clip import write_sample_clip  # noqa: E402
from workflow_format import ui_to_api  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workflow", default="tune_a_video_edit", help="a workflow in workflows/ (name without .json)")
    parser.add_argument("--checkpoint", type=Path, help="an SD1.x checkpoint; default: a generated tiny random model")
    parser.add_argument("--video", type=Path, help="the source clip; default: a generated clip of a skier")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--size", type=int, default=128, help="frame width and height (multiple of 8)")
    parser.add_argument("--steps", type=int, default=10, help="tuning, inversion and sampling steps")
    parser.add_argument("--workdir", type=Path, default=REPO_ROOT / ".cache" / "demo", help="the demo ComfyUI's base folder")
    args = parser.parse_args(argv)

    sys.path.insert(0, str(default_comfyui_path()))
    from workflow_graphs import set_inputs

    server = ComfyServer(args.workdir)
    if args.checkpoint:
        checkpoint = server.add_model("checkpoints", args.checkpoint)
    else:
        from tiny_models import tiny_controlnet, tiny_sd15_checkpoint

        models = REPO_ROOT / ".cache" / "tiny_models"
        checkpoint = server.add_model("checkpoints", tiny_sd15_checkpoint(models))
        server.add_model("controlnet", tiny_controlnet(models))
    clip = server.input_dir / "demo_source.mp4"
    if args.video:
        server.input_dir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(args.video, clip)
    else:
        write_sample_clip(clip)

    workflow = json.loads((REPO_ROOT / "workflows" / f"{args.workflow}.json").read_text())
    with server:
        print(f"ComfyUI {server.comfyui_path} running {args.workflow} (log: {server.log_path})", flush=True)
        prompt = set_inputs(ui_to_api(workflow, server.object_info()), ckpt_name=checkpoint, file=clip.name,
                            n_frames=args.frames, width=args.size, height=args.size, steps=args.steps)
        outputs = server.run(prompt, timeout=6 * 3600)
    videos = [p for p in server.output_files(outputs) if p.suffix in (".mp4", ".gif", ".webp")]
    for video in videos:
        print(f"edited video: {video}")
    return 0 if videos else 1


if __name__ == "__main__":
    sys.exit(main())
