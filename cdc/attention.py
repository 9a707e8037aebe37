"""Which attention kernel the world UNet trains with: PyTorch's fused SDPA or the unfused matmul-softmax-matmul."""

from __future__ import annotations

import typing
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import AttnProcessor

from cdc.choices import Attention


def resolve_attention(attention: str, device: str | torch.device) -> str:
    """'sdpa' or 'unfused' as given; 'auto' -> 'unfused' on the CPU, 'sdpa' elsewhere.

    Why: on the CPU the bf16 backward of the fused SDPA kernel is slow for the world UNet's short (16-64
    token) sequences (benchmarks/NOTES.md gives both timings); the unfused kernel computes the same
    function with plain matmuls. On CUDA the fused kernel is the fast one.
    """
    if attention not in typing.get_args(Attention):
        raise ValueError(f"attention must be one of {', '.join(typing.get_args(Attention))}, got {attention!r}")
    if attention == "auto":
        return "unfused" if torch.device(device).type == "cpu" else "sdpa"
    return attention


@contextmanager
def attention_kernel(unet: UNet2DConditionModel, attention: str) -> Iterator[None]:
    """Run the UNet's attention with the given kernel ('sdpa' keeps it as is); restore its processors after."""
    if attention == "sdpa":
        yield
        return
    if attention != "unfused":
        raise ValueError(f"attention kernel must be 'sdpa' or 'unfused', got {attention!r}")
    saved = unet.attn_processors  # {module path: processor}
    unet.set_attn_processor(AttnProcessor())
    try:
        yield
    finally:
        unet.set_attn_processor(saved)
