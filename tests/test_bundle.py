"""Bundle presets, saving/loading, codecs, text encoders and LoRA loading."""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from cdc.bundle import load_bundle, make_world_unet, save_world_bundle
from cdc.codec import SpaceToDepthCodec, codec_from_config
from cdc.errors import CdcError, LoraError
from cdc.lora_io import load_lora


def _unet_out(unet: torch.nn.Module, bundle, seed: int = 0) -> torch.Tensor:
    """UNet output on a fixed random input and the context of a fixed prompt."""
    g = torch.Generator().manual_seed(seed)
    side = unet.config.sample_size
    x = torch.randn(2, unet.config.in_channels, side, side, generator=g)
    ctx = bundle.text.encode(["a church", "a fish"])
    with torch.no_grad():
        return unet(x, torch.tensor([10, 500]), encoder_hidden_states=ctx).sample


def test_world_round_trip(tiny_world_bundle, tmp_path: Path) -> None:
    out = tmp_path / "world"
    save_world_bundle(tiny_world_bundle, out)
    assert sorted(p.name for p in out.iterdir()) == ["codec.json", "scheduler", "unet"]
    assert (out / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    loaded = load_bundle("world", out)
    assert loaded.preset == "world" and loaded.image_size == 32
    assert loaded.codec.to_config() == tiny_world_bundle.codec.to_config()
    assert loaded.scheduler.config.prediction_type == tiny_world_bundle.scheduler.config.prediction_type
    torch.testing.assert_close(_unet_out(loaded.unet, loaded), _unet_out(tiny_world_bundle.unet, tiny_world_bundle))
    save_world_bundle(tiny_world_bundle, out)  # overwriting an existing bundle works
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporaries left


def test_unknown_preset_and_missing_folders(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown preset 'sdxl'.*world, sd"):
        load_bundle("sdxl", tmp_path)
    with pytest.raises(FileNotFoundError, match="dvc repro pretrain"):
        load_bundle("world", tmp_path / "nope")
    (tmp_path / "partial" / "unet").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="codec.json"):
        load_bundle("world", tmp_path / "partial")
    with pytest.raises(FileNotFoundError, match="Stable Diffusion folder not found"):
        load_bundle("sd", tmp_path / "no-sd")
    with pytest.raises(FileNotFoundError, match="missing: tokenizer"):
        load_bundle("sd", tmp_path / "partial")


def test_bad_device_is_rejected(tiny_world_bundle, tmp_path: Path) -> None:
    save_world_bundle(tiny_world_bundle, tmp_path / "world")
    with pytest.raises(ValueError, match="unknown device"):
        load_bundle("world", tmp_path / "world", device="gpu7")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="not available"):
            load_bundle("world", tmp_path / "world", device="cuda:0")
    with pytest.raises(ValueError, match="not supported"):
        load_bundle("world", tmp_path / "world", device="meta")


@pytest.mark.parametrize("broken", ["unet/diffusion_pytorch_model.safetensors", "unet/config.json"])
def test_corrupt_world_folder_is_a_cdc_error(broken: str, tiny_world_bundle, tmp_path: Path) -> None:
    out = tmp_path / "world"
    save_world_bundle(tiny_world_bundle, out)
    (out / broken).write_bytes(b"\x00garbage, not a model file\xff" * 8)
    with pytest.raises(CdcError, match=re.escape(f"world model folder {out} could not be read")):
        load_bundle("world", out)


def test_make_world_unet_validates() -> None:
    with pytest.raises(ValueError, match="levels"):
        make_world_unet(16, 12, (32, 64), (True,), cross_attention_dim=384)
    unet = make_world_unet(8, 12, (32, 32), (True, False), layers_per_block=1)
    assert unet.config.down_block_types == ("CrossAttnDownBlock2D", "DownBlock2D")
    assert unet.config.up_block_types == ("UpBlock2D", "CrossAttnUpBlock2D")


def test_space_to_depth_codec() -> None:
    codec = SpaceToDepthCodec(2)
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    z = codec.encode(x)
    assert z.shape == (3, 12, 16, 16) and codec.channels == 12 and codec.downsample == 2
    torch.testing.assert_close(codec.decode(z), x)
    assert codec.decode(z * 5).abs().max() <= 1.0
    assert codec_from_config(codec.to_config()).factor == 2
    with pytest.raises(ValueError, match="divisible"):
        codec.encode(torch.zeros(1, 3, 31, 31))
    with pytest.raises(ValueError, match="unknown codec"):
        codec_from_config({"type": "jpeg"})


def test_minilm_context(tiny_world_bundle) -> None:
    text = tiny_world_bundle.text
    ctx = text.encode(["a church", "", "a very long prompt " * 10])
    assert ctx.shape == (3, 25, 384) and text.dim == 384
    scale = text.pooled_scale  # the sentence token is the unit-norm pooled embedding, scaled
    torch.testing.assert_close(ctx[:, -1].norm(dim=-1), torch.full((3,), scale))
    assert not torch.allclose(ctx[0, -1], ctx[1, -1])  # the sentence token carries the prompt
    assert ctx[0, 5:24].abs().max() == 0  # "a church" = 4 tokens; padding zeroed
    assert not any(p.requires_grad for p in text.model.parameters())


@pytest.mark.slow
def test_load_lora(tiny_world_bundle, save_random_lora: Callable, tmp_path: Path) -> None:
    base = tiny_world_bundle.unet
    adapted = save_random_lora(base, tmp_path / "lora")
    assert (tmp_path / "lora" / "pytorch_lora_weights.safetensors").is_file()
    fresh = copy.deepcopy(base)
    load_lora(fresh, tmp_path / "lora")
    out = _unet_out(fresh, tiny_world_bundle)
    torch.testing.assert_close(out, _unet_out(adapted, tiny_world_bundle))
    assert not torch.allclose(out, _unet_out(base, tiny_world_bundle))
    with pytest.raises(FileNotFoundError, match="LoRA weights not found"):
        load_lora(copy.deepcopy(base), tmp_path / "nowhere")


def test_load_lora_from_another_model(
    tiny_world_bundle, tiny_sd_bundle, save_random_lora: Callable, tmp_path: Path
) -> None:
    save_random_lora(tiny_sd_bundle.unet, tmp_path / "sd-lora")
    with pytest.raises(LoraError, match="does not fit"):
        load_lora(copy.deepcopy(tiny_world_bundle.unet), tmp_path / "sd-lora")
