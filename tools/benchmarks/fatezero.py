"""FateZero attention storage: this pack's store against the official layout, for 8 and 24 frames side by side.

1. Computed, SD1.5 at 512x512 (block layout of a real SD1.5 UNet built on the meta device, no weights): bytes
   stored per inversion step and over 50 steps, ours (self-attention as fp16 queries/keys, cross-attention as fp16
   maps) and the official layout (every captured post-softmax map in fp32; 'mid' keys for zero-shot,
   '[-1, first]' keys for tuned models).
2. Measured, a real inversion with capture through ComfyUI (tiny SD1.5 by default, middle-frame attention, the
   official 512x512 token grids): each configuration in its own process, the bytes stored per step and the peak
   resident memory above the level before the inversion (RSS sampled every millisecond): no capture, ours, and
   the official layout (explicit post-softmax maps, fp32, CPU, kept per step like ``AttentionStore``; without
   the official code's deep copies and running sum, so its real peak is higher still).
Usage: python tools/benchmarks/fatezero.py [--size 512] [--steps 2] [--frames 8 24]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO_ROOT / "tools"), str(REPO_ROOT / "tools" / "benchmarks")]

from measure import peak_rss_during  # noqa: E402

STEPS, CONTEXT, LATENT = 50, 77, 64
CONFIGS = ("none", "ours", "official")


def setup_comfy():
    from comfy_server import default_comfyui_path

    sys.path.insert(0, str(default_comfyui_path()))
    from comfy.cli_args import args

    args.cpu = True


def computed(frame_counts) -> dict:
    """Bytes per step for SD1.5 at 512x512: (ours, official 'mid', official [-1, first]) per frame count."""
    import comfy.ops
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    from tiny_models import FULL_UNET_CONFIG

    from video_edit.kernels.fatezero import captured_blocks

    unet = UNetModel(**FULL_UNET_CONFIG, device="meta", operations=comfy.ops.disable_weight_init)
    blocks = captured_blocks(unet, LATENT, LATENT, 1024)
    print(f"1. computed, SD1.5 512x512: {len(blocks)} captured blocks, grids "
          f"{sorted({b.height for b in blocks}, reverse=True)}")
    return {f: (sum(b.bytes_per_step(f, CONTEXT) for b in blocks),
                sum(b.official_bytes_per_step(f, CONTEXT, key_frames=1) for b in blocks),
                sum(b.official_bytes_per_step(f, CONTEXT, key_frames=2) for b in blocks)) for f in frame_counts}


class OfficialLayoutCapture:
    """Stores what the official ``AttentionStore`` keeps: per step, every captured post-softmax map in fp32 on the
    CPU (self maps over the 'mid' key frame, as the zero-shot configs), through this pack's capture patches."""

    key = "official"

    def recording_model(self, model, samples, conditioning, sigmas):
        from video_edit.kernels.fatezero import captured_blocks
        from video_edit.nodes.fatezero_capture import with_attention_capture
        from video_edit.nodes.shared.inputs import require_unet

        _, _, height, width = samples.shape
        store = OfficialLayoutStore(captured_blocks(require_unet(model), height, width, 1024))
        return with_attention_capture(model, store), store


class OfficialLayoutStore:
    """The AttentionStore interface the capture patches write to, keeping fp32 maps per step like the official one."""

    def __init__(self, blocks):
        self.blocks = {b.key: b for b in blocks}
        self.steps: dict[float, list[torch.Tensor]] = {}

    def stored_level(self, sigma: float) -> float:
        return sigma  # steps are keyed by their sigma

    def put_self(self, key, level, q, k):
        from video_edit.kernels.fatezero import attention_probs

        frames = q.shape[0]
        middle = k[(frames - 1) // 2][None].expand(frames, -1, -1)
        self.put_cross(key, level, attention_probs(q, middle, self.blocks[key].heads))

    def put_cross(self, key, level, probs):
        self.steps.setdefault(level, []).append(probs.float().cpu().clone())

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for maps in self.steps.values() for t in maps)

    def require_complete(self):
        pass


def worker(config: str, frames: int, size: int, steps: int) -> dict:
    setup_comfy()
    import comfy.sd

    from tiny_models import tiny_sd15_checkpoint
    from video_edit.nodes.fatezero_capture import AttentionCapture
    from video_edit.nodes.inversion import ddim_invert
    from video_edit.nodes.sparse_causal import with_cross_frame_attention

    path = tiny_sd15_checkpoint(REPO_ROOT / ".cache" / "tiny_models")
    model, clip, _, _ = comfy.sd.load_checkpoint_guess_config(str(path), output_vae=False, output_clip=True)
    model = with_cross_frame_attention(model, "middle_frame")
    cond = clip.encode_from_tokens_scheduled(clip.tokenize("a silver jeep driving down a curvy road"))
    latent = {"samples": torch.randn(frames, 4, size // 8, size // 8, generator=torch.Generator().manual_seed(0))}
    capture = {"none": None, "ours": AttentionCapture(), "official": OfficialLayoutCapture()}[config]
    inversion, peak = peak_rss_during(lambda: ddim_invert(model, latent, cond, steps, capture))
    stored = next(iter(inversion.captures.values())).nbytes if inversion.captures else 0
    return {"bytes_per_step": stored / steps, "peak_rss": peak}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, nargs="+", default=[8, 24])
    parser.add_argument("--size", type=int, default=512, help="frame size in pixels of the measured run")
    parser.add_argument("--steps", type=int, default=2, help="inversion steps of the measured run")
    parser.add_argument("--worker", choices=CONFIGS, help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.worker:
        print("RESULT " + json.dumps(worker(opts.worker, opts.frames[0], opts.size, opts.steps)))
        return 0

    setup_comfy()
    frame_counts = opts.frames

    def row(label, value, fmt="{:>16.1f}"):
        print(f"{label:40}" + "".join(fmt.format(value(f)) for f in frame_counts))

    header = f"{'':40}" + "".join(f"{f'{f} frames':>16}" for f in frame_counts)
    rows = computed(frame_counts)
    print(header)
    for label, index in (("ours", 0), ("official, 'mid'", 1), ("official, [-1, first]", 2)):
        row(f"MiB/step {label}", lambda f: rows[f][index] / 2**20)
    for label, index in (("ours", 0), ("official, 'mid'", 1)):
        row(f"GiB over {STEPS} steps {label}", lambda f: STEPS * rows[f][index] / 2**30, "{:>16.2f}")
    for label, index in (("'mid'", 1), ("[-1, first]", 2)):
        row(f"ratio ours / official {label}", lambda f: rows[f][0] / rows[f][index], "{:>16.3f}")

    results = {}
    for frames in frame_counts:
        for config in CONFIGS:
            cmd = [sys.executable, __file__, "--worker", config, "--frames", str(frames), "--size", str(opts.size),
                   "--steps", str(opts.steps)]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            results[config, frames] = json.loads(next(line for line in out.splitlines()
                                                      if line.startswith("RESULT "))[7:])
    print(f"\n2. measured: tiny SD1.5 inversion with capture, {opts.size}x{opts.size}, middle-frame attention, "
          f"{opts.steps} steps, CPU\n{header}")
    for config in ("ours", "official"):
        row(f"MiB/step stored {config}", lambda f: results[config, f]["bytes_per_step"] / 2**20)
    for config in CONFIGS:
        row(f"peak RSS MiB, capture {config}", lambda f: results[config, f]["peak_rss"] / 2**20)

    def ratio(key, minus_none=False):
        def value(f):
            base = results["none", f][key] if minus_none else 0
            return (results["ours", f][key] - base) / max(1, results["official", f][key] - base)
        return value

    row("ratio stored ours / official", ratio("bytes_per_step"), "{:>16.3f}")
    row("ratio peak RSS ours / official", ratio("peak_rss"), "{:>16.3f}")
    row("ratio peak RSS above no capture", ratio("peak_rss", minus_none=True), "{:>16.3f}")
    print("(goal: ours <= 1/5 of the official bytes per step)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
