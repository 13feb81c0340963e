"""Training inside ComfyUI's sampling stack, shared by VE_OneShotTune and VE_TrainMotionDirector.

A Guider runs a custom Sampler whose ``sample`` is the optimisation loop (as core's Train LoRA does), so model
loading and offloading, attention patches, injections and ControlNet conditioning are those of sampling. The loop
owns the seeded generator, the progress bar, Cancel, gradient checkpointing and the NaN check; only the trainable
parameters get gradients.
"""

from __future__ import annotations

import comfy.model_management
import comfy.samplers
import comfy.utils
import torch
from torch import nn
from tqdm import tqdm

from .comfy_internals import loaded_patchers, progress_bars_enabled, set_weight_functions, weight_functions
from .unet_call import GRADIENT_CHECKPOINTING


def adamw(params, learning_rate: float, weight_decay: float, device: torch.device) -> torch.optim.AdamW:
    """AdamW as the official trainers set it up (β 0.9/0.999, eps 1e-8), run by torch's fused kernel when
    training runs on a device that has one (CPU and CUDA do): the same update, to float rounding, in one pass over
    all parameters instead of several per parameter (tools/benchmarks/tune_a_video.py); elsewhere torch's default
    implementation."""
    fused = torch.device(device).type in _fused_adamw_devices()
    return torch.optim.AdamW(params, lr=learning_rate, betas=(0.9, 0.999), eps=1e-8, weight_decay=weight_decay,
                             fused=fused or None)


def _fused_adamw_devices() -> list[str]:
    try:  # not public API; a torch without it gets the default implementation
        from torch.utils._foreach_utils import _get_fused_kernels_supported_devices
    except ImportError:
        return []
    return _get_fused_kernels_supported_devices()


def remove_weight_wrappers(patcher, wrappers):
    """Take training wrappers off the shared modules: ComfyUI keeps a fully loaded model's weight functions
    when it switches to another clone, which would otherwise apply the deltas twice."""
    wrappers = list(wrappers)
    for module in patcher.model.modules():
        functions = weight_functions(module)
        if functions:
            set_weight_functions(module, [f for f in functions if not any(f is w for w in wrappers)])


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
    for patcher in loaded_patchers():
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
        bar = tqdm(range(self.steps), desc=self.title, disable=not progress_bars_enabled())
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


def predict_eps(model_wrap, video: torch.Tensor, timestep: torch.Tensor, eps: torch.Tensor, extra_args) -> torch.Tensor:
    """The model's ε-prediction for ``video`` noised with ``eps`` to DDPM ``timestep`` (shared by all frames)."""
    sampling = model_wrap.inner_model.model_sampling
    sigma = sampling.sigma(timestep.to(video.device)).to(video).expand(video.shape[0]).view(-1, 1, 1, 1)
    noisy = video + sigma * eps
    denoised = model_wrap(noisy, sigma.flatten(), **extra_args)
    return (noisy - denoised) / sigma


def train_in_guider(guider, latent: torch.Tensor, sampler: TrainingSampler, seed: int):
    """Run ``sampler``'s optimisation through ``guider.sample`` on ``latent`` (which also sizes model loading)."""
    sampling = guider.model_patcher.get_model_object("model_sampling")
    sigmas = torch.stack([sampling.sigma_max, sampling.sigma_min]).float()
    guider.sample(torch.zeros_like(latent), latent, sampler, sigmas, seed=seed)
