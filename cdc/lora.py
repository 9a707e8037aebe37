"""LoRA adapters on the UNet via peft: which layers they wrap, adding and removing them, the frozen base."""

from __future__ import annotations

import typing
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from cdc.choices import LoraGroup

GROUPS = typing.get_args(LoraGroup)
_ATTN_PROJ = ("to_q", "to_k", "to_v", "to_out.0")
_BLOCKS = ("down_blocks.", "mid_block.", "up_blocks.")


def target_modules(unet: nn.Module, group: str) -> list[str]:
    """Full module names LoRA wraps for `group` (sorted).

    xattn-kv: cross-attention K/V (`attn2.to_k`, `attn2.to_v`), DoCo's released default;
    xattn: attn2 Q/K/V/out (ESD-x); attn: attn1 and attn2 Q/K/V/out;
    full: every nn.Linear and nn.Conv2d inside the down/mid/up blocks.
    """
    if group not in GROUPS:
        raise ValueError(f"unknown LoRA group {group!r} (known: {', '.join(GROUPS)})")
    names = []
    for name, module in unet.named_modules():
        module = getattr(module, "base_layer", module)  # already-wrapped layers count by their base
        if group == "full":
            ok = (
                name.startswith(_BLOCKS)
                and isinstance(module, (nn.Linear, nn.Conv2d))
                and ".lora_" not in name
                and not name.endswith(".base_layer")
            )
        else:
            attns = ("attn2",) if group.startswith("xattn") else ("attn1", "attn2")
            projs = ("to_k", "to_v") if group == "xattn-kv" else _ATTN_PROJ
            ok = any(name.endswith(f"{a}.{p}") for a in attns for p in projs) and isinstance(module, nn.Linear)
        if ok:
            names.append(name)
    if not names:
        raise ValueError(f"LoRA group {group!r} matches no module of this UNet")
    return sorted(names)


def add_lora(unet: nn.Module, group: str, rank: int, alpha: float | None, seed: int) -> nn.Module:
    """Freeze `unet` and add a trainable LoRA adapter ("default") on `group`, in place; returns unet.

    Init is peft's "gaussian" (A ~ N(0, 1/r), B = 0), so the adapter starts as the identity and the
    untouched base stays reachable with `base_model(unet)`. LoRA weights are float32 even on an
    fp16 UNet (peft casts activations to the adapter dtype), as diffusers' examples do.
    """
    from peft import LoraConfig

    if getattr(unet, "peft_config", None):
        raise ValueError(f"the UNet already carries LoRA adapters {list(unet.peft_config)}; remove_lora(unet) first")
    if rank < 1:
        raise ValueError(f"LoRA rank must be >= 1, got {rank}")
    targets = target_modules(unet, group)
    unet.requires_grad_(False)
    config = LoraConfig(
        r=rank, lora_alpha=float(rank if alpha is None else alpha), init_lora_weights="gaussian", target_modules=targets
    )
    device = next(unet.parameters()).device
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        unet.add_adapter(config)
    for p in lora_parameters(unet):
        p.data = p.data.float()
    return unet


def lora_parameters(unet: nn.Module) -> list[nn.Parameter]:
    """The trainable LoRA tensors in a fixed (module-name) order."""
    params = [p for n, p in unet.named_parameters() if ".lora_" in n and p.requires_grad]
    if not params:
        raise ValueError("the UNet has no trainable LoRA parameters; call add_lora first")
    return params


def remove_lora(unet: nn.Module) -> nn.Module:
    """Strip every LoRA layer, giving back the plain base UNet (in place)."""
    if getattr(unet, "peft_config", None):
        unet.unload_lora()
    return unet


def tuner_layers(unet: nn.Module) -> list[nn.Module]:
    """The peft-wrapped layers of `unet` (collect once; walking the module tree costs milliseconds)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [m for m in unet.modules() if isinstance(m, BaseTunerLayer)]


@contextmanager
def base_model(unet: nn.Module, layers: list[nn.Module] | None = None) -> Iterator[nn.Module]:
    """Run the frozen base model: LoRA disabled inside the block (no second UNet copy in memory).

    Pass `layers=tuner_layers(unet)` in loops: diffusers' own disable_adapters() re-walks the tree
    and re-reads package metadata on every call (~10 ms).
    """
    layers = tuner_layers(unet) if layers is None else layers
    if not layers:
        raise ValueError("the UNet has no LoRA adapter to disable")
    for m in layers:
        m.enable_adapters(False)
    try:
        yield unet
    finally:
        for m in layers:
            m.enable_adapters(True)  # also restores requires_grad on the adapter weights (peft)


