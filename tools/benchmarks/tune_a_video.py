"""Benchmark: Tune-A-Video tuning step and cross-frame attention, ours vs a baseline, side by side in one run.

1. One-shot tuning step on the same model and clip, at two sizes: ours (inside ComfyUI) vs the straightforward
   formulation (the diffusers reference of tests/reference, no checkpointing, with Tune-A-Video's temporal layers
   and frame-spanning GroupNorm as ours inflates by default), the same trainable set (checked). Time: one
   iteration of ours' loop inside one VE_OneShotTune call against one reference step, taking turns (so a busy
   machine slows both alike), each the best of --steps after a warm-up; ours without gradient checkpointing
   against the reference (like with like), and ours with it. The tuning call's own setup, paid once per
   tuning, is printed apart. Memory: the peak of one step above what lived before it, ours with checkpointing
   (the node's default) against the reference.
2. One self-attention at SD1.5's 64x64 level against frame count: sparse-causal as the node runs it (frames a
   few at a time, kernels/attention.py QUERY_TOKENS_PER_CALL) vs the whole batch gathered at once (the earlier
   kernel) vs full spatio-temporal attention (keys of all frames).
3. Gathering the sparse-causal keys for tuning, forward and backward: ours (index_select) vs the official
   advanced indexing.
4. Inversion + edit (--edit-steps each, cfg 12.5): ours (VE DDIM Invert, then KSampler Advanced with ddim) vs
   the official loops (``ddim_loop``, then the pipeline's DDIM loop) on the reference model, each the best of
   --steps runs after a 2-step warm-up.

On a GPU the reference runs as the official configuration does, under fp16 autocast; ours as ComfyUI loads it.

Peak memory: the GPU allocator's peak, or on a CPU the torch profiler's allocation events (tools/benchmarks/
measure.py). Prints times, memory and ratios. No GPU needed.

    python tools/benchmarks/tune_a_video.py [--frames 4] [--size 64] [--steps 3] [--edit-steps 50] [--full-size]
        [--sections 1 2 3 4]

--full-size uses a random-weight UNet with the real SD1.5 shapes (slow on a CPU; meant for a GPU machine) and times
the tuning step at the given size only; Tune-A-Video's setting is --frames 24 --size 512. Section 1 also prints 500
steps' time and, on a GPU, the memory allocated at a step's peak; section 4 times one run. For a GPU machine without
network: tools/benchmarks/offline_gpu.sh.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import statistics
import sys
from pathlib import Path

import torch

TOOLS = Path(__file__).resolve().parents[1]
REPO_ROOT = TOOLS.parent
sys.path[:0] = [str(TOOLS), str(TOOLS / "benchmarks"), str(REPO_ROOT / "tests")]

from measure import now, peak_bytes, seconds  # noqa: E402
from reference.tav_diffusers import ReferenceTAV, official_ddim_loop, official_ddim_sample  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from tiny_models import full_size_sd15_checkpoint, tiny_sd15_checkpoint, tiny_unet_diffusers_config  # noqa: E402

from video_edit.kernels.attention import (QUERY_TOKENS_PER_CALL, cross_frame_attention, gather_rows,  # noqa: E402
                                         reference_frames)

MODELS = REPO_ROOT / ".cache" / "tiny_models"
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@functools.cache
def import_comfyui():
    """ComfyUI importable, set up before its first import: on the GPU if there is one, with PyTorch attention."""
    from comfy_server import default_comfyui_path

    sys.path.insert(0, str(default_comfyui_path()))
    from comfy.cli_args import args

    args.cpu = not torch.cuda.is_available()
    args.use_pytorch_cross_attention = True  # the kernel ComfyUI picks on GPUs (on a CPU it defaults to sub-quadratic)


def ours_model(checkpoint: Path):
    """The checkpoint loaded by ComfyUI, inflated, with sparse-causal attention; the edit prompt and the empty one."""
    import_comfyui()
    import comfy.sd
    from video_edit.nodes import sparse_causal
    from video_edit.nodes.shared import video_unet

    model, clip, _, _ = comfy.sd.load_checkpoint_guess_config(str(checkpoint), output_vae=True, output_clip=True)
    cond, empty = (clip.encode_from_tokens_scheduled(clip.tokenize(text)) for text in ("a man is skiing", ""))
    return sparse_causal.with_cross_frame_attention(video_unet.inflate(model), "sparse_causal"), cond, empty


def ours_step(checkpoint: Path, frames: int, size: int, steps: int = 1, checkpointing: bool = True):
    """``steps`` tuning steps of ours in one VE_OneShotTune call, through ComfyUI (its own loader and sampler)."""
    video, cond, _ = ours_model(checkpoint)
    from video_edit.nodes import tuning
    from video_edit.nodes.shared import video_unet

    latent = {"samples": torch.randn(frames, 4, size // 8, size // 8)}
    tune = functools.partial(tuning.one_shot_tune, video, latent, cond, steps, 3e-5, 0,
                             gradient_checkpointing=checkpointing)
    layers = video_unet.require_inflated(video).layers
    queries = video_unet.query_weight_shapes(video.model.diffusion_model).values()
    tune.trainable = sum(shape.numel() for shape in queries) + sum(p.numel() for p in layers.tunable_parameters())
    tune.temporal = layers.state_dict()  # Tune-A-Video's initialisation: the reference starts from it too
    return tune


@contextlib.contextmanager
def patched(cls, name: str, method):
    """``cls.name`` replaced by ``method(original, self, *args)`` for the block."""
    original = getattr(cls, name)
    setattr(cls, name, lambda self, *args: method(original, self, *args))
    try:
        yield
    finally:
        setattr(cls, name, original)


def step_seconds(checkpoint: Path, frames: int, size: int, repeats: int, checkpointing: bool, reference):
    """Best wall times of one iteration of ours' tuning loop (train step, optimiser, progress bar, Cancel check)
    and of one ``reference`` step, taking turns: a reference step runs after each of ours' iterations, in one
    VE_OneShotTune call of ``repeats`` + 1 steps, so both see the same machine; the first of each is a warm-up.
    Also the median ratio of an iteration to the reference step right after it (robust to a machine whose speed
    drifts), and the call's wall time beyond its steps (clone, trainable copies, optimiser, model load, the first
    step's warm-up: paid once per tuning, not per step)."""
    tune = ours_step(checkpoint, frames, size, repeats + 1, checkpointing)
    from video_edit.nodes.tuning import OneShotTuningSampler

    ours, theirs = [], []
    started = None

    def after_step(original, self, step):
        nonlocal started
        original(self, step)
        if started is not None:
            ours.append(now() - started)
        start = now()
        reference()
        theirs.append(now() - start)
        started = now()

    with patched(OneShotTuningSampler, "after_step", after_step):
        start = now()
        tune()
        total = now() - start
    best = min(ours)
    paired = statistics.median(mine / their for mine, their in zip(ours, theirs[1:]))
    return best, min(theirs[1:]), paired, total - sum(theirs) - (repeats + 1) * best


def release_models():
    """ComfyUI's loaded models unloaded and the GPU's cached blocks freed."""
    import_comfyui()
    import comfy.model_management

    comfy.model_management.unload_all_models()
    gc.collect()
    comfy.model_management.soft_empty_cache()


def ours_step_peak(tune) -> tuple[float, float | None]:
    """Peak bytes allocated during the second tuning step of ``tune`` (``ours_step`` of 2 steps), above what lived
    before it (the tuning call's trainable copies and optimiser state exist by then, as the reference's do before
    its measured step); on a GPU also everything allocated at that peak (the model, the trainable copies, their
    optimiser state)."""
    from video_edit.nodes.tuning import OneShotTuningSampler

    measured = {}

    def train_step(original, self, model_wrap, video, step, generator, extra_args):
        if step != 1:
            return original(self, model_wrap, video, step, generator, extra_args)
        result = {}
        measured["peak"] = peak_bytes(lambda: result.update(original(self, model_wrap, video, step, generator,
                                                                       extra_args)))
        return result

    with patched(OneShotTuningSampler, "train_step", train_step):
        tune()
    return measured["peak"], torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None


def reference_model(checkpoint: Path, full_size: bool, temporal: dict) -> ReferenceTAV:
    """The formulation as written: diffusers UNet + TAV's temporal layers (starting from ``temporal``, the state
    ours inflates with), sparse-causal attention and frame-spanning GroupNorm (as ours inflates by default)."""
    ldm = {k: v for k, v in load_file(str(checkpoint)).items() if k.startswith("model.diffusion_model.")}
    return ReferenceTAV.from_ldm(ldm, tiny_unet_diffusers_config(full_size), temporal, mode="sparse_causal",
                                 frame_groupnorm=True).to(DEVICE)


def official_precision():
    """The official training and inference precision on a GPU: fp16 autocast (``mixed_precision: fp16``)."""
    return torch.autocast("cuda", dtype=torch.float16, enabled=DEVICE == "cuda")


def reference_step(checkpoint: Path, frames: int, size: int, full_size: bool, temporal: dict):
    """One tuning step of the reference model (``reference_model``), plain autograd."""
    reference = reference_model(checkpoint, full_size, temporal)
    reference.requires_grad_(False)
    trainable = [p for n, p in reference.named_parameters()
                 if n.endswith(("attn1.to_q.weight", "attn2.to_q.weight")) or ".attn_temp." in n]
    for p in trainable:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(trainable, lr=3e-5, weight_decay=1e-2)
    latents = torch.randn(frames, 4, size // 8, size // 8, device=DEVICE)
    text = torch.randn(1, 77, 768, device=DEVICE)

    def step():
        noise = torch.randn_like(latents)
        with official_precision():
            loss = torch.nn.functional.mse_loss(reference(latents + noise, 500, text).float(), noise)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()

    step.trainable = sum(p.numel() for p in trainable)
    return step


def ours_invert_and_edit(checkpoint: Path, frames: int, size: int, guidance: float):
    """Ours' inversion and edit as the Tune-A-Video workflow runs them: VE DDIM Invert with the empty prompt, then
    KSampler Advanced (ddim, ddim_uniform, cfg ``guidance``) from the inverted latent; ``run(steps)`` each."""
    video, cond, empty = ours_model(checkpoint)
    import nodes as core_nodes
    from video_edit.nodes import inversion
    from video_edit.nodes.shared import video_unet

    latent = {"samples": torch.randn(frames, 4, size // 8, size // 8)}

    def run(steps: int):
        noisy = inversion.ddim_invert(video, latent, empty, steps).noisiest
        core_nodes.KSamplerAdvanced().sample(video, "disable", 0, steps, guidance, "ddim", "ddim_uniform", cond, empty,
                                             {"samples": noisy}, 0, 10000, "disable")

    run.temporal = video_unet.require_inflated(video).layers.state_dict()
    return run


def reference_invert_and_edit(checkpoint: Path, frames: int, size: int, guidance: float, full_size: bool,
                              temporal: dict):
    """The official ``ddim_loop`` inversion with the empty prompt, then the pipeline's DDIM loop with CFG;
    ``run(steps)`` each."""
    reference = reference_model(checkpoint, full_size, temporal)
    latents = torch.randn(frames, 4, size // 8, size // 8, device=DEVICE)
    text, empty = (torch.randn(1, 77, 768, device=DEVICE) for _ in range(2))
    pair = torch.cat([empty, text])

    def run(steps: int):
        with torch.no_grad(), official_precision():
            noisy = official_ddim_loop(lambda x, t: reference(x, t, empty), latents, steps)[-1]
            official_ddim_sample(lambda x, t: reference(torch.cat([x, x]), t, pair, chunks=2).chunk(2), noisy, steps,
                                 guidance)

    return run


def attention_call(frames: int, mode: str, per_call: int | None = None):
    q, k, v = (torch.randn(frames, 4096, 320, device=DEVICE) for _ in range(3))

    def call():
        with torch.no_grad():
            cross_frame_attention(q, k, v, heads=8, chunks=1, mode=mode, query_tokens_per_call=per_call)

    return call


def index_rows(t: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """The official gather (Tune-A-Video's ``key[:, [0] * video_length]``, ``key[:, former_frame_index]``)."""
    return t[rows].flatten(1, 2)


def gather_call(frames: int, gather):
    keys = torch.randn(frames, 4096, 320, device=DEVICE, requires_grad=True)
    rows = reference_frames(frames, "sparse_causal").to(DEVICE)

    def call():
        gather(keys, rows).sum().backward()
        keys.grad = None

    return call


def tuning_step_section(checkpoint: Path, frames: int, size: int, steps: int, full_size: bool):
    # Ours runs as the node does, one call per tuning: a step is one iteration of its loop, timed in turns with
    # a reference step (the call's setup is printed apart: it is paid once per tuning), and its memory the peak
    # of its second step alone.
    print("\n1. one-shot tuning step, ours vs the reference (the same trainable set, checked: query projections and "
          "temporal attention)")
    print("   frames  size | time s/step: ours no ckpt / ref  best  paired | ours ckpt | step peak MiB: ours ckpt / ref"
          "  ratio | ours' call setup s")
    for frames, size in ((frames, size),) if full_size else ((frames, size), (2 * frames, 2 * size)):
        release_models()  # ours' whole-call GPU figure holds no other model
        ours = ours_step(checkpoint, frames, size, 2)
        ours_peak, whole_call = ours_step_peak(ours)
        ours_mb = ours_peak / 2**20
        reference = reference_step(checkpoint, frames, size, full_size, ours.temporal)
        if reference.trainable != ours.trainable:
            raise SystemExit(f"the trainable sets differ: ours {ours.trainable} parameters, the reference "
                             f"{reference.trainable}")
        reference()  # its optimiser state exists before the measured step, as ours' does
        ref_mb = peak_bytes(reference) / 2**20
        plain_s, ref_s, ratio, setup_s = step_seconds(checkpoint, frames, size, steps, False, reference)
        ckpt_s, *_ = step_seconds(checkpoint, frames, size, steps, True, reference)
        print(f"   {frames:6d} {size:5d} | {plain_s:8.3f} / {ref_s:6.3f}  {plain_s / ref_s:5.2f}x {ratio:5.2f}x | "
              f"{ckpt_s:9.3f} | {ours_mb:9.1f} / {ref_mb:6.1f}  {ours_mb / ref_mb:5.2f}x | {setup_s:6.2f}")
        print(f"   {'':12} | 500 steps of ours with checkpointing: {setup_s + 500 * ckpt_s:.0f} s"
              + (f"; the GPU memory at its step peak: {whole_call / 2**30:.2f} GiB" if whole_call else ""))
    print(f"   (goals: time <= 1.0x, peak memory <= 0.6x; the fp32 gradients of the {ours.trainable / 1e6:.1f} M "
          f"trainable parameters, {ours.trainable * 4 / 2**20:.1f} MiB, are in both peaks)")


def attention_section():
    print("\n2. one self-attention, 4096 tokens x 320 channels: peak MiB and seconds")
    print("   frames   sparse_causal MiB (ours / whole batch / ratio)   full MiB   "
          "sparse_causal s (ours / whole batch)   full s")
    for frames in (4, 8, 16, 32):
        ours = attention_call(frames, "sparse_causal", QUERY_TOKENS_PER_CALL)
        whole = attention_call(frames, "sparse_causal")
        full = attention_call(frames, "full")
        ours_mb, whole_mb, full_mb = (peak_bytes(call) / 2**20 for call in (ours, whole, full))
        ours_s, whole_s, full_s = (seconds(call, 1) for call in (ours, whole, full))
        print(f"   {frames:6d}   {ours_mb:9.0f} / {whole_mb:5.0f} / {ours_mb / whole_mb:5.2f}x{'':18}{full_mb:8.0f}   "
              f"{ours_s:15.2f} / {whole_s:5.2f}{'':13}{full_s:6.2f}")
    print("   (goals: ours <= 0.4x the whole-batch memory, time not slower)")


def gather_section(steps: int):
    print("\n3. gathering the sparse-causal keys of 4096 tokens x 320 channels, forward + backward (tuning): ms")
    print("   frames   index_select (ours) / advanced indexing (official)  ratio")
    for frames in (4, 8, 16):
        ours_s, official_s = (seconds(gather_call(frames, gather), steps) for gather in (gather_rows, index_rows))
        print(f"   {frames:6d}   {1e3 * ours_s:10.1f} / {1e3 * official_s:6.1f}{'':30}{ours_s / official_s:5.2f}x")


def edit_section(checkpoint: Path, frames: int, size: int, steps: int, repeats: int, full_size: bool):
    ours = ours_invert_and_edit(checkpoint, frames, size, 12.5)
    reference = reference_invert_and_edit(checkpoint, frames, size, 12.5, full_size, ours.temporal)
    repeats = 1 if full_size else repeats  # each run is 2 x steps UNet calls on the whole clip
    ours_s, ref_s = (seconds(lambda: run(steps), repeats, warm_up=lambda: run(2)) for run in (ours, reference))
    print(f"\n4. inversion + edit, {steps} steps each (cfg 12.5), {frames} frames {size}x{size}: seconds")
    print(f"   ours {ours_s:.2f} / official loops {ref_s:.2f}  {ours_s / ref_s:5.2f}x")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=4)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=3, help="timed repeats (best of)")
    parser.add_argument("--full-size", action="store_true")
    parser.add_argument("--edit-steps", type=int, default=50, help="inversion and sampling steps (section 4)")
    parser.add_argument("--sections", type=int, nargs="+", choices=(1, 2, 3, 4), default=(1, 2, 3, 4))
    args = parser.parse_args(argv)
    checkpoint = (full_size_sd15_checkpoint if args.full_size else tiny_sd15_checkpoint)(MODELS)
    print(f"device: {torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu'}; frames {args.frames}, "
          f"{args.size}x{args.size}, {'full-size' if args.full_size else 'tiny'} SD1.5 UNet")
    if 1 in args.sections:
        tuning_step_section(checkpoint, args.frames, args.size, args.steps, args.full_size)
    if 2 in args.sections:
        attention_section()
    if 3 in args.sections:
        gather_section(args.steps)
    if 4 in args.sections:
        edit_section(checkpoint, args.frames, args.size, args.edit_steps, args.steps, args.full_size)
    return 0


if __name__ == "__main__":
    sys.exit(main())
