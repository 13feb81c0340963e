"""The tiny SD1.5 checkpoint and ControlNet (tools/tiny_models.py) load in ComfyUI like the real ones."""

from __future__ import annotations

import ast
import hashlib
import logging
import re
from types import SimpleNamespace

import pytest
import torch

from conftest import sdxl_conditioning
from tiny_models import (TINY_SD2_UNET_CONFIG, TINY_SD2_V_UNET_CONFIG, TINY_SDXL_UNET_CONFIG, TINY_UNET_CONFIG,
                         tiny_controlnet, tiny_sd15_checkpoint, tiny_unet_diffusers_config)

# What ComfyUI logs when a state dict does not fit the model it built (comfy/sd.py, model_base.py,
# controlnet.py). "clip missing" is checked separately: real SD1.5 files lack text_projection too.
KEY_PROBLEMS = re.compile(r"unet missing|unet unexpected|Missing VAE keys|Leftover VAE keys|clip unexpected|"
                          r"left over keys|missing controlnet keys|unexpected controlnet keys|leftover keys|no match")
CLIP_MISSING_OK = {"clip_l.logit_scale", "clip_l.transformer.text_projection.weight", "clip_h.logit_scale",
                   "clip_g.logit_scale"}


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def _logged(fn, *args, **kwargs):
    """Call ``fn`` with every log record down to DEBUG captured; return (result, messages)."""
    handler, root = _Records(), logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        return fn(*args, **kwargs), handler.messages
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def _key_problems(messages: list[str]) -> list[str]:
    problems = [m for m in messages if KEY_PROBLEMS.search(m)]
    for m in messages:
        if m.startswith("clip missing"):
            missing = set(ast.literal_eval(m.split(":", 1)[1].strip()))
            if not missing <= CLIP_MISSING_OK:
                problems.append(m)
    return problems


def _sha256(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


@pytest.fixture(scope="module")
def loaded(comfy_lib, tiny_models):
    import comfy.sd

    (model, clip, vae, _), log = _logged(comfy.sd.load_checkpoint_guess_config, str(tiny_models["checkpoint"]),
                                         output_vae=True, output_clip=True)
    return SimpleNamespace(model=model, clip=clip, vae=vae, log=log)


@pytest.fixture(scope="module")
def encode(loaded):
    def encode(text: str) -> torch.Tensor:
        return loaded.clip.encode_from_tokens(loaded.clip.tokenize(text))

    return encode


def test_checkpoint_is_detected_as_sd15_with_the_tiny_unet(loaded):
    import comfy.supported_models

    config = loaded.model.model.model_config
    assert type(config) is comfy.supported_models.SD15
    assert {k: v for k, v in config.unet_config.items() if k != "dtype"} == TINY_UNET_CONFIG
    unet = loaded.model.model.diffusion_model
    assert len(unet.input_blocks) == 4 and len(unet.output_blocks) == 4
    heads = [m.heads for m in unet.modules() if type(m).__name__ == "CrossAttention"]
    assert heads and set(heads) == {8}


def test_checkpoint_keys_fit_unet_vae_and_clip(loaded):
    assert loaded.model is not None and loaded.clip is not None and loaded.vae is not None
    assert _key_problems(loaded.log) == []
    assert any(m.startswith("clip missing") for m in loaded.log)  # the log was captured at DEBUG


def test_clip_encodes_a_prompt(encode):
    cat, dog = encode("a photo of a cat"), encode("a photo of a dog")
    assert cat.shape == (1, 77, 768)
    assert torch.isfinite(cat).all()
    assert 0.1 < cat.std() < 10
    assert (cat - dog).abs().max() > 1e-3
    assert torch.equal(cat, encode("a photo of a cat"))


def test_vae_round_trip_is_finite(loaded):
    ramp = torch.linspace(0, 1, 64)
    image = torch.stack([ramp[None, :].expand(64, 64), ramp[:, None].expand(64, 64), 1 - ramp[None, :].expand(64, 64)],
                        dim=-1)[None]
    latent = loaded.vae.encode(image)
    assert latent.shape == (1, 4, 8, 8)
    assert torch.isfinite(latent).all() and latent.std() > 1e-3
    assert (latent - loaded.vae.encode(1 - image)).abs().max() > 1e-3
    decoded = loaded.vae.decode(latent)
    assert decoded.shape == (1, 64, 64, 3)
    assert torch.isfinite(decoded).all()
    assert decoded.std() > 1e-3


def test_unet_forward_is_finite_and_conditioned(loaded, encode):
    torch.manual_seed(0)
    x = torch.randn(1, 4, 8, 8)
    sigma = torch.tensor([1.0])
    out = loaded.model.model.apply_model(x, sigma, c_crossattn=encode("a cat"))
    assert out.shape == x.shape and torch.isfinite(out).all()
    assert out.abs().max() < 100
    assert (out - loaded.model.model.apply_model(x, sigma, c_crossattn=encode("a dog"))).abs().max() > 1e-4
    assert (out - loaded.model.model.apply_model(x, sigma * 2, c_crossattn=encode("a cat"))).abs().max() > 1e-4


def test_generation_is_deterministic_and_seeded(tiny_models, tmp_path):
    checkpoint, controlnet = tiny_models["checkpoint"], tiny_models["controlnet"]
    assert checkpoint.name == "tiny_sd15_seed0.safetensors" and controlnet.name == "tiny_controlnet_seed0.safetensors"
    again = tiny_sd15_checkpoint(tmp_path)
    assert _sha256(again) == _sha256(checkpoint)
    again.unlink()
    assert _sha256(tiny_controlnet(tmp_path)) == _sha256(controlnet)
    other = tiny_controlnet(tmp_path, seed=1)
    assert other.name == "tiny_controlnet_seed1.safetensors"
    assert _sha256(other) != _sha256(controlnet)
    mtime = other.stat().st_mtime_ns
    assert tiny_controlnet(tmp_path, seed=1) == other and other.stat().st_mtime_ns == mtime  # reused
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp files left
    for path in tmp_path.iterdir():
        path.unlink()


def test_controlnet_hint_changes_ksampler_output(loaded, encode, tiny_models):
    import comfy.controlnet
    import nodes

    control_net, log = _logged(comfy.controlnet.load_controlnet, str(tiny_models["controlnet"]))
    assert isinstance(control_net, comfy.controlnet.ControlNet)
    assert _key_problems(log) == []

    positive = [[encode("a cat"), {}]]
    negative = [[encode(""), {}]]
    latent = {"samples": torch.zeros(1, 4, 8, 8)}
    stripes = torch.zeros(1, 64, 64, 3)
    stripes[:, :, ::16] = 1.0

    def sample(hint, strength):
        pos, neg = nodes.ControlNetApplyAdvanced().apply_controlnet(positive, negative, control_net, hint,
                                                                    strength, 0.0, 1.0)
        return nodes.common_ksampler(loaded.model, 7, 2, 3.0, "euler", "normal", pos, neg, latent)[0]["samples"]

    plain, striped, inverted = sample(stripes, 0.0), sample(stripes, 1.0), sample(1 - stripes, 1.0)
    for out in (plain, striped, inverted):
        assert out.shape == (1, 4, 8, 8) and torch.isfinite(out).all()
    scale = plain.abs().mean()
    assert (striped - plain).abs().mean() > 0.05 * scale  # the ControlNet acts
    assert (striped - inverted).abs().mean() > 0.05 * scale  # and what it does depends on the hint
    assert torch.equal(plain, sample(1 - stripes, 0.0))  # strength 0: the hint is ignored


def test_unet_converts_to_the_matching_diffusers_model(loaded, tiny_models):
    pytest.importorskip("diffusers")
    from diffusers import UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint
    from safetensors.torch import load_file

    checkpoint = {k: v.float() for k, v in load_file(str(tiny_models["checkpoint"])).items()
                  if k.startswith("model.diffusion_model.")}
    reference = UNet2DConditionModel(**tiny_unet_diffusers_config()).eval()
    converted = convert_ldm_unet_checkpoint(checkpoint, reference.config)
    missing, unexpected = reference.load_state_dict(converted, strict=False)
    assert missing == [] and unexpected == []

    torch.manual_seed(0)
    x, t, context = torch.randn(2, 4, 8, 8), torch.tensor([999.0, 10.0]), torch.randn(2, 77, 768)
    with torch.no_grad():
        expected = reference(x, t, encoder_hidden_states=context).sample
        actual = loaded.model.model.diffusion_model(x, timesteps=t, context=context)
    assert torch.isfinite(expected).all()
    assert (actual - expected).abs().max() <= 1e-3 * expected.abs().max()


def test_full_size_config_is_sd15_and_has_the_diffusers_layout(comfy_lib):
    """The random full-size SD1.5 the GPU benchmarks build: ComfyUI detects it as SD1.5 and it converts, key for key
    and shape for shape, into the diffusers SD1.5 UNet (shapes only: built on the meta device)."""
    pytest.importorskip("diffusers")
    import comfy.model_detection
    import comfy.ops
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel
    from diffusers import UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint
    from tiny_models import FULL_UNET_CONFIG

    unet = UNetModel(**FULL_UNET_CONFIG, dtype=torch.float32, device="meta", operations=comfy.ops.disable_weight_init)
    checkpoint = {f"model.diffusion_model.{k}": v for k, v in unet.state_dict().items()}
    config = comfy.model_detection.model_config_from_unet(checkpoint, "model.diffusion_model.")
    assert type(config).__name__ == "SD15"
    with torch.device("meta"):
        reference = UNet2DConditionModel(**tiny_unet_diffusers_config(full_size=True))
    expected = reference.state_dict()
    converted = convert_ldm_unet_checkpoint(checkpoint, reference.config)
    assert set(converted) == set(expected)
    assert all(converted[k].shape == expected[k].shape for k in expected)


# ----- the other base models: SD2.x (eps and v) and SDXL -------------------------------------------

def _detected_config(model) -> dict:
    return {k: v for k, v in model.model.model_config.unet_config.items() if k != "dtype"}



def test_sd21_base_checkpoint_is_detected_as_sd2_eps_with_clip_h(comfy_lib, other_base_models):
    import comfy.model_base
    import comfy.sd
    import comfy.supported_models

    (model, clip, vae, _), log = _logged(comfy.sd.load_checkpoint_guess_config, str(other_base_models["sd21_base"]),
                                         output_vae=True, output_clip=True)
    assert type(model.model.model_config) is comfy.supported_models.SD20
    assert model.model.model_type == comfy.model_base.ModelType.EPS
    assert _detected_config(model) == {**TINY_SD2_UNET_CONFIG, "attn_precision": torch.float32}
    assert _key_problems(log) == [] and any(m.startswith("clip missing") for m in log)
    context = clip.encode_from_tokens(clip.tokenize("a photo of a cat"))
    assert context.shape == (1, 77, 1024) and torch.isfinite(context).all()
    assert vae is not None


def test_sdxl_checkpoint_is_detected_as_sdxl_with_both_text_encoders(comfy_lib, tiny_sdxl):
    """SDXL's checkpoint layout with the tiny SDXL UNet; the fp8-stored text encoders load and encode."""
    import comfy.model_base
    import comfy.sd
    import comfy.supported_models
    from safetensors import safe_open

    with safe_open(str(tiny_sdxl), "pt") as f:
        dtypes = {k.split(".")[0] + "." + k.split(".")[2]: f.get_slice(k).get_dtype() for k in f.keys()
                  if k.startswith("conditioner.")}
    assert dtypes == {"conditioner.0": "F8_E4M3", "conditioner.1": "F8_E4M3"}
    (model, clip, vae, _), log = _logged(comfy.sd.load_checkpoint_guess_config, str(tiny_sdxl), output_vae=True,
                                         output_clip=True)
    assert type(model.model.model_config) is comfy.supported_models.SDXL
    assert model.model.model_type == comfy.model_base.ModelType.EPS
    assert _detected_config(model) == TINY_SDXL_UNET_CONFIG
    assert _key_problems(log) == []  # clip missing: logit_scale, CLIP-L's projection
    cond = clip.encode_from_tokens_scheduled(clip.tokenize("a photo of a cat"))
    assert cond[0][0].shape == (1, 77, 2048) and cond[0][1]["pooled_output"].shape == (1, 1280)
    assert torch.isfinite(cond[0][0]).all() and vae is not None


@pytest.mark.parametrize("name, config_class, model_type, config", [
    ("sd21_v_unet", "SD20", "V_PREDICTION", {**TINY_SD2_V_UNET_CONFIG, "attn_precision": torch.float32}),
    ("sdxl_unet", "SDXL", "EPS", TINY_SDXL_UNET_CONFIG),
])
def test_unet_files_are_detected_as_their_family(comfy_lib, other_base_models, name, config_class, model_type, config):
    import comfy.model_base
    import comfy.sd

    model, log = _logged(comfy.sd.load_diffusion_model, str(other_base_models[name]))
    assert type(model.model.model_config).__name__ == config_class
    assert model.model.model_type == getattr(comfy.model_base.ModelType, model_type)
    assert _detected_config(model) == config
    assert _key_problems(log) == []


def test_sd2_and_sdxl_unets_run_finite_and_conditioned(sd21, sd21_v, sdxl):
    torch.manual_seed(0)
    x, sigma = torch.randn(1, 4, 8, 8), torch.tensor([1.0])
    for model, width in ((sd21[0], 1024), (sd21_v, 1024)):
        cat, dog = torch.randn(2, 1, 77, width)
        out = model.model.apply_model(x, sigma, c_crossattn=cat)
        assert out.shape == x.shape and torch.isfinite(out).all() and out.abs().max() < 100
        assert (out - model.model.apply_model(x, sigma, c_crossattn=dog)).abs().max() > 1e-4
    outs = []
    for seed in (0, 1):
        context, extra = sdxl_conditioning(seed)[0]
        adm = sdxl.model.encode_adm(**extra)
        outs.append(sdxl.model.apply_model(x, sigma, c_crossattn=context, y=adm))
    assert outs[0].shape == x.shape and torch.isfinite(outs[0]).all()
    assert (outs[0] - outs[1]).abs().max() > 1e-4

