"""Shared fixtures: the pack as an importable package, tiny models, a real ComfyUI (server and in-process)."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "tools"))

from comfy_server import ComfyServer, default_comfyui_path  # noqa: E402


def _register_pack_as(name: str):
    """Import this repository as package ``name`` (ComfyUI imports it from custom_nodes the same way)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "__init__.py",
                                                  submodule_search_locations=[str(REPO_ROOT)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


_register_pack_as("video_edit")

CACHE_DIR = Path(os.environ.get("VE_CACHE_DIR", REPO_ROOT / ".cache"))


@pytest.fixture(scope="session")
def comfy_lib():
    """ComfyUI's own modules in this process (``import comfy.sd`` etc.), on the CPU."""
    path = str(default_comfyui_path())
    if path not in sys.path:
        sys.path.insert(0, path)
    from comfy.cli_args import args

    args.cpu = True
    import comfy.model_management  # noqa: F401  (selects the CPU device)

    return path


@pytest.fixture(scope="session")
def tiny_models():
    """Paths of the tiny random-weight SD1.5 checkpoint and its matching ControlNet (cached, seeded)."""
    from tiny_models import tiny_controlnet, tiny_sd15_checkpoint

    models_dir = CACHE_DIR / "tiny_models"
    return {"checkpoint": tiny_sd15_checkpoint(models_dir), "controlnet": tiny_controlnet(models_dir)}


@pytest.fixture(scope="session")
def comfy(tmp_path_factory, tiny_models):
    """A running ComfyUI server with this pack and the tiny models installed."""
    server = ComfyServer(tmp_path_factory.mktemp("comfyui"))
    server.checkpoint_name = server.add_model("checkpoints", tiny_models["checkpoint"])
    server.controlnet_name = server.add_model("controlnet", tiny_models["controlnet"])
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def sd15(comfy_lib, tiny_models):
    """The tiny SD1.5 checkpoint loaded in-process by ComfyUI's own loader: (model, clip, vae)."""
    import comfy.sd

    model, clip, vae, _ = comfy.sd.load_checkpoint_guess_config(
        str(tiny_models["checkpoint"]), output_vae=True, output_clip=True)
    return model, clip, vae


@pytest.fixture(scope="session")
def object_info(comfy):
    return comfy.object_info()


@pytest.fixture(scope="session")
def tiny_workflow_inputs(comfy):
    """Inputs that shrink any workflow to the tiny model: a sample clip, 4 frames of 64x64, 2 steps."""
    from sample_clip import write_sample_clip

    write_sample_clip(comfy.input_dir / "skier.mp4", frames=20, size=96)
    return dict(ckpt_name=comfy.checkpoint_name, control_net_name=comfy.controlnet_name, file="skier.mp4",
                n_frames=4, width=64, height=64, steps=2, batch_size=4, keyframe_chunk_size=2)
