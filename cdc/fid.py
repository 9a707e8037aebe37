"""World-FID: Frechet distance between real and generated world images in the judge's feature space."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torchmetrics.image.fid import FrechetInceptionDistance

from cdc.judge import IMAGE_SIZE, JudgeNet


class JudgeFeatures(nn.Module):
    """Feature extractor for torchmetrics: (B,3,H,W) uint8 or float in [0,1] -> judge features (B,F)."""

    def __init__(self, judge: JudgeNet) -> None:
        super().__init__()
        self.judge = judge.eval()
        # torchmetrics reads this instead of running a dummy image through the network
        self.num_features = judge.feature_dim

    def train(self, mode: bool = True) -> JudgeFeatures:
        """Stay in eval mode: BatchNorm must use its running statistics, whatever the metric asks."""
        super().train(False)
        return self

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"JudgeFeatures expects (B,3,H,W) images, got shape {tuple(x.shape)}")
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
        if x.shape[-2:] != (IMAGE_SIZE, IMAGE_SIZE):
            x = F.interpolate(x, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", antialias=True, align_corners=False)
        self.judge.eval()
        return self.judge.features(x)  # (B, F) float32; torchmetrics accumulates in float64


def _nchw(images: np.ndarray, what: str) -> torch.Tensor:
    """uint8 (N,H,W,3) -> float (N,3,H,W) in [0,1], with a clear error on anything else."""
    arr = np.asarray(images)
    if arr.ndim != 4 or arr.shape[-1] != 3 or arr.dtype != np.uint8:
        raise ValueError(f"world_fid: {what} images must be uint8 (N,H,W,3), got {arr.dtype} {arr.shape}")
    if len(arr) < 2:
        raise ValueError(f"world_fid: need at least 2 {what} images, got {len(arr)}")
    return torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 255.0


def world_fid(judge: JudgeNet, real: np.ndarray, fake: np.ndarray, batch_size: int = 256) -> float:
    """FID between uint8 image sets real (N,H,W,3) and fake (M,H,W,3) using the judge's features."""
    x_real, x_fake = _nchw(real, "real"), _nchw(fake, "fake")
    metric = FrechetInceptionDistance(
        feature=JudgeFeatures(judge), normalize=True, input_img_size=(3, IMAGE_SIZE, IMAGE_SIZE)
    )
    for x, is_real in ((x_real, True), (x_fake, False)):
        for i in range(0, len(x), batch_size):
            metric.update(x[i : i + batch_size], real=is_real)
    return float(metric.compute())
