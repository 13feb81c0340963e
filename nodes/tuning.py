"""VE_OneShotTune: Tune-A-Video's one-shot tuning of an inflated SD1.x UNet on one video.

The loop runs inside ComfyUI's own sampling stack (a Guider and a custom Sampler, as core's Train LoRA does),
so model loading/offloading, our attention patches, injections and ControlNet conditioning behave exactly as
they do when sampling. The input MODEL is never changed: query projections are tuned as deltas through
weight wrappers on a training clone, the temporal layers as a private copy.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from comfy_api.latest import io, ui
from torch import nn

from ..kernels.weight_decay import decay_delta_
from .shared.animatediff import (ade_motion_module, apply_tuned_weights, fit_motion_module_per_call, motion_query_layers,
                                 with_motion_query_deltas)
from .shared.comfy_internals import BasicGuider, weight_functions
from .shared.inputs import require_unet, require_video_latent
from .shared.socket_types import VideoEditNode
from .shared.training import TrainingSampler, adamw, predict_eps, remove_weight_wrappers, train_in_guider
from .shared.video_unet import TunedWeights, bypass_temporal, inflate, query_layers, require_inflated
from .shared.plots import loss_summary
from .shared.schema_fields import TUNE_A_VIDEO_ALIASES, DREAMIX_ALIASES, MAKE_YOUR_VIDEO_ALIASES, search_aliases

# What VE One-Shot Tune does with an AnimateDiff-Evolved motion module on the MODEL: keep it frozen (it runs on video
# steps, is off on Dreamix's image steps; the default, the behaviour without this option), or also tune the query
# projections of its temporal attention (as Tune-A-Video tunes its own temporal attention's queries).
MOTION_MODULE_MODES = ("frozen", "tune its queries")


class QueryDelta(nn.Module):
    """Weight wrapper ``W -> W + delta`` on ``layer``, with a trainable delta; remembers W for decoupled weight
    decay (``base``)."""

    def __init__(self, layer: nn.Module, device):
        super().__init__()
        self.delta = nn.Parameter(torch.zeros(layer.weight.shape, device=device))
        self.layers = [layer]  # in a list, not a submodule: the layer's weights are not the wrapper's
        self.used = None

    def forward(self, weight):
        # ComfyUI hands weight wrappers a copy of the weight. Kept until the step's decay, the copies of all
        # query projections would add up to their whole size; when the copy is just the layer's own weight
        # (this wrapper comes first, same device and dtype), the layer's weight serves instead.
        layer = self.layers[0]
        own = (weight_functions(layer)[0] is self and layer.weight.device == weight.device
               and layer.weight.dtype == weight.dtype)
        self.used = None if own else weight.detach()
        return weight + self.delta.to(weight.dtype)

    @property
    def base(self) -> torch.Tensor:
        """W as the last forward pass used it, before the delta."""
        return self.layers[0].weight.detach() if self.used is None else self.used


class OneShotTuningSampler(TrainingSampler):
    """Tune-A-Video's step: ε-MSE at one shared random timestep per video."""

    title = "one-shot tuning"

    def __init__(self, deltas: list[QueryDelta], temporal_params: list[nn.Parameter], steps: int, learning_rate: float,
                 weight_decay: float, seed: int, gradient_checkpointing: bool, device: torch.device,
                 image_mix: float = 0.0):
        super().__init__(steps, seed, gradient_checkpointing)
        self.deltas = deltas
        self.image_mix = image_mix
        self.params = [d.delta for d in deltas] + temporal_params
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        # AdamW's decay on the full weight W = base + delta is applied by hand to the deltas (see _decay_queries),
        # so the optimiser decays only the temporal parameters.
        self.optimizer = adamw([{"params": [d.delta for d in deltas], "weight_decay": 0.0},
                                {"params": temporal_params}], learning_rate, weight_decay, device)

    def trainable_parameters(self):
        return self.params

    def _decay_queries(self):
        for d in self.deltas:
            decay_delta_(d.delta, d.base, self.learning_rate, self.weight_decay)

    def train_step(self, model_wrap, video, step, generator, extra_args):
        image = bool(self.image_mix) and bool(torch.rand((), generator=generator) < self.image_mix)
        if image:
            loss = self._image_loss(model_wrap, video, generator, extra_args)
        else:
            timestep = torch.randint(0, 1000, (1,), generator=generator)
            eps = torch.randn(video.shape, generator=generator).to(video)
            loss = F.mse_loss(predict_eps(model_wrap, video, timestep, eps, extra_args).float(), eps.float())
        self.check_finite(loss, step)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self._decay_queries()
        self.optimizer.step()  # on image steps the temporal parameters have no gradient: AdamW leaves them as they are
        value, other = loss.item(), float("nan")
        by_kind = {"video": other if image else value, "image": value if image else other} if self.image_mix else {}
        return {"loss": value, **by_kind}

    @staticmethod
    def _image_loss(model_wrap, video, generator, extra_args):
        """Dreamix's image step: a random subset of the frames, shuffled, as independent images (each its own
        timestep), through the image model's path (temporal layers skipped, per-frame norms and attention)."""
        frames = video.shape[0]
        count = int(torch.randint(1, frames + 1, (1,), generator=generator))
        images = video[torch.randperm(frames, generator=generator)[:count].to(video.device)]
        timesteps = torch.randint(0, 1000, (count,), generator=generator)
        eps = torch.randn(images.shape, generator=generator).to(video)
        with bypass_temporal():
            return F.mse_loss(predict_eps(model_wrap, images, timesteps, eps, extra_args).float(), eps.float())


def one_shot_tune(model, latent: dict, positive, steps: int, learning_rate: float, seed: int,
                  gradient_checkpointing: bool = True, weight_decay: float = 1e-2,
                  image_mix: float = 0.0, motion_module: str = MOTION_MODULE_MODES[0]
                  ) -> tuple[object, dict[str, list[float]]]:
    """Tune ``model`` (inflated) on one video; return the tuned clone and its losses by name: ``loss`` per step, and
    with ``image_mix`` (Dreamix) also ``video`` and ``image``, NaN on the other kind of step."""
    if not 0.0 <= image_mix <= 1.0:
        raise ValueError(f"image_mix: {image_mix} is not a fraction of the steps; use 0 (Tune-A-Video) to 1.")
    if motion_module not in MOTION_MODULE_MODES:
        raise ValueError(f"motion_module: {motion_module!r} is not one of {', '.join(MOTION_MODULE_MODES)}.")
    unet = require_unet(model)
    samples = require_video_latent(latent)
    motion_layers = (motion_query_layers(ade_motion_module(model)) if motion_module == MOTION_MODULE_MODES[1]
                     else {})
    inflation = require_inflated(model, needs="one-shot tuning trains the temporal layers")
    with torch.inference_mode(False), torch.enable_grad():
        device = model.load_device
        # A private copy of the temporal layers: the training clone injects it, the optimiser trains it.
        trainer = inflate(model, inflation.layers.state_dict(), inflation.frame_groupnorm, mask=inflation.mask)
        fit_motion_module_per_call(trainer)  # AnimateDiff-Evolved's motion module off on Dreamix's image steps
        trainer_layers = require_inflated(trainer).layers
        temporal_params = trainer_layers.tunable_parameters()
        for p in temporal_params:
            p.requires_grad_(True)
        deltas = {key: QueryDelta(layer, device) for key, layer in query_layers(unet).items()}
        for key, delta in deltas.items():
            trainer.add_weight_wrapper(key, delta)
        motion_deltas = {path: QueryDelta(layer, device) for path, layer in motion_layers.items()}
        if motion_deltas:
            trainer = with_motion_query_deltas(trainer, {path: d.delta for path, d in motion_deltas.items()}, "model")
        sampler = OneShotTuningSampler([*deltas.values(), *motion_deltas.values()], temporal_params, steps,
                                       learning_rate, weight_decay, seed,
                                       gradient_checkpointing, device, image_mix)
        guider = BasicGuider(trainer)
        guider.set_conds(positive)
        try:
            train_in_guider(guider, samples.clone(), sampler, seed)
        finally:
            remove_weight_wrappers(trainer, deltas.values())
        tuned = TunedWeights(
            query_deltas={key: d.delta.detach().float().cpu() for key, d in deltas.items()},
            temporal={k: v.detach().float().cpu().clone() for k, v in trainer_layers.state_dict().items()},
            frame_groupnorm=inflation.frame_groupnorm,
            metadata={"frames": samples.shape[0], "height": samples.shape[2] * 8, "width": samples.shape[3] * 8,
                      "steps": steps, "learning_rate": learning_rate, "seed": seed},
            mask=inflation.mask,
            motion_query_deltas={path: d.delta.detach().float().cpu() for path, d in motion_deltas.items()},
        )
    return apply_tuned_weights(model, tuned), sampler.losses


class OneShotTune(VideoEditNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="VE_OneShotTune",
            display_name="VE One-Shot Tune",
            category="video_edit/tune_a_video",
            **search_aliases(TUNE_A_VIDEO_ALIASES, DREAMIX_ALIASES, MAKE_YOUR_VIDEO_ALIASES, ("one shot tune", "fine-tune", "finetune")),
            description=(
                "Tunes an inflated model on the source video, exactly Tune-A-Video's recipe: the query projections of "
                "self- and cross-attention and the temporal attention layers (not their LayerNorm) are trained with "
                "AdamW (weight decay 0.01, gradients clipped to norm 1.0) on the ε-MSE at one random timestep shared by all "
                "frames. Returns a tuned copy; the input MODEL is unchanged. Changing only the edit prompt downstream "
                "does not retrain. Feed 'model' to VE Save Tuned Model or the sampler, 'loss' to VE Plot Loss."),
            inputs=[
                io.Model.Input("model", tooltip="An inflated SD1.x model (VE Inflate UNet), optionally with sparse-causal attention."),
                io.Latent.Input("latent", tooltip="The source video, VAE-encoded."),
                io.Conditioning.Input("conditioning", tooltip="The source prompt describing the video."),
                io.Int.Input("steps", default=500, min=1, max=100000,
                             tooltip="Training steps (Tune-A-Video: 500; Dreamix: a few hundred)."),
                io.Float.Input("learning_rate", default=3e-5, min=1e-7, max=1.0, step=1e-6,
                               tooltip="AdamW learning rate (Tune-A-Video: 3e-5)."),
                io.Int.Input("seed", default=33, min=0, max=0xFFFFFFFFFFFFFFFF,
                             tooltip="Seed of the timesteps and noise drawn in training (Tune-A-Video: 33)."),
                io.Boolean.Input("gradient_checkpointing", default=True,
                                 tooltip="Recompute transformer blocks in the backward pass: much less memory, a bit slower."),
                io.Float.Input("image_mix", default=0.0, min=0.0, max=1.0, step=0.05, optional=True,
                               tooltip="Dreamix: the fraction of steps that train on a random subset of the frames, "
                                       "shuffled, as independent images (temporal layers skipped, not trained). "
                                       "0 = Tune-A-Video."),
                io.Combo.Input("motion_module", options=list(MOTION_MODULE_MODES), default=MOTION_MODULE_MODES[0],
                               optional=True,
                               tooltip="With an AnimateDiff-Evolved motion module on the model (Use Evolved "
                                       "Sampling): frozen = it runs on video steps, untrained (off on image steps); "
                                       "tune its queries = also tune the query projections of its temporal "
                                       "attention. VE Save/Load Tuned keep them; loading needs the same motion "
                                       "module on the model."),
            ],
            outputs=[io.Model.Output(display_name="model", tooltip="The tuned copy of the model, for the sampler, VE DDIM "
                                                                  "Invert or VE Save Tuned Model."),
                     io.LossMap.Output(display_name="loss", tooltip="The loss of every step, for VE Plot Loss.")],
        )

    @classmethod
    def execute(cls, model, latent, conditioning, steps, learning_rate, seed, gradient_checkpointing,
                image_mix=0.0, motion_module=MOTION_MODULE_MODES[0]) -> io.NodeOutput:
        tuned, losses = one_shot_tune(model, latent, conditioning, steps, learning_rate, seed, gradient_checkpointing,
                                      image_mix=image_mix, motion_module=motion_module)
        return io.NodeOutput(tuned, losses, ui=ui.PreviewText(loss_summary(losses)))


NODES = [OneShotTune]
