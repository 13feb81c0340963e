"""VE_OneShotTune: Tune-A-Video's one-shot tuning of an inflated SD1.x UNet on one clip.

The loop runs inside ComfyUI's own sampling stack (a Guider and a custom Sampler, as core's Train LoRA does),
so model loading/offloading, our attention patches, injections and ControlNet conditioning behave exactly as
they do when sampling. The input MODEL is never changed: query projections are tuned as deltas through
weight wrappers on a training clone, the temporal layers as a private copy.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import comfy.model_management
import comfy.samplers
import comfy.utils
import torch
import torch.nn.functional as F
from comfy_api.latest import io
from comfy_extras.nodes_custom_sampler import Guider_Basic
from torch import nn
from tqdm import tqdm

from ..kernels.unet_layout import iter_transformer_blocks
from .inflate import GRADIENT_CHECKPOINTING, get_inflation, inflate
from .model_helpers import add_weight_patches, require_sd1_unet, require_video_latent

TUNING_KEY = "video_edit_tuning"


@dataclass
class TunedWeights:
    """Everything one-shot tuning changed: query-projection deltas (by model key) and the temporal layers."""

    query_deltas: dict[str, torch.Tensor]
    temporal: dict[str, torch.Tensor]
    frame_groupnorm: bool
    metadata: dict = field(default_factory=dict)


def query_weight_shapes(unet: nn.Module) -> dict[str, torch.Size]:
    """Model key -> shape of Tune-A-Video's tuned query projections: attn1.to_q and attn2.to_q of every block."""
    return {f"diffusion_model.{path}.{attn}.to_q.weight": getattr(block, attn).to_q.weight.shape
            for _, path, _, block in iter_transformer_blocks(unet) for attn in ("attn1", "attn2")}


def apply_tuned(model, tuned: TunedWeights, what: str = "tuned weights"):
    """A clone of ``model`` carrying ``tuned``: re-inflated with its temporal layers, query deltas as weight patches.
    Weights that do not fit the model are refused in one line starting with ``what``."""
    unet = require_sd1_unet(model)
    shapes = query_weight_shapes(unet)
    if set(tuned.query_deltas) != set(shapes):
        odd = sorted(set(tuned.query_deltas) ^ set(shapes))[0]
        raise ValueError(f"{what}: its query projections do not match this model's transformer blocks (e.g. {odd}); "
                         "it was tuned for another UNet layout. Use the checkpoint it was tuned on.")
    for key, delta in tuned.query_deltas.items():
        if shapes[key] != delta.shape:
            raise ValueError(f"{what}: {key} has shape {tuple(delta.shape)}, the model expects "
                             f"{tuple(shapes[key])}. Use the checkpoint it was tuned on.")
    clone = inflate(model, tuned.temporal, tuned.frame_groupnorm, what)
    add_weight_patches(clone, {key: (delta,) for key, delta in tuned.query_deltas.items()})
    clone.set_attachments(TUNING_KEY, tuned)
    return clone


class QueryDelta(nn.Module):
    """Weight wrapper ``W -> W + delta`` with a trainable delta; remembers W for decoupled weight decay."""

    def __init__(self, shape, device):
        super().__init__()
        self.delta = nn.Parameter(torch.zeros(shape, device=device))
        self.base = None

    def forward(self, weight):
        self.base = weight.detach()
        return weight + self.delta.to(weight.dtype)


def remove_weight_wrappers(patcher, wrappers):
    """Take training wrappers off the shared modules: ComfyUI keeps a fully loaded model's weight functions
    when it switches to another clone, which would otherwise apply the deltas twice."""
    wrappers = list(wrappers)
    for module in patcher.model.modules():
        functions = getattr(module, "weight_function", None)
        if functions:
            module.weight_function = [f for f in functions if not any(f is w for w in wrappers)]


def allow_autograd(module: nn.Module):
    """Weights that ComfyUI loaded while running a graph are inference tensors, which autograd cannot use.
    Re-create them as ordinary tensors with the same values on the same device."""
    with torch.inference_mode(False):
        for sub in module.modules():
            for name, param in sub._parameters.items():
                if param is not None and param.is_inference():
                    sub._parameters[name] = nn.Parameter(param.clone(), requires_grad=param.requires_grad)
            for name, buffer in sub._buffers.items():
                if buffer is not None and buffer.is_inference():
                    sub._buffers[name] = buffer.clone()


def freeze_all_but(trainable: list[nn.Parameter]):
    """No weight of any loaded model (the UNet, its injected layers, a ControlNet) gets a gradient, except
    ``trainable``: the backward pass then computes only what the optimiser uses, and leaves no ``.grad`` behind."""
    keep = {id(p) for p in trainable}
    for loaded in comfy.model_management.current_loaded_models:
        patcher = loaded.model
        if patcher is None:
            continue
        for param in patcher.model.parameters():
            if id(param) not in keep:
                param.requires_grad_(False)
                param.grad = None


class TrainingSampler(comfy.samplers.Sampler):
    """Runs an optimisation inside guider.sample(), so loading, patches, wrappers and injections are those of
    sampling. Owns the loop: seeded generator, progress bar, cancel, gradient checkpointing and NaN check;
    subclasses define ``train_step``, which returns that step's losses by name."""

    title = "training"

    def __init__(self, steps: int, seed: int, gradient_checkpointing: bool):
        self.steps = steps
        self.seed = seed
        self.gradient_checkpointing = gradient_checkpointing
        self.losses: dict[str, list[float]] = {}

    def train_step(self, model_wrap, latent: torch.Tensor, step: int, generator: torch.Generator,
                   extra_args) -> dict[str, float]:
        """One optimisation step; ``latent`` is the sampled LATENT, scaled into the model's space."""
        raise NotImplementedError

    def trainable_parameters(self) -> list[nn.Parameter]:
        """What the optimiser trains; every other weight of the loaded models is frozen for the run."""
        raise NotImplementedError

    def after_step(self, step: int):
        """Called after each completed step (1-based)."""

    def check_finite(self, loss: torch.Tensor, step: int, name: str = "loss"):
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"{self.title}: the {name} became {loss.item()} at step {step}. Lower learning_rate, or run "
                "the model in fp32 (the fp16 weights overflowed).")

    def sample(self, model_wrap, sigmas, extra_args, callback, noise, latent_image=None, denoise_mask=None,
               disable_pbar=False):
        allow_autograd(model_wrap.inner_model)
        freeze_all_but(self.trainable_parameters())
        latent = latent_image.detach().clone()
        generator = torch.Generator().manual_seed(self.seed)
        progress = comfy.utils.ProgressBar(self.steps)
        bar = tqdm(range(self.steps), desc=self.title, disable=not comfy.utils.PROGRESS_BAR_ENABLED)
        token = GRADIENT_CHECKPOINTING.set(self.gradient_checkpointing)
        try:
            for step in bar:
                comfy.model_management.throw_exception_if_processing_interrupted()
                losses = self.train_step(model_wrap, latent, step, generator, extra_args)
                for name, value in losses.items():
                    self.losses.setdefault(name, []).append(value)
                bar.set_postfix({name: f"{value:.4f}" for name, value in losses.items()})
                progress.update_absolute(step + 1, self.steps)
                self.after_step(step + 1)
        finally:
            GRADIENT_CHECKPOINTING.reset(token)
        return latent_image


def predict_eps(model_wrap, clip: torch.Tensor, timestep: torch.Tensor, eps: torch.Tensor, extra_args) -> torch.Tensor:
    """The model's ε-prediction for ``clip`` noised with ``eps`` to DDPM ``timestep`` (shared by all frames)."""
    sampling = model_wrap.inner_model.model_sampling
    sigma = sampling.sigma(timestep.to(clip.device)).to(clip).expand(clip.shape[0]).view(-1, 1, 1, 1)
    noisy = clip + sigma * eps
    denoised = model_wrap(noisy, sigma.flatten(), **extra_args)
    return (noisy - denoised) / sigma


def train_in_guider(guider, latent: torch.Tensor, sampler: TrainingSampler, seed: int):
    """Run ``sampler``'s optimisation through ``guider.sample`` on ``latent`` (which also sizes model loading)."""
    sampling = guider.model_patcher.get_model_object("model_sampling")
    sigmas = torch.stack([sampling.sigma_max, sampling.sigma_min]).float()
    guider.sample(torch.zeros_like(latent), latent, sampler, sigmas, seed=seed)


class OneShotTuningSampler(TrainingSampler):
    """Tune-A-Video's step: ε-MSE at one shared random timestep per clip."""

    title = "one-shot tuning"

    def __init__(self, deltas: list[QueryDelta], temporal_params: list[nn.Parameter], steps: int, learning_rate: float,
                 weight_decay: float, seed: int, gradient_checkpointing: bool):
        super().__init__(steps, seed, gradient_checkpointing)
        self.deltas = deltas
        self.params = [d.delta for d in deltas] + temporal_params
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        # AdamW's decay on the full weight W = base + delta is applied by hand to the deltas (see _decay_queries),
        # so the optimiser decays only the temporal parameters.
        self.optimizer = torch.optim.AdamW(
            [{"params": [d.delta for d in deltas], "weight_decay": 0.0},
             {"params": temporal_params, "weight_decay": weight_decay}],
            lr=learning_rate, betas=(0.9, 0.999), eps=1e-8)

    def trainable_parameters(self):
        return self.params

    def _decay_queries(self):
        """AdamW's decoupled decay of the whole tuned weight: W <- W - lr * wd * W, written on the delta."""
        scale = self.learning_rate * self.weight_decay
        with torch.no_grad():
            for d in self.deltas:
                d.delta.sub_(scale * (d.base.to(d.delta) + d.delta))

    def train_step(self, model_wrap, clip, step, generator, extra_args):
        timestep = torch.randint(0, 1000, (1,), generator=generator)
        eps = torch.randn(clip.shape, generator=generator).to(clip)
        loss = F.mse_loss(predict_eps(model_wrap, clip, timestep, eps, extra_args).float(), eps.float())
        self.check_finite(loss, step)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self._decay_queries()
        self.optimizer.step()
        return {"loss": loss.item()}


def one_shot_tune(model, latent: dict, positive, steps: int, learning_rate: float, seed: int,
                  gradient_checkpointing: bool = True, weight_decay: float = 1e-2) -> tuple[object, list[float]]:
    """Tune ``model`` (inflated) on one clip; return the tuned clone and the loss per step."""
    unet = require_sd1_unet(model)
    samples = require_video_latent(latent)
    inflation = get_inflation(model)
    if inflation is None:
        raise ValueError("model: one-shot tuning trains the temporal layers; connect the MODEL through "
                         "'Inflate UNet for Video' (VE_InflateUNet) first.")
    with torch.inference_mode(False), torch.enable_grad():
        device = model.load_device
        # A private copy of the temporal layers: the training clone injects it, the optimiser trains it.
        trainer = inflate(model, inflation.layers.state_dict(), inflation.frame_groupnorm)
        trainer_layers = get_inflation(trainer).layers
        temporal_params = trainer_layers.tunable_parameters()
        for p in temporal_params:
            p.requires_grad_(True)
        deltas = {key: QueryDelta(shape, device) for key, shape in query_weight_shapes(unet).items()}
        for key, delta in deltas.items():
            trainer.add_weight_wrapper(key, delta)
        sampler = OneShotTuningSampler(list(deltas.values()), temporal_params, steps, learning_rate, weight_decay, seed,
                                       gradient_checkpointing)
        guider = Guider_Basic(trainer)
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
        )
    return apply_tuned(model, tuned), sampler.losses["loss"]


class OneShotTune(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="VE_OneShotTune",
            display_name="One-Shot Tune (Tune-A-Video)",
            category="video_edit/tune_a_video",
            description=(
                "Tunes an inflated model on the source clip, exactly Tune-A-Video's recipe: the query projections of "
                "self- and cross-attention and the temporal attention layers (not their LayerNorm) are trained with "
                "AdamW (weight decay 0.01, grad-norm clip 1.0) on the ε-MSE at one random timestep shared by all "
                "frames. Returns a tuned copy; the input MODEL is unchanged. Changing only the edit prompt downstream "
                "does not retrain."),
            inputs=[
                io.Model.Input("model", tooltip="An inflated SD1.x model (VE_InflateUNet), optionally with sparse-causal attention."),
                io.Latent.Input("latent", tooltip="The source clip, VAE-encoded."),
                io.Conditioning.Input("conditioning", tooltip="The source prompt describing the clip."),
                io.Int.Input("steps", default=500, min=1, max=100000),
                io.Float.Input("learning_rate", default=3e-5, min=1e-7, max=1.0, step=1e-6),
                io.Int.Input("seed", default=33, min=0, max=0xFFFFFFFFFFFFFFFF),
                io.Boolean.Input("gradient_checkpointing", default=True,
                                 tooltip="Recompute transformer blocks in the backward pass: much less memory, a bit slower."),
            ],
            outputs=[io.Model.Output(display_name="model"), io.LossMap.Output(display_name="loss")],
        )

    @classmethod
    def execute(cls, model, latent, conditioning, steps, learning_rate, seed, gradient_checkpointing) -> io.NodeOutput:
        tuned, losses = one_shot_tune(model, latent, conditioning, steps, learning_rate, seed, gradient_checkpointing)
        return io.NodeOutput(tuned, {"loss": losses})


NODES = [OneShotTune]
