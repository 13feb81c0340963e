"""Draw the README's screenshots in the real frontend (headless Chromium, 1600x1000), as an artist sees it:
docs/images/templates.jpg, the template browser on the pack's templates, and docs/images/after_run.jpg,
Tune-A-Video - tune and edit a clip as shipped, run at the demo's size on the tiny models with the shipped sample
clip. Each JPEG's comment is the hash of the workflows it was drawn from (tests/test_workflow_cards.py checks it is
current).

Needs what the frontend tests need (tools/setup/setup_env.sh --test: node, tests/frontend/node_modules,
chromium). Usage: python tools/readme_screenshots.py   (about 3 minutes on 2 cores)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image

TOOLS = Path(__file__).resolve().parent
sys.path.insert(0, str(TOOLS))

from comfy_server import REPO_ROOT, ComfyServer, default_comfyui_path  # noqa: E402
from demo import Settings  # noqa: E402
from workflow_cards import all_workflows_hash  # noqa: E402
from workflow_titles import workflow_file  # noqa: E402

FRONTEND_DIR = REPO_ROOT / "tests" / "frontend"
IMAGES = REPO_ROOT / "docs" / "images"
WORKFLOW = "tune_a_video_edit"
SAMPLE_CLIP = "video_edit_skier.mp4"  # the pack copies it into ComfyUI's input folder at start


def main() -> int:
    sys.path.insert(0, str(default_comfyui_path()))
    from tiny_models import tiny_controlnet, tiny_sd15_checkpoint

    models = REPO_ROOT / ".cache" / "tiny_models"
    with tempfile.TemporaryDirectory(prefix="ve_screenshots_") as work:
        work = Path(work)
        server = ComfyServer(work / "comfyui")
        files = dict(file=SAMPLE_CLIP, ckpt_name=server.add_model("checkpoints", tiny_sd15_checkpoint(models)),
                     control_net_name=server.add_model("controlnet", tiny_controlnet(models)))
        values = Settings(files, frames=8, size=128, steps=10).prompt(WORKFLOW)
        (work / "values.json").write_text(json.dumps(values))
        shots = work / "shots"
        shots.mkdir()
        with server:
            result = subprocess.run(
                ["node", str(FRONTEND_DIR / "run_preview.mjs"), server.url, str(work / "report.json"),
                 str(workflow_file(WORKFLOW)), str(work / "values.json")],
                cwd=FRONTEND_DIR, env={**os.environ, "VE_SCREENSHOTS": str(shots)}, capture_output=True, text=True,
                timeout=900)
        if result.returncode != 0:
            print(f"run_preview.mjs failed:\n{result.stdout}\n{result.stderr}", file=sys.stderr)
            return 1
        IMAGES.mkdir(parents=True, exist_ok=True)
        drawn_from = all_workflows_hash().encode()
        for name in ("templates", "after_run"):
            target = IMAGES / f"{name}.jpg"
            partial = target.with_name(target.name + ".partial")
            Image.open(shots / f"{name}.png").convert("RGB").save(
                partial, "JPEG", quality=85, comment=drawn_from)
            partial.replace(target)
            print(target)
    return 0


if __name__ == "__main__":
    sys.exit(main())
