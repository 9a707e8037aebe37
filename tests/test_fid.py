"""World-FID on judge features: zero for identical sets, larger for a shifted distribution."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cdc.augment import augment
from cdc.fid import JudgeFeatures, world_fid
from cdc.judge import JudgeNet


@pytest.fixture(scope="module")
def judge() -> JudgeNet:
    net = JudgeNet(5, 2, width=8)
    net.reset_parameters(torch.Generator().manual_seed(0))
    return net.eval()


@pytest.fixture(scope="module")
def real() -> np.ndarray:
    """64 augmented views of coloured squares on white, uint8 (64,32,32,3)."""
    g = torch.Generator().manual_seed(0)
    x = torch.ones(64, 3, 32, 32)
    colours = torch.rand(64, 3, generator=g)
    x[:, :, 8:24, 8:24] = colours[:, :, None, None]
    x = augment(x, g)
    return (x.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)


def test_judge_features_accepts_uint8_and_float(judge: JudgeNet, real: np.ndarray) -> None:
    feats = JudgeFeatures(judge)
    u8 = torch.from_numpy(real[:4]).permute(0, 3, 1, 2)
    a, b = feats(u8), feats(u8.float() / 255)
    assert a.shape == (4, judge.feature_dim)
    torch.testing.assert_close(a, b)
    feats.train()  # a metric may ask for train mode; BatchNorm must keep its running statistics
    assert not judge.training


def test_fid_identical_sets_is_zero_and_shift_is_larger(judge: JudgeNet, real: np.ndarray) -> None:
    same = world_fid(judge, real, real, batch_size=16)
    darker = (real.astype(np.float32) * 0.6).astype(np.uint8)  # a grey cast over everything
    shifted = world_fid(judge, real, darker, batch_size=16)
    assert abs(same) < 1e-3 * shifted
    assert shifted > 0
    # symmetric up to the numerical noise of the matrix square root
    assert world_fid(judge, darker, real, batch_size=16) == pytest.approx(shifted, rel=1e-3)


def test_fid_bad_input(judge: JudgeNet, real: np.ndarray) -> None:
    with pytest.raises(ValueError, match="uint8"):
        world_fid(judge, real.astype(np.float32), real)
    with pytest.raises(ValueError, match="at least 2"):
        world_fid(judge, real, real[:1])
