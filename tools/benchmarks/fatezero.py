"""FateZero attention storage: this pack's store against the official layout, for SD1.5 at 512x512.

Prints, for 8 and 24 frames side by side: bytes stored per inversion step and the store's peak RAM over 50 steps,
ours (self-attention as fp16 queries/keys, cross-attention as fp16 maps) and the official layout (every captured
post-softmax map in fp32; 'mid' keys for zero-shot, '[-1, first]' keys for tuned models), and their ratio. The
block layout is read from a real SD1.5 UNet built on the meta device (no weights). Then a measured run: the
tiny model's inversion with capture, whose store size must equal the prediction.
Usage: python tools/benchmarks/fatezero.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT / "tools"))
sys.path.insert(0, str(REPO_ROOT / "tests"))

STEPS, CONTEXT, LATENT = 50, 77, 64
SD15_UNET = {
    "use_checkpoint": False, "image_size": 32, "use_spatial_transformer": True, "legacy": False,
    "adm_in_channels": None, "in_channels": 4, "out_channels": 4, "model_channels": 320,
    "num_res_blocks": [2, 2, 2, 2], "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0],
    "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0], "channel_mult": [1, 2, 4, 4],
    "transformer_depth_middle": 1, "use_linear_in_transformer": False, "context_dim": 768,
    "use_temporal_resblock": False, "use_temporal_attention": False, "num_heads": 8, "num_head_channels": -1,
}


def gib(n: float) -> str:
    return f"{n / 2**30:8.2f} GiB"


def mib(n: float) -> str:
    return f"{n / 2**20:8.1f} MiB"


def main() -> int:
    import conftest  # noqa: F401  (registers the pack as ``video_edit``)
    from comfy_server import default_comfyui_path

    sys.path.insert(0, str(default_comfyui_path()))
    from comfy.cli_args import args

    args.cpu = True
    import comfy.ops
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    from video_edit.kernels.fatezero import captured_blocks

    unet = UNetModel(**SD15_UNET, device="meta", operations=comfy.ops.disable_weight_init)
    blocks = captured_blocks(unet, LATENT, LATENT, 1024)
    print(f"SD1.5 512x512: {len(blocks)} captured blocks, grids {sorted({b.height for b in blocks}, reverse=True)}, "
          f"{STEPS} steps\n")
    print(f"{'':38}{'8 frames':>24}{'24 frames':>24}")
    rows = {}
    for frames in (8, 24):
        ours = sum(b.bytes_per_step(frames, CONTEXT) for b in blocks)
        mid = sum(b.official_bytes_per_step(frames, CONTEXT, key_frames=1) for b in blocks)
        causal = sum(b.official_bytes_per_step(frames, CONTEXT, key_frames=2) for b in blocks)
        rows[frames] = (ours, mid, causal)
    for label, index in (("ours", 0), ("official, 'mid' (zero-shot)", 1), ("official, [-1, first] (tuned)", 2)):
        print(f"{'bytes/step ' + label:38}" + "".join(f"{mib(rows[f][index]):>24}" for f in (8, 24)))
    for label, index in (("ours", 0), ("official, 'mid'", 1), ("official, [-1, first]", 2)):
        print(f"{'peak store RAM ' + label:38}" + "".join(f"{gib(STEPS * rows[f][index]):>24}" for f in (8, 24)))
    for label, index in (("ratio ours / official 'mid'", 1), ("ratio ours / official [-1,first]", 2)):
        print(f"{label:38}" + "".join(f"{rows[f][0] / rows[f][index]:>24.3f}" for f in (8, 24)))
    print("\n(the official code also keeps a deep copy of each step's store and a running sum: its real peak is higher)")

    measured(frames_list=(8, 24))
    return 0


def measured(frames_list):
    """The tiny model's real inversion with capture at 64x64: stored bytes equal the prediction."""
    import comfy.sd

    from tiny_models import tiny_sd15_checkpoint
    from video_edit.kernels.fatezero import AttentionStore
    from video_edit.nodes.fatezero_capture import AttentionCapture
    from video_edit.nodes.inversion import ddim_invert

    path = tiny_sd15_checkpoint(REPO_ROOT / ".cache" / "tiny_models")
    model, clip, _, _ = comfy.sd.load_checkpoint_guess_config(str(path), output_vae=False, output_clip=True)
    cond = clip.encode_from_tokens_scheduled(clip.tokenize("a silver jeep"))
    print("\nmeasured, tiny UNet, 8x8 latents, 2 steps:")
    for frames in frames_list:
        latent = {"samples": torch.randn(frames, 4, 8, 8, generator=torch.Generator().manual_seed(0))}
        store = ddim_invert(model, latent, cond, 2, AttentionCapture()).captures["attention"]
        expected = AttentionStore.expected_bytes(list(store.blocks.values()), 2, frames, CONTEXT)
        official = 2 * sum(b.official_bytes_per_step(frames, CONTEXT, 1) for b in store.blocks.values())
        print(f"  {frames:2d} frames: stored {store.nbytes} B (predicted {expected}), official layout {official} B, "
              f"ratio {store.nbytes / official:.3f}")


if __name__ == "__main__":
    sys.exit(main())
