"""PatchGAN discriminator on UNet-space tensors (predicted x0 or predicted noise)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

NORMS = ("batch", "instance", "none")
RELEASED_STAGES = 4  # DoCo's gan.py: four k4 s2 p1 convs (64 -> 4 on SD latents), then k4 p1 -> 3x3


def default_stages(size: int, max_stages: int = RELEASED_STAGES) -> int:
    """Stride-2 stages that leave a >= 4x4 map before the final conv, so the logits are >= 3x3 patches
    as in the released code on 64x64 SD latents (64 -> 4 stages, 16 -> 2, 8 -> 1); at least 1."""
    if size < 8:
        return 1
    return max(1, min(max_stages, int(math.log2(size / 4))))


def logit_size(size: int, n_layers: int) -> int:
    """Side of the logit map for a square input of side `size` (each k4 s2 p1 conv halves, rounding
    down; the final k4 s1 p1 conv removes one)."""
    for _ in range(n_layers):
        size = (size + 2 - 4) // 2 + 1
    return size - 1


def _norm(kind: str, channels: int) -> nn.Module:
    """The normalisation layer after each stage but the first."""
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=True)
    return nn.Identity()


class PatchDiscriminator(nn.Module):
    """PatchGAN of DoCo's `gan.py`, generalised to C input channels and fewer stages.

    Layout: Conv(C->w, k4 s2 p1) + LeakyReLU(0.2), then (n_layers - 1) x [Conv(k4 s2 p1) + norm +
    LeakyReLU(0.2)] doubling the width up to 8w, then Conv(->1, k4 s1 p1). Output (B, 1, m, m) with
    m = logit_size(size, n_layers): the released setting (C=4, 64x64, n_layers=4, w=64) gives 3x3;
    the world's 16x16x12 latents with the default n_layers=2 give 3x3 too, each logit judging a
    patch of the predicted latent. Logit > 0 means "fake" (target-prompt output), as released.
    """

    def __init__(self, in_channels: int, size: int, n_layers: int | None = None, width: int = 64, norm: str = "batch"):
        super().__init__()
        if norm not in NORMS:
            raise ValueError(f"unknown discriminator norm {norm!r} (known: {', '.join(NORMS)})")
        n_layers = default_stages(size) if n_layers is None else int(n_layers)
        if n_layers < 1 or logit_size(size, n_layers) < 1:
            fit = max((k for k in range(1, 12) if logit_size(size, k) >= 1), default=0)
            raise ValueError(
                f"discriminator with n_layers={n_layers} stride-2 stages leaves no logits for "
                f"{size}x{size} inputs (at most {fit} fit)"
            )
        self.n_layers, self.size = n_layers, size
        layers: list[nn.Module] = [nn.Conv2d(in_channels, width, 4, 2, 1), nn.LeakyReLU(0.2)]
        ch = width
        for i in range(1, n_layers):
            out = width * min(2**i, 8)
            layers += [nn.Conv2d(ch, out, 4, 2, 1), _norm(norm, out), nn.LeakyReLU(0.2)]
            ch = out
        layers.append(nn.Conv2d(ch, 1, 4, 1, 1))
        self.model = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, size, size) -> patch logits (B, 1, m, m), computed in float32."""
        return self.model(x.float())


def make_discriminator(
    in_channels: int,
    size: int,
    n_layers: int | None = None,
    width: int = 64,
    norm: str = "batch",
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> PatchDiscriminator:
    """A seeded PatchDiscriminator (PyTorch default init, as released) on `device`, float32."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        d = PatchDiscriminator(in_channels, size, n_layers, width, norm)
    return d.to(device)
