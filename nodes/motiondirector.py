"""MotionDirector on the inflated SD1.x UNet: a set of videos of one motion, dual-path LoRA training, noise prior.

Training runs inside ComfyUI's sampling stack like VE_OneShotTune (training.TrainingSampler). The LoRAs are forward
hooks that a training clone injects and ejects with the model, so the input MODEL is never changed. Step k trains
on video k mod N (the official unshuffled loader), with a random timestep and noise, then (showlab/MotionDirector;
docs/design.md §4):
- spatial path (skipped, spatial LoRAs off, with probability 0.2): one random frame as a 1-frame video through
  the image model's path (temporal layers bypassed, per-frame GroupNorm); ε-MSE; steps the spatial LoRAs only,
  the video's own set (official default) or the one shared set;
- temporal path: the whole video, spatial LoRAs active but frozen; ε-MSE + appearance-debiased MSE against a
  random anchor frame; steps the temporal LoRAs only.
Both forward passes run before either step, as in the official loop, so the temporal pass sees the spatial LoRAs
from before this step's update.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from comfy.patcher_extension import PatcherInjection
from comfy_api.latest import io, ui

from ..kernels.lora import (LoRASet, debiased_temporal_loss, join_spatial_sets, linear_targets, noise_prior,
                            spatial_targets)
from .shared.animatediff import (ade_motion_module, check_clip_lengths, fit_motion_module_per_call, motion_module_targets,
                                 to_ade_motion_lora)
from .shared.comfy_internals import BasicGuider, predict_without_cfg, set_guider_conds
from .shared.inputs import require_unet, require_video_latent
from .shared.patcher import PatcherKeys
from .shared.motion_lora_files import SPATIAL_PREFIX, save_motion_lora
from .shared.socket_types import InversionType, MotionLoRA, VideoEditNode, VideoSet
from .shared.training import TrainingSampler, adamw, predict_eps, train_in_guider
from .shared.video_unet import bypass_temporal, require_inflated
from .shared.plots import loss_summary
from .shared.schema_fields import MOTIONDIRECTOR_ALIASES, search_aliases


SPATIAL_SETS = ("one per video", "shared")  # official single_spatial_lora False / True
# Where the temporal LoRA goes: our temporal layers (VE Inflate UNet), or AnimateDiff-Evolved's motion module
# (AnimateDiff-MotionDirector: a motion LoRA that ADE's Load AnimateDiff LoRA reads).
TEMPORAL_TARGETS = ("VE temporal layers", "AnimateDiff motion module")


@dataclass(frozen=True)
class TrainingVideo:
    """One training video: latents ``[F, 4, h, w]`` and the conditioning of its own prompt."""

    samples: torch.Tensor
    conditioning: list


def add_video(clip_set: tuple[TrainingVideo, ...] | None, latent: dict, conditioning) -> tuple[TrainingVideo, ...]:
    """A new video set: ``clip_set`` plus this video (all videos must share the latent size)."""
    samples = require_video_latent(latent)
    videos = tuple(clip_set or ())
    if videos and videos[0].samples.shape[1:] != samples.shape[1:]:
        size = tuple(d * 8 for d in samples.shape[2:])
        first = tuple(d * 8 for d in videos[0].samples.shape[2:])
        raise ValueError(f"latent: this video is {size[1]}x{size[0]} pixels, the videos already in clip_set are "
                         f"{first[1]}x{first[0]}. Load every video at the same size (VE Load Video width/height).")
    return videos + (TrainingVideo(samples, conditioning),)


class VideoGuider(BasicGuider):
    """Conditions each training video on its own prompt; ``active`` picks the video."""

    def set_video_conds(self, conditionings: list):
        set_guider_conds(self, {f"video{i}": c for i, c in enumerate(conditionings)})
        self.active = 0

    def predict_noise(self, x, timestep, model_options={}, seed=None):
        return predict_without_cfg(self, x, timestep, self.conds[f"video{self.active}"], model_options, seed)


class MotionDirectorSampler(TrainingSampler):
    """MotionDirector's dual-path step; each LoRA set has its own AdamW (β 0.9/0.999, eps 1e-8, constant LR)."""

    title = "MotionDirector"

    def __init__(self, videos: list[torch.Tensor], spatial: list[LoRASet], temporal: LoRASet, steps: int,
                 learning_rate: float, weight_decay: float, seed: int, gradient_checkpointing: bool,
                 spatial_mask_probability: float, device: torch.device, checkpoint=None, checkpoint_every: int = 0):
        super().__init__(steps, seed, gradient_checkpointing)
        self.videos = videos
        self.spatial, self.temporal = spatial, temporal
        self.mask_probability = spatial_mask_probability
        self.checkpoint, self.checkpoint_every = checkpoint, checkpoint_every
        optimizers = [adamw(s.parameters(), learning_rate, weight_decay, device) for s in spatial + [temporal]]
        self.spatial_optimizers, self.temporal_optimizer = optimizers[:-1], optimizers[-1]

    def trainable_parameters(self):
        return [p for s in self.spatial + [self.temporal] for p in s.parameters()]

    def train_step(self, model_wrap, latent, step, generator, extra_args):
        index = step % len(self.videos)  # official: the unshuffled videos in turn, one per step
        own = index % len(self.spatial)  # the video's own set (official default), or the one shared set
        spatial, spatial_opt = self.spatial[own], self.spatial_optimizers[own]
        video = model_wrap.inner_model.process_latent_in(self.videos[index].to(latent))
        frames = video.shape[0]
        timestep = torch.randint(0, 1000, (1,), generator=generator)
        eps = torch.randn(video.shape, generator=generator).to(video)
        masked = bool(torch.rand((), generator=generator) < self.mask_probability)
        j, k = (int(i) for i in torch.randint(frames, (2,), generator=generator))
        model_wrap.active = index
        losses = {"spatial": float("nan")}  # NaN marks a masked step in the loss curve

        # As the official loop: both forward passes first, so the temporal pass sees the spatial LoRAs from
        # before this step's update. The backward passes follow (the temporal one first, while the spatial LoRAs
        # are still frozen), and only then do the optimisers step, so the gradients are the official ones.
        for other in self.spatial:
            other.scale = 1.0 if other is spatial and not masked else 0.0
        spatial_loss = None
        if not masked:
            with bypass_temporal():
                pred = predict_eps(model_wrap, video[j:j + 1], timestep, eps[j:j + 1], extra_args)
            spatial_loss = F.mse_loss(pred.float(), eps[j:j + 1].float())
            self.check_finite(spatial_loss, step, "spatial loss")
        # The spatial LoRAs stay active (at the scale above) in the temporal pass but get no gradient from it. They
        # stay frozen until its backward, which (with gradient checkpointing) recomputes that pass.
        spatial.requires_grad_(False)
        try:
            pred = predict_eps(model_wrap, video, timestep, eps, extra_args)
            temporal_loss = debiased_temporal_loss(pred.float(), eps.float(), k)
            self.check_finite(temporal_loss, step, "temporal loss")
            self.temporal_optimizer.zero_grad(set_to_none=True)
            temporal_loss.backward()
        finally:
            spatial.requires_grad_(True)
        if spatial_loss is not None:
            spatial_opt.zero_grad(set_to_none=True)
            spatial_loss.backward()
            spatial_opt.step()
            losses["spatial"] = spatial_loss.item()
        self.temporal_optimizer.step()
        losses["temporal"] = temporal_loss.item()
        return losses

    def after_step(self, step):
        if self.checkpoint is not None and self.checkpoint_every and step % self.checkpoint_every == 0:
            self.checkpoint(step)


def _hook_injection(spatial: list[LoRASet], temporal: LoRASet, temporal_targets: dict) -> PatcherInjection:
    def inject(patcher):
        targets = {SPATIAL_PREFIX + p: m for p, m in spatial_targets(patcher.model.diffusion_model).items()}
        for lora_set in spatial:
            lora_set.attach(targets)
        temporal.attach(temporal_targets)

    def eject(patcher):
        for lora_set in spatial + [temporal]:
            lora_set.detach()

    return PatcherInjection(inject=inject, eject=eject)


def train_motion_director(model, videos: tuple[TrainingVideo, ...], steps: int, rank: int = 32,
                          learning_rate: float = 5e-4, weight_decay: float = 1e-2, seed: int = 0,
                          gradient_checkpointing: bool = True, spatial_mask_probability: float = 0.2,
                          lora_dropout: float = 0.1, checkpoint_every: int = 0, checkpoint_name: str = "",
                          spatial_sets: str = "one per video", temporal_target: str = TEMPORAL_TARGETS[0]):
    """Train spatial and temporal LoRAs on ``videos``; return (spatial LoRA, temporal LoRA, losses by name).

    ``spatial_sets``: "one per video" (official) trains a spatial set per video, each on its own video's frames
    (the file keys them ``video<k>.``); "shared" trains one. Losses: ``temporal`` (also ``loss``, for core's loss
    graph) and ``spatial`` per step, NaN where masked. ``temporal_target`` "AnimateDiff motion module": the
    temporal LoRA goes on the temporal attention projections of AnimateDiff-Evolved's motion module (no inflation
    needed) and comes back in ADE's motion-LoRA format.
    """
    if spatial_sets not in SPATIAL_SETS:
        raise ValueError(f"spatial_sets: {spatial_sets!r} is not one of {', '.join(SPATIAL_SETS)}.")
    if temporal_target not in TEMPORAL_TARGETS:
        raise ValueError(f"temporal_target: {temporal_target!r} is not one of {', '.join(TEMPORAL_TARGETS)}.")
    unet = require_unet(model)
    if not videos:
        raise ValueError("clip_set: it holds no videos; build it with VE Motion Clip Set.")
    on_animatediff = temporal_target == TEMPORAL_TARGETS[1]
    if on_animatediff:
        motion_module = ade_motion_module(model)
        check_clip_lengths(motion_module, [len(video.samples) for video in videos])
        temporal_modules = motion_module_targets(motion_module)
    else:
        inflation = require_inflated(model, needs="MotionDirector trains LoRAs on the temporal layers")
        temporal_modules = linear_targets(inflation.layers)
    with torch.inference_mode(False), torch.enable_grad():
        device = model.load_device
        targets = {SPATIAL_PREFIX + p: m for p, m in spatial_targets(unet).items()}
        count = len(videos) if spatial_sets == "one per video" else 1
        spatial = [LoRASet(targets, rank, lora_dropout, seed if k == 0 else seed + 1 + k) for k in range(count)]
        temporal = LoRASet(temporal_modules, rank, lora_dropout, seed + 1)
        for lora_set in spatial + [temporal]:
            lora_set.to(device).train()

        def spatial_tensors():
            return join_spatial_sets([lora_set.file_tensors() for lora_set in spatial])

        def temporal_tensors():
            tensors = temporal.file_tensors()
            return to_ade_motion_lora(tensors) if on_animatediff else tensors

        def checkpoint(step):
            save_motion_lora(spatial_tensors(), temporal_tensors(), f"{checkpoint_name}_step{step:05d}",
                             {"steps": str(step)})

        trainer = model.clone()
        fit_motion_module_per_call(trainer)  # AnimateDiff-Evolved's motion module off on the spatial path
        trainer.set_injections(PatcherKeys.MOTION_LORA_TRAINING, [_hook_injection(spatial, temporal, temporal_modules)])
        sampler = MotionDirectorSampler([c.samples.clone() for c in videos], spatial, temporal, steps, learning_rate,
                                        weight_decay, seed, gradient_checkpointing, spatial_mask_probability, device,
                                        checkpoint if checkpoint_name.strip() else None, checkpoint_every)
        guider = VideoGuider(trainer)
        guider.set_video_conds([c.conditioning for c in videos])
        longest = max((c.samples for c in videos), key=len)
        try:
            train_in_guider(guider, longest.clone(), sampler, seed)
        finally:
            for lora_set in spatial + [temporal]:
                lora_set.detach()
    losses = {"loss": sampler.losses["temporal"], **sampler.losses}
    return spatial_tensors(), temporal_tensors(), losses


class MotionClipSet(VideoEditNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="VE_MotionClipSet",  # "clip" as in video clip: the id saved workflows use
            display_name="VE Motion Clip Set",
            category="video_edit/motiondirector",
            **search_aliases(MOTIONDIRECTOR_ALIASES, ("training videos", "clip set")),
            description=("Collects the training videos of one motion, each with its own prompt: chain one node per "
                         "video through clip_set. Videos may differ in length (at least 2 frames) but not in size. "
                         "One video is MotionDirector's single-video case."),
            inputs=[
                io.Latent.Input("latent", tooltip="One video, VAE-encoded (frames as batch)."),
                io.Conditioning.Input("conditioning", tooltip="The prompt describing this video."),
                VideoSet.Input("clip_set", optional=True, tooltip="Videos collected so far."),
            ],
            outputs=[VideoSet.Output(display_name="clip_set", tooltip="The videos so far, for the next VE Motion Clip Set "
                                                                       "or VE Train MotionDirector.")],
        )

    @classmethod
    def execute(cls, latent, conditioning, clip_set=None) -> io.NodeOutput:
        return io.NodeOutput(add_video(clip_set, latent, conditioning))


class TrainMotionDirector(VideoEditNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="VE_TrainMotionDirector",
            display_name="VE Train MotionDirector",
            category="video_edit/motiondirector",
            **search_aliases(MOTIONDIRECTOR_ALIASES, ("train motion", "motion training", "lora training")),
            description=(
                "Learns a motion from the videos as two LoRAs, MotionDirector's dual-path recipe: spatial LoRAs on the "
                "self-attention and feed-forward of every spatial transformer block learn the videos' appearance from "
                "single frames; temporal LoRAs on the temporal layers learn the motion from whole videos with the "
                "appearance-debiased loss. Generate with the temporal LoRA only (VE Load Motion LoRA or VE Apply "
                "Motion LoRA, spatial strength 0) to move a new subject the same way. The input MODEL is unchanged."),
            inputs=[
                io.Model.Input("model", tooltip="An inflated SD1.x model (VE Inflate UNet); for temporal_target "
                               "\"AnimateDiff motion module\", SD1.5 with a motion module: the MODEL of "
                               "AnimateDiff-Evolved's Use Evolved Sampling (no VE Inflate UNet)."),
                VideoSet.Input("clip_set", tooltip="The training videos, from VE Motion Clip Set."),
                io.Int.Input("steps", default=300, min=1, max=100000,
                             tooltip="Official: 150 for one video, 300-500 for several."),
                io.Int.Input("rank", default=32, min=1, max=1024, tooltip="LoRA rank of both paths (official: 32)."),
                io.Float.Input("learning_rate", default=5e-4, min=1e-7, max=1.0, step=1e-5,
                               tooltip="AdamW learning rate of the LoRAs (official: 5e-4)."),
                io.Float.Input("weight_decay", default=1e-2, min=0.0, max=1.0, step=1e-4,
                               tooltip="AdamW weight decay of the LoRAs (official: 1e-2 one video, 1e-4 several)."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF,
                             tooltip="Seed of the timesteps, noise, frames and dropout drawn in training."),
                io.Boolean.Input("gradient_checkpointing", default=True,
                                 tooltip="Recompute transformer blocks in the backward pass: much less memory, a bit slower."),
                io.Float.Input("spatial_mask_probability", default=0.2, min=0.0, max=1.0, step=0.01,
                               tooltip="Chance per step of skipping the spatial path with the spatial LoRAs off."),
                io.Float.Input("lora_dropout", default=0.1, min=0.0, max=0.9, step=0.01,
                               tooltip="Dropout on the LoRA inputs in training (official: 0.1)."),
                io.Int.Input("checkpoint_every", default=0, min=0, max=100000,
                             tooltip="Save both LoRAs every N steps as <checkpoint_name>_stepNNNNN_*; 0 = never."),
                io.String.Input("checkpoint_name", default="motion_checkpoint",
                                tooltip="File name prefix of the checkpoints checkpoint_every writes."),
                io.Combo.Input("spatial_sets", options=list(SPATIAL_SETS), default=SPATIAL_SETS[0], optional=True,
                               tooltip="Spatial LoRAs: one set per video, each learning its own video's look "
                                       "(official), or one set shared by all (official single_spatial_lora; a "
                                       "standard LoRA file that core Load LoRA reads)."),
                io.Combo.Input("temporal_target", options=list(TEMPORAL_TARGETS), default=TEMPORAL_TARGETS[0],
                               optional=True,
                               tooltip="Where the temporal LoRA learns the motion: the temporal layers of VE Inflate "
                                       "UNet, or the temporal attention of AnimateDiff-Evolved's motion module "
                                       "(AnimateDiff-MotionDirector; the model comes through Use Evolved Sampling, "
                                       "VE Save Motion LoRA writes a motion LoRA for ADE's Load AnimateDiff LoRA)."),
            ],
            outputs=[
                io.LoraModel.Output(display_name="spatial_lora", tooltip="The appearance LoRA, for VE Save Motion LoRA or VE "
                                                                          "Apply Motion LoRA."),
                MotionLoRA.Output(display_name="temporal_lora", tooltip="The motion LoRA, for VE Save Motion LoRA or "
                                                                        "VE Apply Motion LoRA."),
                io.LossMap.Output(display_name="loss", tooltip="Both paths' loss per step, for VE Plot Loss."),
            ],
        )

    @classmethod
    def execute(cls, model, clip_set, steps, rank, learning_rate, weight_decay, seed, gradient_checkpointing,
                spatial_mask_probability, lora_dropout, checkpoint_every, checkpoint_name,
                spatial_sets=SPATIAL_SETS[0], temporal_target=TEMPORAL_TARGETS[0]) -> io.NodeOutput:
        spatial, temporal, losses = train_motion_director(
            model, clip_set, steps, rank, learning_rate, weight_decay, seed, gradient_checkpointing,
            spatial_mask_probability, lora_dropout, checkpoint_every, checkpoint_name, spatial_sets, temporal_target)
        return io.NodeOutput(spatial, temporal, losses, ui=ui.PreviewText(loss_summary(losses)))


class InversionNoise:
    """A NOISE for SamplerCustomAdvanced: MotionDirector's noise prior from a DDIM-inverted source video."""

    def __init__(self, inverted: torch.Tensor, p: float, seed: int):
        self.inverted = inverted
        self.p = p
        self.seed = seed

    def generate_noise(self, input_latent: dict) -> torch.Tensor:
        import comfy.sample

        samples = input_latent["samples"]
        noise = comfy.sample.prepare_noise(samples, self.seed, input_latent.get("batch_index"))
        if self.p == 0:
            return noise
        if samples.shape[0] != self.inverted.shape[0]:
            raise ValueError(f"latent_image: {samples.shape[0]} frames, the inverted video has {self.inverted.shape[0]}; "
                             "generate as many frames as the source video has when noise_prior > 0.")
        inverted = self.inverted
        if inverted.shape[-2:] != samples.shape[-2:]:  # official: bilinear resize to the generated size
            inverted = F.interpolate(inverted, size=samples.shape[-2:], mode="bilinear", align_corners=False)
        return noise_prior(inverted, noise, self.p)


def inversion_noise(model, inversion, noise_prior_strength: float, seed: int) -> InversionNoise:
    """The inverted video in unit-variance (DDPM) units: ComfyUI's x = x0 + σ·ε scaled by 1/√(1+σ²)."""
    sigma = inversion.noisiest_sigma
    inverted = model.model.process_latent_in(inversion.noisiest.float()) / math.sqrt(1.0 + sigma ** 2)
    return InversionNoise(inverted, noise_prior_strength, seed)


class MotionNoisePrior(VideoEditNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="VE_MotionNoisePrior",
            display_name="VE Motion Noise Prior",
            category="video_edit/motiondirector",
            **search_aliases(MOTIONDIRECTOR_ALIASES, ("noise prior", "inverted noise")),
            description=("MotionDirector's optional noise prior, a NOISE for SamplerCustomAdvanced: initial noise "
                         "√p · inverted + √(1−p) · random, where 'inverted' is a source video's DDIM inversion "
                         "(VE DDIM Invert with the empty prompt, 50 steps, on the base model). p = 0 is plain random "
                         "noise; official: 0.1-0.5 for a model trained on one video, 0 for several. The latent must "
                         "have the source video's frame count; a different size is resized bilinearly."),
            inputs=[
                io.Model.Input("model", tooltip="The model the sampler uses (its schedule scales the noise)."),
                InversionType.Input("inversion", tooltip="VE DDIM Invert's inversion of a training video."),
                io.Float.Input("noise_prior", default=0.0, min=0.0, max=1.0, step=0.01,
                               tooltip="p: the share of the inverted noise (0 = random noise; official 0.1-0.5)."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                             tooltip="Seed of the random part of the noise."),
            ],
            outputs=[io.Noise.Output(display_name="noise", tooltip="A NOISE for core SamplerCustomAdvanced.")],
        )

    @classmethod
    def execute(cls, model, inversion, noise_prior, seed) -> io.NodeOutput:
        return io.NodeOutput(inversion_noise(model, inversion, noise_prior, seed))


NODES = [MotionClipSet, TrainMotionDirector, MotionNoisePrior]
