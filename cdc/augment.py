"""Batch image augmentation that mimics what a small diffusion model's samples look like."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# Ranges at strength 1.0. Chosen so a 32x32 emoji stays recognisable while covering the artefacts of
# generated images: a few pixels of shift, slight zoom, soft edges, off colours, grain.
MAX_SHIFT_PX = 3.0
MAX_LOG_SCALE = math.log(1.15)
MAX_BLUR_SIGMA = 1.0
MAX_BRIGHTNESS = 0.12  # additive offset
MAX_CONTRAST = 0.25  # multiplicative, log-uniform
MAX_SATURATION = 0.35  # multiplicative, log-uniform
MAX_HUE_RAD = math.radians(18.0)
MAX_NOISE_SIGMA = 0.05
BLUR_RADIUS = 3  # kernel 7 covers sigma 1 to ~3 sigma


def _uniform(n: int, lo: float, hi: float, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """(n,) uniform samples in [lo, hi) drawn from `generator` only."""
    return lo + (hi - lo) * torch.rand(n, generator=generator, device=device)


def _hue_matrices(theta: torch.Tensor) -> torch.Tensor:
    """(B,) angles -> (B,3,3) rotations about the grey axis (1,1,1)/sqrt(3); white and grey stay fixed."""
    c, s = torch.cos(theta), torch.sin(theta)
    k = 1.0 / math.sqrt(3.0)
    # Rodrigues: R = cI + s[k]x + (1-c) k k^T with k = (1,1,1)/sqrt3
    eye = torch.eye(3, device=theta.device, dtype=theta.dtype)
    cross = torch.tensor([[0.0, -k, k], [k, 0.0, -k], [-k, k, 0.0]], device=theta.device, dtype=theta.dtype)
    outer = torch.full((3, 3), 1.0 / 3.0, device=theta.device, dtype=theta.dtype)
    return c[:, None, None] * eye + s[:, None, None] * cross + (1 - c)[:, None, None] * outer


def _colour_jitter(x: torch.Tensor, generator: torch.Generator, strength: float) -> torch.Tensor:
    """Hue rotation, saturation, contrast and brightness per image; x (B,3,H,W) in [0,1]."""
    b, dev = x.shape[0], x.device
    theta = _uniform(b, -MAX_HUE_RAD, MAX_HUE_RAD, generator, dev) * strength
    x = torch.einsum("bij,bjhw->bihw", _hue_matrices(theta).to(x.dtype), x)
    sat = torch.exp(_uniform(b, -1, 1, generator, dev) * MAX_SATURATION * strength).to(x.dtype)
    grey = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)  # (B,1,H,W)
    x = grey + sat[:, None, None, None] * (x - grey)
    con = torch.exp(_uniform(b, -1, 1, generator, dev) * MAX_CONTRAST * strength).to(x.dtype)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = mean + con[:, None, None, None] * (x - mean)
    bri = (_uniform(b, -1, 1, generator, dev) * MAX_BRIGHTNESS * strength).to(x.dtype)
    return (x + bri[:, None, None, None]).clamp(0, 1)


def _affine(x: torch.Tensor, generator: torch.Generator, strength: float) -> torch.Tensor:
    """Random zoom and shift per image with white fill; x (B,3,H,W)."""
    b, _, h, w = x.shape
    dev = x.device
    scale = torch.exp(_uniform(b, -1, 1, generator, dev) * MAX_LOG_SCALE * strength)
    # grid coordinates span [-1, 1] over the image, so one pixel is 2/size
    tx = _uniform(b, -1, 1, generator, dev) * MAX_SHIFT_PX * strength * 2.0 / w
    ty = _uniform(b, -1, 1, generator, dev) * MAX_SHIFT_PX * strength * 2.0 / h
    theta = torch.zeros(b, 2, 3, device=dev, dtype=x.dtype)
    theta[:, 0, 0] = (1.0 / scale).to(x.dtype)  # output pixel -> input pixel, so zoom-in divides
    theta[:, 1, 1] = (1.0 / scale).to(x.dtype)
    theta[:, 0, 2] = tx.to(x.dtype)
    theta[:, 1, 2] = ty.to(x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    # sample the "ink" (1 - x) with zero padding, so everything outside the image becomes white
    ink = F.grid_sample(1.0 - x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return 1.0 - ink


def _blur(x: torch.Tensor, generator: torch.Generator, strength: float) -> torch.Tensor:
    """Separable gaussian blur with a per-image sigma in [0, MAX_BLUR_SIGMA*strength]; x (B,3,H,W)."""
    b, c, h, w = x.shape
    sigma = _uniform(b, 0, MAX_BLUR_SIGMA * strength, generator, x.device).clamp_min(1e-3).to(x.dtype)
    r = torch.arange(-BLUR_RADIUS, BLUR_RADIUS + 1, device=x.device, dtype=x.dtype)
    k = torch.exp(-0.5 * (r[None, :] / sigma[:, None]) ** 2)  # (B, K); sigma ~0 gives a delta
    k = (k / k.sum(dim=1, keepdim=True)).repeat_interleave(c, dim=0)  # (B*C, K)
    y = x.reshape(1, b * c, h, w)  # one group per (image, channel)
    y = F.pad(y, (BLUR_RADIUS,) * 4, mode="replicate")
    y = F.conv2d(y, k[:, None, None, :], groups=b * c)
    y = F.conv2d(y, k[:, None, :, None], groups=b * c)
    return y.reshape(b, c, h, w)


def augment(x: torch.Tensor, generator: torch.Generator, strength: float = 1.0) -> torch.Tensor:
    """Randomly colour-jitter, shift/zoom, blur and add noise to a batch (B,3,H,W) in [0,1]."""
    if x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"augment expects a float batch (B,3,H,W), got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"augment expects floats in [0,1], got dtype {x.dtype}")
    if strength < 0:
        raise ValueError(f"augment strength must be >= 0, got {strength}")
    if x.shape[0] == 0 or strength == 0:
        return x.clone()
    x = _colour_jitter(x, generator, strength)
    x = _affine(x, generator, strength)
    x = _blur(x, generator, strength)
    noise_sigma = _uniform(x.shape[0], 0, MAX_NOISE_SIGMA * strength, generator, x.device).to(x.dtype)
    noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    x = x + noise_sigma[:, None, None, None] * noise
    return x.clamp(0, 1)
