"""Forward hooks that training loops put on a LoRA-wrapped UNet (no I/O, no optimiser)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn


@contextmanager
def detach_first_token(unet: nn.Module) -> Iterator[None]:
    """Stop gradients through cross-attention K/V of context position 0 (released DoCo's
    CustomDiffusionAttnProcessor does this for CLIP's start token), via forward hooks."""

    def hook(_module: nn.Module, _inputs: Any, out: torch.Tensor) -> torch.Tensor:
        return torch.cat([out[:, :1].detach(), out[:, 1:]], dim=1)  # (B, L, inner)

    handles = [
        m.register_forward_hook(hook) for name, m in unet.named_modules() if name.endswith(("attn2.to_k", "attn2.to_v"))
    ]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def lora_leaves(unet: nn.Module) -> list[nn.Module]:
    """The lora_A / lora_B sub-layers (nn.Linear or nn.Conv2d) of every adapted module."""
    return [m for n, m in unet.named_modules() if ".lora_A." in n or ".lora_B." in n]


def forward_with(module: nn.Module, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """`module(x)` computed with another weight tensor of the same shape."""
    if isinstance(module, nn.Conv2d):
        return module._conv_forward(x, weight, module.bias)
    return nn.functional.linear(x, weight, module.bias)


@contextmanager
def route_grads(unet: nn.Module, params: list[nn.Parameter], n_first: int) -> Iterator[list[torch.Tensor]]:
    """Inside the block, batch rows [n_first:] see the LoRA through shadow leaves (same storage, no
    copy), so ONE backward of a summed loss yields d/dLoRA of the first rows' loss in `params` and of
    the other rows' loss in the yielded shadows (same order as `params`). Exact because UNet samples
    never mix (GroupNorm, attention and convs are per sample). DoCo uses it to get g_adv and g_prior
    from one 2B forward/backward instead of two B ones."""
    shadows = [p.detach().requires_grad_(True) for p in params]
    by_id = {id(p): s for p, s in zip(params, shadows)}
    leaves = [m for m in lora_leaves(unet) if id(m.weight) in by_id]

    def routed(module: nn.Module, shadow: torch.Tensor):
        def forward(x: torch.Tensor) -> torch.Tensor:  # x: (N, ..., in) or (N, in, h, w)
            if x.shape[0] <= n_first:
                return forward_with(module, x, module.weight)
            first, rest = x[:n_first], x[n_first:]
            return torch.cat([forward_with(module, first, module.weight), forward_with(module, rest, shadow)])

        return forward

    # The leaves' forward is swapped for the block (an instance attribute shadows the class method), so
    # each is computed once per row block; a forward hook would also run the unused whole-batch forward.
    for m in leaves:
        m.forward = routed(m, by_id[id(m.weight)])
    try:
        yield shadows
    finally:
        for m in leaves:
            del m.forward
