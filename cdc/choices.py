"""The runtime choices that params.yaml names and the lowest layers act on, without importing torch."""

from __future__ import annotations

from typing import Literal

# Attention kernel in training: auto = unfused on the CPU (fused bf16 backward is slow there), else fused SDPA.
Attention = Literal["auto", "sdpa", "unfused"]
# How a float32 UNet runs: auto = bf16 autocast where the hardware has native bf16, else fp32.
Precision = Literal["auto", "fp32", "bf16"]
# The UNet layers a LoRA adapts. xattn-kv: cross-attention K/V (DoCo's and CA's released default); xattn: attn2
# Q/K/V/out (ESD-x); attn: self- and cross-attention Q/K/V/out; full: every Linear/Conv2d in the UNet blocks.
LoraGroup = Literal["xattn-kv", "xattn", "attn", "full"]
