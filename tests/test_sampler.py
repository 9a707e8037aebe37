"""Seeded DDIM sampler: shapes, seeding, batch independence, validation (world preset)."""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import torch

from cdc.errors import CdcError
from cdc.sampler import sample
from cdc.system import resolve_precision

PROMPTS = ["a church", "a fish", "a parachute"]
FAST = {"steps": 2, "precision": "fp32"}


def run(bundle, params, prompts, seeds, unet=None, **overrides) -> np.ndarray:
    """Sample with the smoke `sample` section, FAST and `overrides` applied."""
    cfg = dataclasses.replace(params.sample, **{**FAST, **overrides})
    return sample(bundle, prompts, seeds, cfg, unet=unet, progress=False)


def assert_same_images(a: np.ndarray, b: np.ndarray) -> None:
    """Equal up to float round-off of batched kernels: at most 1 level off, on very few pixels."""
    diff = np.abs(a.astype(int) - b.astype(int))
    assert a.shape == b.shape and diff.max() <= 1 and (diff > 0).mean() < 0.01


def test_shape_dtype_and_same_seed_same_image(tiny_world_bundle, smoke_params) -> None:
    a = run(tiny_world_bundle, smoke_params, PROMPTS, [0, 1, 2])
    assert a.shape == (3, 32, 32, 3) and a.dtype == np.uint8
    b = run(tiny_world_bundle, smoke_params, PROMPTS, [0, 1, 2])
    np.testing.assert_array_equal(a, b)


def test_image_depends_only_on_its_prompt_and_seed(tiny_world_bundle, smoke_params) -> None:
    batch = run(tiny_world_bundle, smoke_params, PROMPTS, [7, 8, 9], batch_size=3)
    alone = run(tiny_world_bundle, smoke_params, [PROMPTS[1]], [8])
    assert_same_images(batch[1], alone[0])
    split = run(tiny_world_bundle, smoke_params, PROMPTS, [7, 8, 9], batch_size=2)
    assert_same_images(batch, split)
    other_mates = run(tiny_world_bundle, smoke_params, ["a house", PROMPTS[1]], [3, 8])
    assert_same_images(batch[1], other_mates[1])


def test_different_seeds_and_prompts_differ(tiny_world_bundle, smoke_params) -> None:
    imgs = run(tiny_world_bundle, smoke_params, ["a church", "a church", "a fish"], [0, 1, 0])
    assert not np.array_equal(imgs[0], imgs[1])
    assert not np.array_equal(imgs[0], imgs[2])


def test_guidance_one_and_deterministic_ddim(tiny_world_bundle, smoke_params) -> None:
    a = run(tiny_world_bundle, smoke_params, ["a church"], [0], guidance=1.0, eta=0.0)
    b = run(tiny_world_bundle, smoke_params, ["a church"], [0], guidance=1.0, eta=0.0)
    c = run(tiny_world_bundle, smoke_params, ["a church"], [0], guidance=3.0, eta=0.0)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_unet_override(tiny_world_bundle, smoke_params) -> None:
    other = copy.deepcopy(tiny_world_bundle.unet)
    with torch.no_grad():
        other.conv_out.weight.mul_(-1.0)  # flips the prediction: a clearly different model
    base = run(tiny_world_bundle, smoke_params, ["a church"], [0])
    changed = run(tiny_world_bundle, smoke_params, ["a church"], [0], unet=other)
    assert not np.array_equal(base, changed)


def test_bad_input(tiny_world_bundle, smoke_params) -> None:
    with pytest.raises(ValueError, match="prompt list is empty"):
        run(tiny_world_bundle, smoke_params, [], [])
    with pytest.raises(ValueError, match="2 prompts but 1 seeds"):
        run(tiny_world_bundle, smoke_params, ["a", "b"], [0])
    with pytest.raises(ValueError, match="steps"):
        run(tiny_world_bundle, smoke_params, ["a"], [0], steps=0)


@pytest.mark.parametrize(
    ("key", "value"),
    [("guidance", float("nan")), ("guidance", float("inf")), ("guidance", -1.0), ("eta", -0.1), ("eta", 1.5),
     ("eta", float("nan")), ("batch_size", 0)],
)
def test_sample_params_reject_values_that_cannot_run(key, value, smoke_params) -> None:
    with pytest.raises(ValueError, match=key):
        dataclasses.replace(smoke_params.sample, **{key: value})


def test_nan_unet_raises_instead_of_black_images(tiny_world_bundle, smoke_params) -> None:
    broken = copy.deepcopy(tiny_world_bundle.unet)
    with torch.no_grad():
        for p in broken.parameters():
            p.fill_(float("nan"))
    with pytest.raises(CdcError, match="non-finite"):
        run(tiny_world_bundle, smoke_params, ["a church"], [0], unet=broken)


def test_bf16_precision_is_seeded_close_to_fp32_and_auto_resolves(tiny_world_bundle, smoke_params, monkeypatch) -> None:
    fp32 = run(tiny_world_bundle, smoke_params, PROMPTS, [0, 1, 2], precision="fp32")
    bf16 = run(tiny_world_bundle, smoke_params, PROMPTS, [0, 1, 2], precision="bf16")
    again = run(tiny_world_bundle, smoke_params, PROMPTS, [0, 1, 2], precision="bf16")
    np.testing.assert_array_equal(bf16, again)  # same seed, same image, in bf16 too
    diff = np.abs(bf16.astype(int) - fp32.astype(int))
    assert 0 < diff.max() and diff.mean() < 4  # bf16 arithmetic, not a different image
    assert tiny_world_bundle.unet.dtype == torch.float32  # autocast leaves the weights alone
    monkeypatch.setattr("cdc.system.native_bf16", lambda device: False)
    assert resolve_precision("auto", "cpu") == "fp32"
    np.testing.assert_array_equal(run(tiny_world_bundle, smoke_params, PROMPTS, [0, 1, 2], precision="auto"), fp32)
    monkeypatch.setattr("cdc.system.native_bf16", lambda device: True)
    assert resolve_precision("auto", "cpu") == "bf16" and resolve_precision("fp32", "cpu") == "fp32"
    with pytest.raises(ValueError, match="precision"):
        dataclasses.replace(smoke_params.sample, precision="fp16")
