"""Loop pieces every method shares: prompt/latent validation, batches, finite checks, LoRA steps."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor, nn

from cdc.bundle import ModelBundle
from cdc.errors import NaNLossError
from cdc.lora import add_lora, lora_parameters, tuner_layers
from cdc.methods.config import LoraRunConfig
from cdc.text import TextEncoder

# Called after each update with (step, the trained tensors): how a caller snapshots a run at several lengths.
StepHook = Callable[[int, Sequence[nn.Parameter]], None]


def check_prompts(prompts: Sequence[str], what: str) -> list[str]:
    """A non-empty list of non-empty strings, or ValueError naming `what`."""
    if isinstance(prompts, str):
        raise ValueError(f"{what} must be a list of prompts, not one string")
    prompts = list(prompts)
    if not prompts:
        raise ValueError(f"{what} is empty: the concept has no prompts")
    blank = [i for i, p in enumerate(prompts) if not isinstance(p, str) or not p.strip()]
    if blank:
        raise ValueError(f"{what} has empty prompts at positions {blank[:5]}")
    return prompts


def check_pairs(target_prompts: Sequence[str], anchor_prompts: Sequence[str]) -> tuple[list[str], list[str]]:
    """Target prompt i is paired with anchor prompt i; they must differ (else nothing is erased). An anchor may be
    the empty prompt: the target is then mapped onto the model's unconditional images."""
    targets = check_prompts(target_prompts, "target_prompts")
    if isinstance(anchor_prompts, str) or not all(isinstance(a, str) for a in anchor_prompts):
        raise ValueError("anchor_prompts must be a list of prompts")
    anchors = list(anchor_prompts)
    if len(targets) != len(anchors):
        raise ValueError(f"target_prompts ({len(targets)}) and anchor_prompts ({len(anchors)}) must pair one to one")
    same = [i for i, (a, b) in enumerate(zip(targets, anchors)) if a.strip().lower() == b.strip().lower()]
    if same:
        raise ValueError(
            f"anchor equals target at pairs {same[:5]} (e.g. {targets[same[0]]!r}): pick a different anchor"
        )
    return targets, anchors


def check_latents(latents: Tensor, unet: nn.Module, what: str) -> Tensor:
    """(N, C, h, w) with N >= 1 and C the UNet's input channels."""
    if not isinstance(latents, Tensor) or latents.ndim != 4 or latents.shape[0] == 0:
        shape = tuple(latents.shape) if isinstance(latents, Tensor) else type(latents).__name__
        raise ValueError(f"{what} must be a non-empty (N, C, h, w) tensor, got {shape}")
    if latents.shape[1] != unet.config.in_channels:
        raise ValueError(f"{what} have {latents.shape[1]} channels, the UNet expects {unet.config.in_channels}")
    return latents


def prompt_index(n_latents: int, n_prompts: int, index: Sequence[int] | None) -> Tensor:
    """Which prompt each latent was drawn from: given, or latent i <- prompt i % n_prompts."""
    if index is None:
        return torch.arange(n_latents) % n_prompts
    idx = torch.as_tensor(list(index), dtype=torch.long)
    if idx.shape != (n_latents,) or (n_latents and (int(idx.min()) < 0 or int(idx.max()) >= n_prompts)):
        raise ValueError(f"latent prompt index must hold {n_latents} values in [0, {n_prompts})")
    return idx


def encode(text: TextEncoder, prompts: Sequence[str], device: torch.device, dtype: torch.dtype,
           chunk: int = 64) -> Tensor:
    """Contexts (P, L, D) for all prompts, once, so the loop never runs the text encoder."""
    with torch.no_grad():
        parts = [text.encode(list(prompts[i : i + chunk])) for i in range(0, len(prompts), chunk)]
    return torch.cat(parts).to(device=device, dtype=dtype)


@dataclass
class PairedData:
    """Latents (N, C, h, w), their prompt ids (N,), and per-prompt contexts (P, L, D) per prompt set."""

    latents: Tensor
    index: Tensor
    contexts: tuple[Tensor, ...]

    def batch(self, size: int, generator: torch.Generator) -> tuple[Tensor, ...]:
        """Draw `size` latents with replacement: (x0 (B, C, h, w), *contexts (B, L, D))."""
        pick = torch.randint(0, self.latents.shape[0], (size,), generator=generator, device=generator.device)
        pick = pick.cpu()
        prompts = self.index[pick]
        x0 = self.latents[pick.to(self.latents.device)]
        return (x0, *(c[prompts.to(c.device)] for c in self.contexts))


def paired_data(bundle: ModelBundle, latents: Tensor, index: Tensor, *prompt_sets: Sequence[str]) -> PairedData:
    """Move latents to the UNet and encode each prompt set once."""
    dev, dtype = bundle.unet.device, bundle.unet.dtype
    contexts = tuple(encode(bundle.text, p, dev, dtype) for p in prompt_sets)
    return PairedData(latents.to(device=dev, dtype=dtype), index, contexts)


@dataclass(frozen=True)
class ErasureData:
    """What an erasure may learn from, for one concept family: paired prompts (target i is anchor i with the
    concept in it), the base model's samples of either side in UNet space, and a retain set of other concepts.

    Latents are (N, C, h, w), with `*_index` (N,) naming the prompt each was drawn from; a side nobody sampled is
    None. Each method module says which sides it learns from in `NEEDS` ("target", "anchor", "retain").
    """

    target_prompts: list[str]
    anchor_prompts: list[str]
    target_latents: Tensor | None = None
    target_index: list[int] | None = None
    anchor_latents: Tensor | None = None
    anchor_index: list[int] | None = None
    retain_prompts: list[str] | None = None
    retain_latents: Tensor | None = None

    def need(self, method: str, *sides: str) -> None:
        """ValueError naming the first of `sides` whose samples are missing."""
        for side in sides:
            if getattr(self, f"{side}_latents") is None:
                raise ValueError(f"{method} learns from {side} samples, and none were given")


class LoraRun(NamedTuple):
    """What a method trains on and with: its data, the LoRA parameters and their optimiser, the tuner
    layers that `base_model()` switches off to get the frozen model (so no second UNet copy is held),
    and the one generator that draws every batch, noise and timestep."""

    data: PairedData
    params: list[nn.Parameter]
    layers: list[nn.Module]
    optimizer: torch.optim.AdamW
    generator: torch.Generator


def start_lora_run(
    bundle: ModelBundle, cfg: LoraRunConfig, latents: Tensor, latent_index: Sequence[int] | None,
    *prompt_sets: list[str],
    latents_name: str = "anchor_latents",
) -> LoraRun:
    """Check the latents (N, C, h, w) and which prompt each came from, encode every prompt set once,
    and wrap `bundle.unet` with a fresh seeded LoRA of cfg's group and rank and its optimiser."""
    unet = bundle.unet
    latents = check_latents(latents, unet, latents_name)
    index = prompt_index(latents.shape[0], len(prompt_sets[0]), latent_index)
    data = paired_data(bundle, latents, index, *prompt_sets)
    add_lora(unet, cfg.lora_group, cfg.lora_rank, cfg.lora_alpha, cfg.seed)
    params = lora_parameters(unet)
    optimizer = make_optimizer(params, cfg.lr, cfg.weight_decay)
    return LoraRun(data, params, tuner_layers(unet), optimizer, make_generator(cfg.seed))


def check_finite(method: str, step: int, **losses: float) -> None:
    """Raise NaNLossError naming the step and loss when any loss is NaN or infinite."""
    for name, value in losses.items():
        if value is not None and not math.isfinite(value):
            raise NaNLossError(
                f"{method}: {name} is {value} at step {step}; stopping (no LoRA is saved). "
                "Lower the learning rate or check the input latents."
            )


def make_generator(seed: int) -> torch.Generator:
    """The CPU generator that draws every batch, noise and timestep of a run."""
    return torch.Generator("cpu").manual_seed(int(seed))


def make_optimizer(params: list[nn.Parameter], lr: float, weight_decay: float = 1e-2) -> torch.optim.AdamW:
    """AdamW with the released DoCo / diffusers-example settings (betas 0.9/0.999, eps 1e-8)."""
    return torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.999), weight_decay=weight_decay, eps=1e-8)


def grads_of(loss: Tensor, params: Sequence[Tensor]) -> list[Tensor]:
    """d loss / d params without touching .grad; unreachable params get zeros."""
    grads = torch.autograd.grad(loss, list(params), allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]


def apply_step(optimizer: torch.optim.Optimizer, params: Sequence[nn.Parameter], grads: Sequence[Tensor]) -> None:
    """Install `grads` as .grad and take one optimizer step."""
    for p, g in zip(params, grads):
        p.grad = g.to(p.dtype)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def progress_bar(total: int, enabled: bool, desc: str):
    """A tqdm bar (notebook-aware) or a plain range when disabled."""
    if not enabled:
        return range(1, total + 1)
    from tqdm.auto import tqdm

    return tqdm(range(1, total + 1), desc=desc, leave=False)
