"""Run a real ComfyUI headless with this pack installed, and queue graphs on it.

Used by the tests and by the demo. ``ComfyServer`` starts ``main.py --cpu`` on 127.0.0.1 at a free port,
in its own base directory (models, input, output, custom_nodes), with this repository symlinked into
``custom_nodes`` (and, when asked, other packs beside it: ``third_party_pack`` finds the test copies of
``../shared/third_party``, never part of this pack). Graphs are API-format dicts
(``comfy_execution.graph_utils.GraphBuilder`` builds them).
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
PACK_NAME = "comfyui-video-edit"
THIRD_PARTY = REPO_ROOT.parent / "shared" / "third_party"  # other packs, for interop tests and the demo only
ANIMATEDIFF_EVOLVED = "ComfyUI-AnimateDiff-Evolved"
ANIMATEDIFF_EVOLVED_MODULE = "third_party_animatediff_evolved"  # its module name when imported in-process


def third_party_pack(name: str) -> Path | None:
    """``../shared/third_party/<name>`` beside this checkout (see its README), or None where it is absent."""
    path = THIRD_PARTY / name
    return path if (path / "__init__.py").is_file() else None


def third_party_packs(names, needed_by: str) -> dict[str, Path]:
    """Name -> folder of each of these packs in ../shared/third_party; SystemExit naming the absent ones and what
    needs them."""
    packs = {name: third_party_pack(name) for name in names}
    missing = [name for name, path in packs.items() if path is None]
    if missing:
        raise SystemExit(f"{needed_by} needs the node pack {', '.join(missing)}, absent from {THIRD_PARTY}; get it at "
                         "the commit in ../shared/third_party/README.md")
    return packs


def object_info_with(other_packs, needed_by: str) -> dict:
    """The node definitions of a headless ComfyUI, started for that alone, with this pack and the ``other_packs``
    (names in ../shared/third_party; SystemExit naming the absent ones and ``needed_by``)."""
    folders = tuple(third_party_packs(other_packs, needed_by).values())
    with tempfile.TemporaryDirectory() as base, ComfyServer(Path(base), other_packs=folders) as server:
        return server.object_info()


def import_pack(path: Path, module_name: str):
    """Another pack imported in this process by file path, once per ``module_name`` (ComfyUI's modules must be
    importable: the tests' ``comfy_lib``, tiny_models' ``_import_comfy``)."""
    if module_name not in sys.modules:
        spec = importlib.util.spec_from_file_location(module_name, Path(path) / "__init__.py",
                                                      submodule_search_locations=[str(path)])
        sys.modules[module_name] = module = importlib.util.module_from_spec(spec)
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[module_name]
            raise
    return sys.modules[module_name]


def default_comfyui_path() -> Path:
    """``COMFYUI_PATH`` if set, else the ComfyUI 0.3.75 that tools/setup/setup_env.sh unpacks."""
    path = Path(os.environ.get("COMFYUI_PATH") or REPO_ROOT / ".comfyui" / "ComfyUI-0.3.75")
    if not (path / "main.py").is_file():
        raise FileNotFoundError(
            f"No ComfyUI at {path} (main.py missing). Run tools/setup/setup_env.sh, or set COMFYUI_PATH to a ComfyUI checkout."
        )
    return path


class ExecutionError(RuntimeError):
    """A graph failed in ComfyUI: carries the node, the exception message and the traceback."""

    def __init__(self, message: str, node_type: str | None = None, exception_message: str = "", traceback: str = ""):
        super().__init__(message)
        self.node_type = node_type
        self.exception_message = exception_message
        self.traceback = traceback


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ComfyServer:
    def __init__(self, base_dir: Path, comfyui_path: Path | None = None, extra_args: tuple[str, ...] = (),
                 other_packs: tuple[Path, ...] = ()):
        """``other_packs``: folders of other custom node packs, symlinked into ``custom_nodes`` beside this one."""
        self.comfyui_path = Path(comfyui_path or default_comfyui_path())
        self.base_dir = Path(base_dir)
        self.extra_args = extra_args
        self.other_packs = tuple(Path(p) for p in other_packs)
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None
        self.log_path = self.base_dir / "comfyui.log"

    # ----- layout -------------------------------------------------------------------------------
    def models_dir(self, kind: str) -> Path:
        path = self.base_dir / "models" / kind
        path.mkdir(parents=True, exist_ok=True)
        return path

    @property
    def input_dir(self) -> Path:
        return self.base_dir / "input"

    @property
    def output_dir(self) -> Path:
        return self.base_dir / "output"

    def add_model(self, kind: str, source: Path, name: str | None = None) -> str:
        """Link a model file into ``models/<kind>/`` and return the name ComfyUI lists it under."""
        target = self.models_dir(kind) / (name or Path(source).name)
        if not target.exists():
            target.symlink_to(Path(source).resolve())
        return target.name

    # ----- life cycle ---------------------------------------------------------------------------
    def start(self, timeout: float = 240.0) -> "ComfyServer":
        for sub in ("custom_nodes", "input", "output", "temp", "user"):
            (self.base_dir / sub).mkdir(parents=True, exist_ok=True)
        for name, source in ((PACK_NAME, REPO_ROOT), *((p.name, p) for p in self.other_packs)):
            link = self.base_dir / "custom_nodes" / name
            if not link.exists():
                link.symlink_to(Path(source).resolve())
        cmd = [
            sys.executable, str(self.comfyui_path / "main.py"), "--cpu", "--listen", "127.0.0.1",
            "--port", str(self.port), "--base-directory", str(self.base_dir), "--disable-auto-launch",
            *self.extra_args,
        ]
        log = open(self.log_path, "wb")
        self.process = subprocess.Popen(cmd, cwd=self.comfyui_path, stdout=log, stderr=subprocess.STDOUT,
                                        start_new_session=True)
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(f"ComfyUI exited with code {self.process.returncode}:\n{self.log_tail()}")
                try:
                    self.get("/system_stats", timeout=2)
                    return self
                except (urllib.error.URLError, ConnectionError, OSError):
                    time.sleep(0.5)
            raise TimeoutError(f"ComfyUI did not answer within {timeout:.0f}s:\n{self.log_tail()}")
        except BaseException:  # not answering, or Ctrl-C while waiting: no server is left behind
            self.stop()
            raise

    def stop(self) -> None:
        """Stop ComfyUI by its own process group (it was started in a new session)."""
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def log_tail(self, chars: int = 6000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except FileNotFoundError:
            return ""

    # ----- HTTP ---------------------------------------------------------------------------------
    def get(self, path: str, timeout: float = 30):
        with urllib.request.urlopen(self.url + path, timeout=timeout) as response:
            return json.loads(response.read())

    def post(self, path: str, payload: dict, timeout: float = 30):
        request = urllib.request.Request(self.url + path, data=json.dumps(payload).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = response.read()
            return json.loads(body) if body else None

    def object_info(self) -> dict:
        return self.get("/object_info", timeout=120)

    def interrupt(self) -> None:
        self.post("/interrupt", {})

    def queue(self, prompt: dict, client_id: str | None = None) -> str:
        """Queue ``prompt``; progress messages go to the websocket client ``client_id``."""
        try:
            answer = self.post("/prompt", {"prompt": prompt, "client_id": client_id or uuid.uuid4().hex})
        except urllib.error.HTTPError as error:
            details = json.loads(error.read() or b"{}")
            raise ExecutionError(f"ComfyUI refused the graph: {json.dumps(details, indent=1)[:4000]}",
                                 exception_message=json.dumps(details)) from None
        return answer["prompt_id"]

    def wait(self, prompt_id: str, timeout: float = 1200.0) -> dict:
        """Wait for a queued graph; return its outputs ``{node_id: ui_dict}`` or raise ExecutionError."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            history = self.get(f"/history/{prompt_id}")
            if prompt_id in history:
                entry = history[prompt_id]
                status = entry.get("status", {})
                if status.get("status_str") == "error" or not status.get("completed", True):
                    raise self._execution_error(status)
                return entry.get("outputs", {})
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"ComfyUI died while running the graph:\n{self.log_tail()}")
            time.sleep(0.2)
        raise TimeoutError(f"graph {prompt_id} did not finish within {timeout:.0f}s")

    def run(self, prompt: dict, timeout: float = 1200.0) -> dict:
        return self.wait(self.queue(prompt), timeout)

    @staticmethod
    def _execution_error(status: dict) -> ExecutionError:
        for kind, data in status.get("messages", []):
            if kind == "execution_error":
                traceback = "".join(data.get("traceback", []))
                return ExecutionError(
                    f"{data.get('node_type')} (node {data.get('node_id')}) failed: {data.get('exception_message')}\n{traceback}",
                    node_type=data.get("node_type"), exception_message=data.get("exception_message", ""),
                    traceback=traceback)
            if kind == "execution_interrupted":
                return ExecutionError("execution interrupted", node_type=data.get("node_type"),
                                      exception_message="interrupted")
        return ExecutionError(f"graph failed: {status}")

    def output_files(self, outputs: dict, key: str = None) -> list[Path]:
        """Files a graph's output nodes reported in their UI results (images, gifs, videos)."""
        paths = []
        for ui in outputs.values():
            for name, items in ui.items():
                if key is not None and name != key:
                    continue
                for item in items if isinstance(items, list) else []:
                    if isinstance(item, dict) and "filename" in item:
                        folder = {"output": self.output_dir, "temp": self.base_dir / "temp",
                                  "input": self.input_dir}[item.get("type", "output")]
                        paths.append(folder / item.get("subfolder", "") / item["filename"])
        return paths
