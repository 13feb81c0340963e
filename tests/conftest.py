"""Shared fixtures: tiny models, a real ComfyUI (server and in-process), and the helpers the model tests share.

The pack is importable as ``video_edit`` through its packaging (``pip install -e .``, done by
tools/setup/setup_env.sh --test); ``tools/`` and ``tests/`` are on the path through pytest's ``pythonpath``.
Every test that uses a ComfyUI fixture is marked ``comfy`` here, so ``-m "not comfy"`` runs the rest alone.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import pytest
import torch

from comfy_server import ANIMATEDIFF_EVOLVED, THIRD_PARTY, ComfyServer, default_comfyui_path, third_party_pack
from workflow_titles import workflow_file

REPO_ROOT = Path(__file__).resolve().parents[1]
CACHE_DIR = Path(os.environ.get("VE_CACHE_DIR", REPO_ROOT / ".cache"))
COMFY_FIXTURES = {"comfy", "comfy_lib", "sd15", "sd21", "sd21_v", "sdxl", "sdxl_checkpoint", "sdxl_encode"}


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
def other_base_models():
    """Paths of the tiny SD2.x 512 eps checkpoint and the SD2.x 768 v / SDXL UNet-only files (cached, seeded)."""
    from tiny_models import tiny_sd21_base_checkpoint, tiny_sd21_v_unet, tiny_sdxl_unet

    models_dir = CACHE_DIR / "tiny_models"
    return {"sd21_base": tiny_sd21_base_checkpoint(models_dir), "sd21_v_unet": tiny_sd21_v_unet(models_dir),
            "sdxl_unet": tiny_sdxl_unet(models_dir)}


def missing_packs(workflow: str) -> str | None:
    """Why a workflow cannot run or load here (another node pack it needs is absent from ../shared/third_party),
    or None."""
    import sys

    if str(default_comfyui_path()) not in sys.path:  # workflow_graphs builds with ComfyUI's GraphBuilder
        sys.path.insert(0, str(default_comfyui_path()))
    from workflow_graphs import other_packs

    missing = [name for name in other_packs(workflow) if third_party_pack(name) is None]
    return (f"{workflow} not tested: it needs {', '.join(missing)}, absent from {THIRD_PARTY} (a clone without "
            "../shared); get it at the commit in ../shared/third_party/README.md to run it") if missing else None


def skip_without_packs(workflow: str) -> None:
    reason = missing_packs(workflow)
    if reason:
        pytest.skip(reason)


@pytest.fixture(scope="session")
def animatediff():
    """AnimateDiff-Evolved's folder (../shared/third_party) and its random v2 motion module, or None where absent."""
    ade = third_party_pack(ANIMATEDIFF_EVOLVED)
    if ade is None:
        return None
    from tiny_models import random_animatediff_v2

    return {"pack": ade, "motion_module": random_animatediff_v2(CACHE_DIR / "tiny_models", ade)}


@pytest.fixture(scope="session")
def tiny_sdxl():
    """Path of the tiny SDXL checkpoint: the SDXL UNet of ``other_base_models`` with its text encoders and the SD VAE
    (cached, seeded; ~1.35 GB, built in ~17 s)."""
    from tiny_models import tiny_sdxl_checkpoint

    return tiny_sdxl_checkpoint(CACHE_DIR / "tiny_models")


@pytest.fixture(scope="session")
def comfy(tmp_path_factory, tiny_models, animatediff):
    """A running ComfyUI server with this pack and the tiny models installed, and AnimateDiff-Evolved with its
    random motion module where ../shared has it."""
    server = ComfyServer(tmp_path_factory.mktemp("comfyui"), other_packs=(animatediff["pack"],) if animatediff else ())
    server.checkpoint_name = server.add_model("checkpoints", tiny_models["checkpoint"])
    server.controlnet_name = server.add_model("controlnet", tiny_models["controlnet"])
    if animatediff:
        server.motion_module_name = server.add_model("animatediff_models", animatediff["motion_module"])
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
def sd21(comfy_lib, other_base_models):
    """The tiny SD2.x 512 (eps, "2.1-base") checkpoint loaded by ComfyUI's own loader: (model, clip, vae)."""
    import comfy.sd

    model, clip, vae, _ = comfy.sd.load_checkpoint_guess_config(
        str(other_base_models["sd21_base"]), output_vae=True, output_clip=True)
    return model, clip, vae


@pytest.fixture(scope="session")
def sd21_v(comfy_lib, other_base_models):
    """The tiny SD2.x 768-style UNet, detected as v-prediction by ComfyUI's loader (a MODEL; no text encoder)."""
    import comfy.sd

    return comfy.sd.load_diffusion_model(str(other_base_models["sd21_v_unet"]))


@pytest.fixture(scope="session")
def sdxl(comfy_lib, other_base_models):
    """The tiny SDXL UNet loaded by ComfyUI's loader (a MODEL; no text encoder: use ``sdxl_conditioning``)."""
    import comfy.sd

    return comfy.sd.load_diffusion_model(str(other_base_models["sdxl_unet"]))


@pytest.fixture(scope="session")
def sdxl_checkpoint(comfy_lib, tiny_sdxl):
    """The tiny SDXL checkpoint loaded by ComfyUI's own loader: (model, clip, vae), clip with CLIP-L and bigG (computing
    in float32: on the CPU, ComfyUI's float16 makes each bigG encode take seconds)."""
    import comfy.sd

    model, clip, vae, _ = comfy.sd.load_checkpoint_guess_config(str(tiny_sdxl), output_vae=True, output_clip=True,
                                                                te_model_options={"dtype": torch.float32})
    return model, clip, vae


@pytest.fixture(scope="session")
def sdxl_encode(sdxl_checkpoint):
    """Text -> SDXL CONDITIONING with the tiny SDXL checkpoint's text encoders (CLIPTextEncode), once per text."""
    import functools

    clip = sdxl_checkpoint[1]
    return functools.cache(lambda text: clip.encode_from_tokens_scheduled(clip.tokenize(text)))


def sdxl_conditioning(seed: int, size: int = 64):
    """SDXL CONDITIONING without its text encoders: a seeded 2048-wide context and 1280-wide pooled output, with
    the size entries ComfyUI's SDXL encode adds (model_base.SDXL.encode_adm reads them)."""
    generator = torch.Generator().manual_seed(seed)
    context = torch.randn(1, 77, 2048, generator=generator)
    pooled = torch.randn(1, 1280, generator=generator)
    return [[context, {"pooled_output": pooled, "width": size, "height": size, "target_width": size,
                       "target_height": size, "crop_w": 0, "crop_h": 0}]]


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
def demo_settings(comfy, other_base_models, tiny_sdxl, animatediff):
    """The demo's settings (tools/demo.py) at the smallest size the tests run workflows at: the tiny models, a
    sample clip, 4 frames of 64x64, 2 steps (every workflow is cut by workflow_graphs.shrink, as the demo cuts it);
    workflows on SD2.1-base get the tiny SD2.1 checkpoint, those on SDXL the tiny SDXL one, the AnimateDiff ones
    (where ../shared has ADE) the random full-size SD1.5 and the random motion module."""
    from demo import Settings
    from sample_clip import write_sample_clip
    from tiny_models import full_size_sd15_checkpoint

    write_sample_clip(comfy.input_dir / "skier.mp4", frames=20, size=96)
    files = dict(ckpt_name=comfy.checkpoint_name, control_net_name=comfy.controlnet_name, file="skier.mp4",
                 sd21_ckpt_name=comfy.add_model("checkpoints", other_base_models["sd21_base"]),
                 sdxl_ckpt_name=comfy.add_model("checkpoints", tiny_sdxl))
    if animatediff:
        files.update(model_name=comfy.motion_module_name, sd15_full_ckpt_name=comfy.add_model(
            "checkpoints", full_size_sd15_checkpoint(CACHE_DIR / "tiny_models")))
    return Settings(files, frames=4, size=64, steps=2)


def produces_model_files(name: str) -> bool:
    """Workflows that save tuned weights or LoRAs: they run first, others load what they save."""
    types = {node["type"] for node in json.loads(workflow_file(name).read_text())["nodes"]}
    return any(t.startswith("VE_Save") and t != "VE_SaveVideo" for t in types)


def in_run_order(names) -> list[str]:
    return sorted(names, key=lambda name: (not produces_model_files(name), name))


class WorkflowRuns:
    """Every shipped workflow run once on the ``comfy`` server through the demo's entry point (tools/demo.py
    run_with_producer, at ``demo_settings``), on first use: ``runs[name]`` is the run's outputs ``{node id: UI
    result}``. A failed run raises its error (SystemExit, as in the demo) each time it is asked for; one that needs
    a node pack absent here is skipped, the reason named."""

    def __init__(self, server, settings):
        self.server, self.settings = server, settings
        self.outputs: dict[str, dict] = {}
        self.failures: dict[str, str] = {}

    def __getitem__(self, name: str) -> dict:
        from demo import run_with_producer

        skip_without_packs(name)
        if name in self.failures:
            raise SystemExit(self.failures[name])
        if name not in self.outputs:
            try:
                self.outputs[name] = run_with_producer(name, self.server, self.settings)
            except SystemExit as failure:
                self.failures[name] = str(failure)
                raise
        return self.outputs[name]


@pytest.fixture(scope="session")
def workflow_runs(comfy_lib, comfy, demo_settings):
    return WorkflowRuns(comfy, demo_settings)
