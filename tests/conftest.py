"""Shared fixtures: tiny models, a real ComfyUI (server and in-process), and the helpers the model tests share.

The pack is importable as ``video_edit`` through its packaging (``pip install -e .``, done by
tools/setup/setup_env.sh --test); ``tools/`` and ``tests/`` are on the path through pytest's ``pythonpath``.
Every test that uses a ComfyUI fixture is marked ``comfy`` here, so ``-m "not comfy"`` runs the rest alone.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest
import torch

from comfy_server import ComfyServer, default_comfyui_path

REPO_ROOT = Path(__file__).resolve().parents[1]
CACHE_DIR = Path(os.environ.get("VE_CACHE_DIR", REPO_ROOT / ".cache"))
COMFY_FIXTURES = {"comfy", "comfy_lib", "sd15"}


def pytest_collection_modifyitems(items):
    for item in items:
        if COMFY_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.comfy)


@pytest.fixture(scope="session")
def comfy_lib(tmp_path_factory):
    """ComfyUI's own modules in this process (``import comfy.sd`` etc.), on the CPU, with a user folder of its own
    (saves journal there, never in the ComfyUI checkout)."""
    import sys

    path = str(default_comfyui_path())
    if path not in sys.path:
        sys.path.insert(0, path)
    from comfy.cli_args import args

    args.cpu = True
    import comfy.model_management  # noqa: F401 (importing it selects the CPU device)
    import folder_paths

    folder_paths.set_user_directory(str(tmp_path_factory.mktemp("comfy_user")))

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
def encode(sd15):
    """Text -> CONDITIONING with the tiny model's CLIP."""
    clip = sd15[1]
    return lambda text: clip.encode_from_tokens_scheduled(clip.tokenize(text))


@pytest.fixture(scope="session")
def denoise(comfy_lib):
    """``denoise(model, video, positive, negative=None, sigma=4.0, cfg=1.0)``: the model's x0 prediction at
    ``sigma`` (one Euler step to 0) through ComfyUI's own sampler stack."""
    import comfy.sample
    import comfy.samplers

    def run(model, video, positive, negative=None, sigma=4.0, cfg=1.0):
        return comfy.sample.sample_custom(model, torch.zeros_like(video), cfg, comfy.samplers.sampler_object("euler"),
                                          torch.tensor([sigma, 0.0]), positive, negative or positive, video,
                                          disable_pbar=True)

    return run


@pytest.fixture(scope="session")
def model_state():
    """What a node could alter on a MODEL: patches, options, wrappers, injections, attachments, extra models."""
    def state(model):
        return (copy.deepcopy({k: [id(p) for p in v] for k, v in model.patches.items()}), repr(model.model_options),
                repr(model.wrappers), repr(model.injections), repr(model.attachments), repr(model.additional_models),
                model.patches_uuid)

    return state


@pytest.fixture(scope="session")
def object_info(comfy):
    return comfy.object_info()


@pytest.fixture(scope="session")
def demo_settings(comfy):
    """The demo's settings (tools/demo.py) at the smallest size the tests run workflows at: the tiny models, a
    sample clip, 4 frames of 64x64, 2 steps (every workflow is cut by workflow_graphs.shrink, as the demo cuts it)."""
    from demo import Settings
    from sample_clip import write_sample_clip

    write_sample_clip(comfy.input_dir / "skier.mp4", frames=20, size=96)
    files = dict(ckpt_name=comfy.checkpoint_name, control_net_name=comfy.controlnet_name, file="skier.mp4")
    return Settings(files, frames=4, size=64, steps=2)
