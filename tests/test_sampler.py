"""Seeded DDIM sampler: shapes, seeding, batch independence, validation (world preset)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from cdc.sampler import sample
from cdc.system import resolve_precision

PROMPTS = ["a church", "a fish", "a parachute"]
FAST = {"steps": 2, "progress": False}


def assert_same_images(a: np.ndarray, b: np.ndarray) -> None:
    """Equal up to float round-off of batched kernels: at most 1 level off, on very few pixels."""
    diff = np.abs(a.astype(int) - b.astype(int))
    assert a.shape == b.shape and diff.max() <= 1 and (diff > 0).mean() < 0.01


def test_shape_dtype_and_same_seed_same_image(tiny_world_bundle) -> None:
    a = sample(tiny_world_bundle, PROMPTS, [0, 1, 2], **FAST)
    assert a.shape == (3, 32, 32, 3) and a.dtype == np.uint8
    b = sample(tiny_world_bundle, PROMPTS, [0, 1, 2], **FAST)
    np.testing.assert_array_equal(a, b)


def test_image_depends_only_on_its_prompt_and_seed(tiny_world_bundle) -> None:
    batch = sample(tiny_world_bundle, PROMPTS, [7, 8, 9], batch_size=3, **FAST)
    alone = sample(tiny_world_bundle, [PROMPTS[1]], [8], **FAST)
    assert_same_images(batch[1], alone[0])
    split = sample(tiny_world_bundle, PROMPTS, [7, 8, 9], batch_size=2, **FAST)
    assert_same_images(batch, split)
    other_mates = sample(tiny_world_bundle, ["a house", PROMPTS[1]], [3, 8], **FAST)
    assert_same_images(batch[1], other_mates[1])


def test_different_seeds_and_prompts_differ(tiny_world_bundle) -> None:
    imgs = sample(tiny_world_bundle, ["a church", "a church", "a fish"], [0, 1, 0], **FAST)
    assert not np.array_equal(imgs[0], imgs[1])
    assert not np.array_equal(imgs[0], imgs[2])


def test_guidance_one_and_deterministic_ddim(tiny_world_bundle) -> None:
    a = sample(tiny_world_bundle, ["a church"], [0], guidance=1.0, eta=0.0, **FAST)
    b = sample(tiny_world_bundle, ["a church"], [0], guidance=1.0, eta=0.0, **FAST)
    c = sample(tiny_world_bundle, ["a church"], [0], guidance=3.0, eta=0.0, **FAST)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_unet_override(tiny_world_bundle) -> None:
    other = copy.deepcopy(tiny_world_bundle.unet)
    with torch.no_grad():
        other.conv_out.weight.mul_(-1.0)  # flips the prediction: a clearly different model
    base = sample(tiny_world_bundle, ["a church"], [0], **FAST)
    changed = sample(tiny_world_bundle, ["a church"], [0], unet=other, **FAST)
    assert not np.array_equal(base, changed)


def test_bad_input(tiny_world_bundle) -> None:
    with pytest.raises(ValueError, match="prompt list is empty"):
        sample(tiny_world_bundle, [], [], **FAST)
    with pytest.raises(ValueError, match="2 prompts but 1 seeds"):
        sample(tiny_world_bundle, ["a", "b"], [0], **FAST)
    with pytest.raises(ValueError, match="steps"):
        sample(tiny_world_bundle, ["a"], [0], steps=0, progress=False)


def test_bf16_precision_is_seeded_close_to_fp32_and_auto_resolves(tiny_world_bundle, monkeypatch) -> None:
    fp32 = sample(tiny_world_bundle, PROMPTS, [0, 1, 2], precision="fp32", **FAST)
    bf16 = sample(tiny_world_bundle, PROMPTS, [0, 1, 2], precision="bf16", **FAST)
    again = sample(tiny_world_bundle, PROMPTS, [0, 1, 2], precision="bf16", **FAST)
    np.testing.assert_array_equal(bf16, again)  # same seed, same image, in bf16 too
    diff = np.abs(bf16.astype(int) - fp32.astype(int))
    assert 0 < diff.max() and diff.mean() < 4  # bf16 arithmetic, not a different image
    assert tiny_world_bundle.unet.dtype == torch.float32  # autocast leaves the weights alone
    monkeypatch.setattr("cdc.system.native_bf16", lambda device: False)
    assert resolve_precision("auto", "cpu") == "fp32"
    np.testing.assert_array_equal(sample(tiny_world_bundle, PROMPTS, [0, 1, 2], precision="auto", **FAST), fp32)
    monkeypatch.setattr("cdc.system.native_bf16", lambda device: True)
    assert resolve_precision("auto", "cpu") == "bf16" and resolve_precision("fp32", "cpu") == "fp32"
    with pytest.raises(ValueError, match="precision"):
        sample(tiny_world_bundle, ["a church"], [0], precision="fp16", **FAST)
