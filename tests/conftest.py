"""Shared fixtures: the smoke params and tiny random model bundles for both presets, built offline."""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from cdc.bundle import ModelBundle, load_bundle, make_world_scheduler, make_world_unet
from cdc.codec import SpaceToDepthCodec
from cdc.io import save_text
from cdc.stages.params import read_yaml
from cdc.stages.schema import Params, load_params
from cdc.text import MiniLMEncoder
from cdc.world.build import build_world

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "tests" / "smoke.yaml"

# Under pytest-xdist each worker gets its share of the cores, and so do the notebook kernels and processes it
# starts (they read OMP_NUM_THREADS): two workers of two threads on two cores run slower than one.
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if WORKERS > 1:
    THREADS = max(1, len(os.sched_getaffinity(0)) // WORKERS)
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(THREADS)
    torch.set_num_threads(THREADS)


def merge(base: dict, overrides: dict) -> dict:
    """`base` with `overrides` applied key by key (nested mappings merged, anything else replaced; a mapping
    with `_replace: true` replaces the whole mapping, without that key)."""
    out = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and value.get("_replace"):
            out[key] = {k: v for k, v in value.items() if k != "_replace"}
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def write_smoke_params(path: Path) -> Path:
    """The committed params.yaml with tests/smoke.yaml's `params` on top, written to `path` (YAML is JSON)."""
    merged = merge(read_yaml(REPO / "params.yaml"), read_yaml(SMOKE)["params"])
    save_text(json.dumps(merged, indent=1), path)
    return path


def _byte_chars() -> list[str]:
    """The 256 printable stand-ins CLIP's byte-level BPE uses for raw bytes."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = [b for b in range(256) if b not in keep]
    return [chr(c) for c in keep] + [chr(256 + i) for i in range(len(extra))]


def write_tiny_clip_vocab(folder: Path) -> None:
    """vocab.json (bytes, bytes + '</w>', two specials) and an empty merges.txt: a working CLIP tokenizer."""
    chars = _byte_chars()
    tokens = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")


def build_tiny_sd_folder(root: Path) -> Path:
    """Save a random tiny SD 1.x pipeline (32x32 images, 16x16x4 latents) as a diffusers folder."""
    from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(0)
    write_tiny_clip_vocab(root / "vocab")
    tokenizer = CLIPTokenizer.from_pretrained(str(root / "vocab"), model_max_length=77, local_files_only=True)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    unet = UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=(32, 64),
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        sample_size=32,
    )
    scheduler = DDPMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False, steps_offset=1
    )
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    folder = root / "tiny-sd"
    pipe.save_pretrained(str(folder))
    return folder


def build_tiny_world_bundle(device: str | torch.device = "cpu") -> ModelBundle:
    """MiniLM context + a tiny random world UNet (seeded) on 32x32 images folded to 16x16x12."""
    codec = SpaceToDepthCodec(2)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        unet = make_world_unet(16, codec.channels, (32, 64), (False, True), layers_per_block=1, attention_head_dim=8)
    text = read_yaml(REPO / "params.yaml")["pretrain"]  # the world model's context: MiniLM length and scale
    encoder = MiniLMEncoder(text["max_length"], text["pooled_scale"]).to(device)
    return ModelBundle(text=encoder, unet=unet.to(device).eval(), scheduler=make_world_scheduler(), codec=codec,
                       preset="world")


def save_random_lora_to(unet: torch.nn.Module, folder: Path, seed: int = 0) -> torch.nn.Module:
    """Add a random (non-zero) LoRA on the attention projections of a copy of `unet`; save it; return the copy."""
    from diffusers import StableDiffusionPipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    lora_unet = copy.deepcopy(unet)
    lora_unet.add_adapter(LoraConfig(r=2, lora_alpha=2, target_modules=["to_k", "to_v"], init_lora_weights=False))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in lora_unet.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    StableDiffusionPipeline.save_lora_weights(folder, unet_lora_layers=get_peft_model_state_dict(lora_unet))
    return lora_unet


@pytest.fixture
def one_thread():
    """Tiny models gain nothing from threads; on a shared 2-core box spinning threads cost ~10x."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def world():
    """The committed families with one extra concept, rendered at 32 px in both styles (a few seconds)."""
    fam = read_yaml(REPO / "data/world/families.yaml")
    oos = read_yaml(REPO / "data/prompts/out_of_set.yaml")
    return build_world(fam, oos, size=32, n_concepts=1, seed=0, templates=["{a}", "{p}"], progress=False)


@pytest.fixture(scope="session")
def smoke_params_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The smoke params file (params.yaml with tests/smoke.yaml's overrides), written once per session."""
    return write_smoke_params(tmp_path_factory.mktemp("params") / "params.yaml")


@pytest.fixture(scope="session")
def smoke_params(smoke_params_path: Path) -> Params:
    """The smoke params, loaded and validated like params.yaml."""
    return load_params(smoke_params_path)


@pytest.fixture(scope="session")
def tiny_sd_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved tiny random SD pipeline folder (read-only for tests)."""
    return build_tiny_sd_folder(tmp_path_factory.mktemp("sd"))


@pytest.fixture(scope="session")
def tiny_sd_bundle(tiny_sd_folder: Path) -> ModelBundle:
    """The tiny SD pipeline loaded through `load_bundle("sd", folder)`; do not mutate its modules."""
    return load_bundle("sd", tiny_sd_folder)


@pytest.fixture(scope="session")
def tiny_world_bundle() -> ModelBundle:
    """A tiny random world bundle; do not mutate its modules (copy the UNet first)."""
    return build_tiny_world_bundle()


@pytest.fixture(scope="session")
def save_random_lora() -> Callable[..., torch.nn.Module]:
    """`save_random_lora(unet, folder, seed=0)`: write a random diffusers-format LoRA; returns the adapted copy."""
    return save_random_lora_to
