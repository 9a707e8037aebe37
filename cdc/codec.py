"""Image <-> UNet-space codecs: space-to-depth for the world, the VAE for Stable Diffusion."""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn


class Codec(Protocol):
    """Maps images (B, 3, H, W) in [-1, 1] to UNet latents (B, C, H/d, W/d) and back."""

    channels: int
    downsample: int

    def encode(self, images: Tensor) -> Tensor: ...

    def decode(self, latents: Tensor) -> Tensor: ...

    def to_config(self) -> dict[str, Any]: ...


class SpaceToDepthCodec:
    """Lossless fold of f x f pixel blocks into channels: (B, 3, H, W) -> (B, 3 f^2, H/f, W/f)."""

    def __init__(self, factor: int = 2) -> None:
        if factor < 1:
            raise ValueError(f"space-to-depth factor must be >= 1, got {factor}")
        self.factor = factor
        self.channels = 3 * factor * factor
        self.downsample = factor

    def encode(self, images: Tensor) -> Tensor:
        """Images in [-1, 1] -> latents with identity scaling (already unit-range)."""
        h, w = images.shape[-2:]
        if h % self.factor or w % self.factor:
            raise ValueError(f"image size {h}x{w} is not divisible by space-to-depth factor {self.factor}")
        return F.pixel_unshuffle(images, self.factor)

    def decode(self, latents: Tensor) -> Tensor:
        """Latents -> images, clamped to [-1, 1]."""
        return F.pixel_shuffle(latents, self.factor).clamp(-1.0, 1.0)

    def to_config(self) -> dict[str, Any]:
        """JSON-able description, inverse of `codec_from_config`."""
        return {"type": "space_to_depth", "factor": self.factor}


class VaeCodec:
    """SD's AutoencoderKL: encode = posterior mean * scaling_factor (deterministic, as for training targets)."""

    def __init__(self, vae: nn.Module) -> None:
        self.vae = vae
        vae.eval()
        vae.requires_grad_(False)
        self.scaling_factor = float(vae.config.scaling_factor)
        self.channels = int(vae.config.latent_channels)
        self.downsample = 2 ** (len(vae.config.block_out_channels) - 1)

    def encode(self, images: Tensor) -> Tensor:
        """Images (B, 3, H, W) in [-1, 1] -> latents (B, 4, H/8, W/8) in the VAE's dtype."""
        x = images.to(device=self.vae.device, dtype=self.vae.dtype)
        return self.vae.encode(x).latent_dist.mean * self.scaling_factor

    def decode(self, latents: Tensor) -> Tensor:
        """Latents -> images clamped to [-1, 1]."""
        z = latents.to(device=self.vae.device, dtype=self.vae.dtype) / self.scaling_factor
        return self.vae.decode(z).sample.clamp(-1.0, 1.0)

    def to_config(self) -> dict[str, Any]:
        """JSON-able description (the weights live in the SD folder's vae/)."""
        return {"type": "vae", "scaling_factor": self.scaling_factor}


def codec_from_config(config: dict[str, Any]) -> SpaceToDepthCodec:
    """Rebuild a weight-free codec from `to_config()` output."""
    kind = config.get("type")
    if kind == "space_to_depth":
        return SpaceToDepthCodec(int(config.get("factor", 2)))
    raise ValueError(f"unknown codec type {kind!r} (known: 'space_to_depth'; 'vae' needs the SD preset)")


@torch.no_grad()
def encode_images(codec: Codec, images: np.ndarray, device: torch.device | str = "cpu",
                  dtype: torch.dtype = torch.float32, batch_size: int = 64) -> Tensor:
    """uint8 (N, H, W, 3) -> UNet-space latents (N, C, h, w) on device, encoded in batches (a VAE at 512 px)."""
    out = []
    for i in range(0, len(images), batch_size):
        x = torch.from_numpy(images[i : i + batch_size]).permute(0, 3, 1, 2).float() / 127.5 - 1.0  # [-1, 1]
        out.append(codec.encode(x.to(device, dtype)))
    return torch.cat(out)
