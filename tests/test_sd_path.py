"""The Stable Diffusion preset on a tiny random SD pipeline loaded from a diffusers folder."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from cdc.codec import VaeCodec
from cdc.sampler import sample

FAST = {"steps": 2, "precision": "fp32"}


def run(bundle, params, prompts, seeds, **overrides) -> np.ndarray:
    """Sample with the smoke `sample` section, FAST and `overrides` applied."""
    return sample(bundle, prompts, seeds, dataclasses.replace(params.sample, **{**FAST, **overrides}), progress=False)


def assert_same_images(a: np.ndarray, b: np.ndarray) -> None:
    """Equal up to float round-off of batched kernels: at most 1 level off, on very few pixels."""
    diff = np.abs(a.astype(int) - b.astype(int))
    assert a.shape == b.shape and diff.max() <= 1 and (diff > 0).mean() < 0.01


def test_sd_bundle_parts(tiny_sd_bundle) -> None:
    b = tiny_sd_bundle
    assert b.preset == "sd" and isinstance(b.codec, VaeCodec) and b.dtype == torch.float32
    ctx = b.text.encode(["a church", ""])
    assert ctx.shape == (2, 77, 32)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    z = b.codec.encode(x)
    assert z.shape == (2, 4, 16, 16) and b.image_size == 32
    assert b.codec.decode(z).shape == (2, 3, 32, 32)
    # The training view of the same bundle: noise a latent, predict with the UNet.
    t = torch.tensor([10, 900])
    noisy = b.scheduler.add_noise(z, torch.randn_like(z), t)
    with torch.no_grad():
        out = b.unet(noisy, t, encoder_hidden_states=ctx).sample
    assert out.shape == z.shape and torch.isfinite(out).all()


def test_sd_sampling_seeded_and_batch_independent(tiny_sd_bundle, smoke_params) -> None:
    prompts = ["a church", "a fish", "a bomb"]
    imgs = run(tiny_sd_bundle, smoke_params, prompts, [0, 1, 2], guidance=7.5)
    assert imgs.shape == (3, 32, 32, 3) and imgs.dtype == np.uint8
    again = run(tiny_sd_bundle, smoke_params, prompts, [0, 1, 2], guidance=7.5, batch_size=2)
    assert_same_images(imgs, again)
    alone = run(tiny_sd_bundle, smoke_params, ["a bomb"], [2], guidance=7.5)
    assert_same_images(imgs[2], alone[0])
    assert not np.array_equal(imgs[0], run(tiny_sd_bundle, smoke_params, ["a church"], [5], guidance=7.5)[0])


@pytest.mark.parametrize("change, message", [
    ("sd2", "looks like Stable Diffusion 2.x"),
    ("sdxl", "is an SDXL checkpoint"),
])
def test_other_sd_versions_are_refused_by_name(change, message, tiny_sd_folder, tmp_path) -> None:
    import json
    import shutil

    from cdc.bundle import load_bundle
    from cdc.errors import CdcError

    root = tmp_path / change
    shutil.copytree(tiny_sd_folder, root)
    if change == "sd2":
        config = json.loads((root / "unet" / "config.json").read_text())
        (root / "unet" / "config.json").write_text(json.dumps(config | {"cross_attention_dim": 1024}))
    else:
        (root / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionXLPipeline"}))
        (root / "text_encoder_2").mkdir()
    with pytest.raises(CdcError, match=message):
        load_bundle("sd", root)
