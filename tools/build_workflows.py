"""Regenerate workflows/*.json (UI format) from the API graphs in tools/workflow_graphs.

Starts a headless ComfyUI with the pack to read the node definitions, then lays each graph out for the editor.
Usage: python tools/build_workflows.py
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

TOOLS = Path(__file__).resolve().parent
sys.path.insert(0, str(TOOLS))

from comfy_server import REPO_ROOT, ComfyServer, default_comfyui_path  # noqa: E402
from workflow_format import api_to_ui  # noqa: E402


def main() -> int:
    sys.path.insert(0, str(default_comfyui_path()))
    from workflow_graphs import all_workflows

    version = next(line.split('"')[1] for line in (REPO_ROOT / "pyproject.toml").read_text().splitlines()
                   if line.startswith("version"))
    with tempfile.TemporaryDirectory() as base, ComfyServer(Path(base)) as server:
        object_info = server.object_info()
    for name, build in all_workflows().items():
        workflow = api_to_ui(build(), object_info, pack_version=version)
        path = REPO_ROOT / "workflows" / f"{name}.json"
        path.write_text(json.dumps(workflow, indent=1) + "\n")
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
