"""Tiny random-weight SD1.5 / SD2.x / SDXL models and a ControlNet for tests: real file layouts, seconds to build.

The checkpoint is an original (LDM) single-file SD1.5 checkpoint that ComfyUI's CheckpointLoaderSimple
detects as SD1.5: a shrunken UNet (``TINY_UNET_CONFIG``), with the full-size CLIP-L text encoder and
the full-size KL VAE (ComfyUI always builds those at full size). The ControlNet is an original
single-file ControlNet (``control_model.*``) for that UNet. The modules are built with ComfyUI's own
classes, so the keys are exactly the ones ComfyUI loads; the weights are seeded PyTorch default
inits (also where the originals start at zero), stored in fp16. Nothing is trained: outputs are
noise, but finite, deterministic and shaped like the real thing.

The other base models, each the smallest layout ComfyUI's model detection (comfy/model_detection.py,
supported_models.py) still files under the real model's class; channel multipliers and ResNet counts
are not part of its match:
- SD2.x 512 (eps, "2.1-base"): a checkpoint like the SD1.5 one with a 1024-wide context, linear
  projections and 64-channel heads, the full-size OpenCLIP-H text encoder and the SD VAE.
- SD2.x 768 (v-prediction): a UNet-only file (models/diffusion_models). ComfyUI tells v from eps by the
  spread of ``output_blocks.11.1.transformer_blocks.0.norm1.bias`` (SD20.model_type), so this UNet has
  12 output blocks (4 levels of 320 channels, 2 ResNets each) and that bias drawn wide.
- AnimateDiff v2 motion module: AnimateDiff-Evolved's own ``MotionModule`` classes at SD1.5's real channels
  (down 4x2, up 4x3, mid 1, a positional encoding of 32 frames), every weight random so it changes what it
  sees; ADE loads it on the full-size SD1.5 (its motion modules need SD1.5's channel layout).
- SDXL: a UNet-only file with SDXL's input transformer depths [0, 0, 2, 2, 10, 10] (the match), no
  attention at the top level, the 2816-wide added conditioning, 320 channels at every level (tests feed it
  CONDITIONING tensors directly). The SDXL checkpoint is that UNet with the SD VAE and the full-size text
  encoders (CLIP-L + OpenCLIP-bigG) under SDXL's checkpoint keys (``conditioner.embedders.0.transformer.``,
  ``conditioner.embedders.1.model.``); their weights are stored in float8_e4m3fn (ComfyUI loads fp8 weights
  and computes in its own dtype), which keeps the file at ~1.35 GB instead of 1.6 GB of fp16 text encoder.

    python tools/tiny_models.py MODELS_DIR [--seed N]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import uuid
from contextlib import contextmanager
from pathlib import Path

import torch

VERSION = "4"  # bump when the generated weights change, so cached files are rebuilt

# The tiny UNet in ComfyUI's openaimodel.UNetModel terms: exactly the config ComfyUI's model detection
# reads back from the checkpoint (plus SD15's num_heads / num_head_channels).
TINY_UNET_CONFIG = {
    "use_checkpoint": False,
    "image_size": 32,
    "use_spatial_transformer": True,
    "legacy": False,
    "adm_in_channels": None,
    "in_channels": 4,
    "out_channels": 4,
    "model_channels": 320,
    "num_res_blocks": [1, 1],
    "transformer_depth": [1, 1],          # one transformer block after each input ResBlock
    "transformer_depth_output": [1, 1, 1, 1],
    "channel_mult": [1, 2],               # 320 and 640 channels, one downsample
    "transformer_depth_middle": 1,
    "use_linear_in_transformer": False,   # conv proj_in / proj_out, as SD1.x
    "context_dim": 768,
    "use_temporal_resblock": False,
    "use_temporal_attention": False,
    "num_heads": 8,                       # head dim 40 at 320 channels, 80 at 640, as SD1.5
    "num_head_channels": -1,
}

# SD2.x 512 (2.1-base): SD20's match (1024 context, linear proj_in/proj_out) on the tiny layout, SD2's heads.
TINY_SD2_UNET_CONFIG = {
    **TINY_UNET_CONFIG,
    "use_linear_in_transformer": True,
    "context_dim": 1024,
    "num_heads": -1,
    "num_head_channels": 64,              # 5 heads at 320 channels, as SD2.x
}

# SD2.x 768 (v-prediction): 12 output blocks so that output_blocks.11.1 (ComfyUI's v/eps tell) exists.
TINY_SD2_V_UNET_CONFIG = {
    **TINY_SD2_UNET_CONFIG,
    "num_res_blocks": [2, 2, 2, 2],
    "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0],
    "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
    "channel_mult": [1, 1, 1, 1],
}
V_PREDICTION_TELL = "output_blocks.11.1.transformer_blocks.0.norm1.bias"

# SDXL: its match is transformer_depth [0, 0, 2, 2, 10, 10], 2048 context, 2816 added conditioning.
TINY_SDXL_UNET_CONFIG = {
    **TINY_SD2_UNET_CONFIG,
    "num_classes": "sequential",
    "adm_in_channels": 2816,
    "num_res_blocks": [2, 2, 2],
    "transformer_depth": [0, 0, 2, 2, 10, 10],
    "transformer_depth_output": [0, 0, 0, 2, 2, 2, 2, 2, 2],
    "transformer_depth_middle": 2,
    "channel_mult": [1, 1, 1],
    "context_dim": 2048,
}

# The real SD1.5 UNet's layout (random weights for benchmarks at true size): 4 levels, 2 ResNets each.
FULL_UNET_CONFIG = {
    **TINY_UNET_CONFIG,
    "num_res_blocks": [2, 2, 2, 2],
    "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0],
    "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],  # ComfyUI pops from the end: deepest first
    "channel_mult": [1, 2, 4, 4],
}

# ComfyUI's SD1.x VAE (comfy.sd.VAE builds this from a 4-channel-latent KL VAE state dict).
SD_VAE_DDCONFIG = {
    "double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 128,
    "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0,
}

_SALT = {"unet": 0, "clip": 1, "vae": 2, "controlnet": 3, "sd2_unet": 4, "sd2_clip": 5, "sd2_v_unet": 6,
         "sdxl_unet": 7, "motion_module": 8, "sdxl_clip_g": 9}
SD15_CHANNELS = (320, 640, 1280, 1280)  # SD1.5's levels
_SILU_GAIN = 1.68  # 1 / sqrt(E[silu(z)^2]) for z ~ N(0, 1): keeps a conv + SiLU stack's variance


def tiny_unet_diffusers_config(full_size: bool = False) -> dict:
    """The diffusers ``UNet2DConditionModel`` config with the layout of ``TINY_UNET_CONFIG`` (or the full SD1.5)."""
    if full_size:
        return {**tiny_unet_diffusers_config(), "sample_size": 64, "block_out_channels": (320, 640, 1280, 1280),
                "layers_per_block": 2,
                "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3}
    return {
        "sample_size": 8,
        "in_channels": 4,
        "out_channels": 4,
        "center_input_sample": False,
        "flip_sin_to_cos": True,
        "freq_shift": 0,
        "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        "mid_block_type": "UNetMidBlock2DCrossAttn",
        "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        "only_cross_attention": False,
        "block_out_channels": (320, 640),
        "layers_per_block": 1,
        "downsample_padding": 1,
        "mid_block_scale_factor": 1,
        "act_fn": "silu",
        "norm_num_groups": 32,
        "norm_eps": 1e-5,
        "cross_attention_dim": 768,
        "transformer_layers_per_block": 1,
        "attention_head_dim": 8,  # SD1.x convention: this is the number of heads
        "use_linear_projection": False,
        "upcast_attention": False,
    }


# ----- building the modules ------------------------------------------------------------------------

def _import_comfy():
    """Make ComfyUI's modules importable the way the tests' ``comfy_lib`` fixture does (CPU, no argv)."""
    if "comfy.model_management" not in sys.modules:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from comfy_server import default_comfyui_path

        path = str(default_comfyui_path())
        if path not in sys.path:
            sys.path.insert(0, path)
        import comfy.options

        comfy.options.enable_args_parsing(False)
        from comfy.cli_args import args

        args.cpu = True
    import comfy.ops

    return comfy.ops.disable_weight_init


_TORCH_BASES = (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d,
                torch.nn.GroupNorm, torch.nn.LayerNorm, torch.nn.Embedding)


@contextmanager
def _seeded(seed: int, part: str):
    """Seed the global CPU generator for one component, restoring its state afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed * 16 + _SALT[part])
        yield


def _init_(module: torch.nn.Module) -> torch.nn.Module:
    """Give every parameter PyTorch's default init (ComfyUI's ops skip init and zero_module zeroes)."""
    for sub in module.modules():
        if not list(sub.parameters(recurse=False)):
            continue
        base = next((b for b in _TORCH_BASES if isinstance(sub, b)), None)
        if base is None:
            raise TypeError(f"no init for {type(sub).__name__}")
        base.reset_parameters(sub)
    return module


def _state_dict(module: torch.nn.Module, prefix: str, dtype: torch.dtype = torch.float16) -> dict[str, torch.Tensor]:
    return {prefix + k: v.to(dtype).contiguous() for k, v in module.state_dict().items()}


def _unet_state_dict(seed: int, config: dict = TINY_UNET_CONFIG, part: str = "unet",
                     prefix: str = "model.diffusion_model.") -> dict[str, torch.Tensor]:
    ops = _import_comfy()
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    with _seeded(seed, part):
        unet = _init_(UNetModel(**config, dtype=torch.float32, device="cpu", operations=ops))
        if part == "sd2_v_unet":
            torch.nn.init.normal_(unet.get_submodule(V_PREDICTION_TELL.rsplit(".", 1)[0]).bias, std=0.2)
    return _state_dict(unet, prefix)


def _open_clip_state_dict(seed: int, config_file: Path, part: str, prefix: str,
                          dtype: torch.dtype = torch.float16) -> dict[str, torch.Tensor]:
    """A full-size OpenCLIP text encoder (SD2.x's H, SDXL's bigG) in the original checkpoints' (OpenCLIP) key
    layout under ``prefix``."""
    ops = _import_comfy()
    import comfy.clip_model
    import comfy.diffusers_convert

    with _seeded(seed, part):
        clip = _init_(comfy.clip_model.CLIPTextModel(json.loads(config_file.read_text()), torch.float32, "cpu", ops))
    return comfy.diffusers_convert.convert_text_enc_state_dict_v20(_state_dict(clip, prefix + "transformer.", dtype))


def _sd2_clip_state_dict(seed: int) -> dict[str, torch.Tensor]:
    """The full-size OpenCLIP-H text encoder of SD2.x."""
    _import_comfy()
    import comfy.text_encoders.sd2_clip

    config = Path(comfy.text_encoders.sd2_clip.__file__).parent / "sd2_clip_config.json"
    return _open_clip_state_dict(seed, config, "sd2_clip", "cond_stage_model.model.")


def _clip_state_dict(seed: int, prefix: str = "cond_stage_model.transformer.",
                     dtype: torch.dtype = torch.float16) -> dict[str, torch.Tensor]:
    ops = _import_comfy()
    import comfy.clip_model
    import comfy.sd1_clip

    config = json.loads((Path(comfy.sd1_clip.__file__).parent / "sd1_clip_config.json").read_text())
    with _seeded(seed, "clip"):
        clip = _init_(comfy.clip_model.CLIPTextModel(config, torch.float32, "cpu", ops))
    # Like the original SD1.5 file: the HF CLIPTextModel's weights only (no text_projection).
    return {k: v for k, v in _state_dict(clip, prefix, dtype).items() if k.startswith(prefix + "text_model.")}


def _vae_state_dict(seed: int) -> dict[str, torch.Tensor]:
    _import_comfy()
    from comfy.ldm.models.autoencoder import AutoencoderKL

    with _seeded(seed, "vae"):
        vae = _init_(AutoencoderKL(ddconfig=dict(SD_VAE_DDCONFIG), embed_dim=4))
    return _state_dict(vae, "first_stage_model.")


def _controlnet_state_dict(seed: int) -> dict[str, torch.Tensor]:
    ops = _import_comfy()
    from comfy.cldm.cldm import ControlNet

    config = {k: v for k, v in TINY_UNET_CONFIG.items() if k != "out_channels"}
    with _seeded(seed, "controlnet"):
        net = _init_(ControlNet(**config, hint_channels=3, dtype=torch.float32, device="cpu", operations=ops))
        # The hint block is 8 convs with SiLU and no norms: with default inits the hint's content dies
        # out within a few layers and only the biases come through. Keep its variance instead.
        for conv in net.input_hint_block.modules():
            if isinstance(conv, torch.nn.Conv2d):
                torch.nn.init.normal_(conv.weight, std=_SILU_GAIN / conv.weight[0].numel() ** 0.5)
                torch.nn.init.zeros_(conv.bias)
    sd = _state_dict(net, "control_model.")
    # As a real ControlNet starts: the encoder is a copy of the base UNet's (same seed). The hint block,
    # zero_convs and middle_block_out keep their small random init (not zero), so hints change the output.
    unet = _unet_state_dict(seed)
    for key in sd:
        unet_key = "model.diffusion_model." + key[len("control_model."):]
        if unet_key in unet:
            sd[key] = unet[unet_key]
    return sd


# ----- files ------------------------------------------------------------------------------------------

def _motion_module_state_dict(seed: int, ade) -> dict[str, torch.Tensor]:
    """A random AnimateDiff v2 motion module from ADE's own MotionModule class (``ade``: ADE's pack module, or its
    folder, then imported here), in fp16: norms near 1, everything else small, the positional encoding as built."""
    if isinstance(ade, (str, Path)):
        _import_comfy()
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from comfy_server import ANIMATEDIFF_EVOLVED_MODULE, import_pack

        ade = import_pack(Path(ade), ANIMATEDIFF_EVOLVED_MODULE)
    mm = ade.animatediff.motion_module_ad
    with _seeded(seed, "motion_module"):
        parts = {f"down_blocks.{i}": mm.MotionModule(c, temporal_pe_max_len=32, block_type=mm.BlockType.DOWN,
                                                     block_idx=i) for i, c in enumerate(SD15_CHANNELS)}
        parts.update({f"up_blocks.{i}": mm.MotionModule(c, temporal_pe_max_len=32, block_type=mm.BlockType.UP,
                                                        block_idx=i) for i, c in enumerate(reversed(SD15_CHANNELS))})
        parts["mid_block"] = mm.MotionModule(1280, temporal_pe_max_len=32, block_type=mm.BlockType.MID)
        state = {}
        for prefix, module in parts.items():
            for name, tensor in module.state_dict().items():
                if name.endswith("pe"):
                    value = tensor
                elif "norm" in name and name.endswith("weight"):
                    value = 1 + 0.1 * torch.randn(tensor.shape)
                else:
                    value = 0.05 * torch.randn(tensor.shape)
                state[f"{prefix}.{name}"] = value.half().contiguous()
    return state


def _is_current(path: Path) -> bool:
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            return json.loads((f.metadata() or {}).get("tiny_models", "{}")).get("version") == VERSION
    except Exception:
        return False


def _write(path: Path, build, seed: int, kind: str) -> Path:
    """Write ``build(seed)`` to ``path`` atomically, unless a current file is already there."""
    from safetensors.torch import save_file

    path = Path(path)
    if path.is_file() and _is_current(path):
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = build(seed)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        # One metadata entry: safetensors writes several in a random order, and the bytes must repeat.
        info = json.dumps({"version": VERSION, "seed": seed, "kind": kind}, sort_keys=True)
        save_file(tensors, tmp, metadata={"tiny_models": info})
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # save_file creates 0600
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _build_checkpoint(seed: int, unet_config: dict = TINY_UNET_CONFIG) -> dict[str, torch.Tensor]:
    sd = _unet_state_dict(seed, unet_config)
    sd.update(_clip_state_dict(seed))
    sd.update(_vae_state_dict(seed))
    return sd


def _build_sd2_checkpoint(seed: int) -> dict[str, torch.Tensor]:
    sd = _unet_state_dict(seed, TINY_SD2_UNET_CONFIG, "sd2_unet")
    sd.update(_sd2_clip_state_dict(seed))
    sd.update(_vae_state_dict(seed))
    return sd


def _build_sdxl_checkpoint(seed: int) -> dict[str, torch.Tensor]:
    """SDXL's checkpoint layout: the UNet, CLIP-L (``embedders.0``, as SD1.5's) and OpenCLIP-bigG
    (``embedders.1``), both in float8_e4m3fn, and the SD VAE."""
    _import_comfy()
    import comfy.sdxl_clip

    sd = _unet_state_dict(seed, TINY_SDXL_UNET_CONFIG, "sdxl_unet")
    sd.update(_clip_state_dict(seed, "conditioner.embedders.0.transformer.", torch.float8_e4m3fn))
    config = Path(comfy.sdxl_clip.__file__).parent / "clip_config_bigg.json"
    sd.update(_open_clip_state_dict(seed, config, "sdxl_clip_g", "conditioner.embedders.1.model.",
                                    torch.float8_e4m3fn))
    sd.update(_vae_state_dict(seed))
    return sd


def full_size_sd15_checkpoint(models_dir: Path, seed: int = 0) -> Path:
    """``models_dir/full_size_sd15_seed{seed}.safetensors``: random weights in the real SD1.5 shapes (~2 GB)."""
    return _write(Path(models_dir) / f"full_size_sd15_seed{seed}.safetensors",
                  lambda seed: _build_checkpoint(seed, FULL_UNET_CONFIG), seed, "sd15-full-size")


def tiny_sd15_checkpoint(models_dir: Path, seed: int = 0) -> Path:
    """``models_dir/tiny_sd15_seed{seed}.safetensors``: tiny UNet + CLIP-L + SD VAE, LDM layout (~630 MB)."""
    return _write(Path(models_dir) / f"tiny_sd15_seed{seed}.safetensors", _build_checkpoint, seed, "sd15")


def tiny_sd21_base_checkpoint(models_dir: Path, seed: int = 0) -> Path:
    """``models_dir/tiny_sd21_base_seed{seed}.safetensors``: tiny SD2.x eps UNet + OpenCLIP-H + SD VAE (~0.9 GB)."""
    return _write(Path(models_dir) / f"tiny_sd21_base_seed{seed}.safetensors", _build_sd2_checkpoint, seed,
                  "sd21-base")


def tiny_sd21_v_unet(models_dir: Path, seed: int = 0) -> Path:
    """``models_dir/tiny_sd21_v_unet_seed{seed}.safetensors``: a UNet-only file ComfyUI detects as SD2.x v."""
    return _write(Path(models_dir) / f"tiny_sd21_v_unet_seed{seed}.safetensors",
                  lambda seed: _unet_state_dict(seed, TINY_SD2_V_UNET_CONFIG, "sd2_v_unet", ""), seed, "sd21-v-unet")


def tiny_sdxl_unet(models_dir: Path, seed: int = 0) -> Path:
    """``models_dir/tiny_sdxl_unet_seed{seed}.safetensors``: a UNet-only file ComfyUI detects as SDXL."""
    return _write(Path(models_dir) / f"tiny_sdxl_unet_seed{seed}.safetensors",
                  lambda seed: _unet_state_dict(seed, TINY_SDXL_UNET_CONFIG, "sdxl_unet", ""), seed, "sdxl-unet")


def random_animatediff_v2(models_dir: Path, ade, seed: int = 0) -> Path:
    """``models_dir/random_animatediff_v2_seed{seed}.safetensors``: a random AnimateDiff v2 motion module for the
    full-size SD1.5 (~0.9 GB); ``ade`` is AnimateDiff-Evolved's pack module or folder (imported only to build)."""
    return _write(Path(models_dir) / f"random_animatediff_v2_seed{seed}.safetensors",
                  lambda seed: _motion_module_state_dict(seed, ade), seed, "animatediff-v2")


def tiny_sdxl_checkpoint(models_dir: Path, seed: int = 0) -> Path:
    """``models_dir/tiny_sdxl_seed{seed}.safetensors``: the tiny SDXL UNet + CLIP-L + OpenCLIP-bigG (fp8) + SD VAE,
    SDXL's checkpoint layout (~1.35 GB)."""
    return _write(Path(models_dir) / f"tiny_sdxl_seed{seed}.safetensors", _build_sdxl_checkpoint, seed, "sdxl")


def tiny_controlnet(models_dir: Path, seed: int = 0) -> Path:
    """``models_dir/tiny_controlnet_seed{seed}.safetensors``: a ControlNet for the tiny checkpoint of ``seed``."""
    return _write(Path(models_dir) / f"tiny_controlnet_seed{seed}.safetensors", _controlnet_state_dict, seed,
                  "controlnet")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("models_dir", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    options = parser.parse_args()
    print(tiny_sd15_checkpoint(options.models_dir, options.seed))
    print(tiny_controlnet(options.models_dir, options.seed))
    print(tiny_sd21_base_checkpoint(options.models_dir, options.seed))
    print(tiny_sd21_v_unet(options.models_dir, options.seed))
    print(tiny_sdxl_unet(options.models_dir, options.seed))
    print(tiny_sdxl_checkpoint(options.models_dir, options.seed))
