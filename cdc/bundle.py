"""The model bundle (text encoder, UNet, scheduler, codec) and its two presets, `world` and `sd`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import DDPMScheduler, UNet2DConditionModel
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from cdc.codec import Codec, SpaceToDepthCodec, VaeCodec, codec_from_config
from cdc.errors import CdcError
from cdc.system import resolve_device
from cdc.text import ClipEncoder, MiniLMEncoder, TextEncoder

PRESETS = ("world", "sd")
# What a saved world folder must hold (relative paths); checked before loading anything.
WORLD_FILES = (
    "unet/config.json",
    "unet/diffusion_pytorch_model.safetensors",
    "scheduler/scheduler_config.json",
    "codec.json",
)


@dataclass
class ModelBundle:
    """Everything an algorithm sees: it never needs to know which preset it runs on."""

    text: TextEncoder
    unet: UNet2DConditionModel
    scheduler: SchedulerMixin  # training scheduler (add_noise, get_velocity, config.prediction_type)
    codec: Codec
    preset: str

    @property
    def device(self) -> torch.device:
        """Device of the UNet."""
        return self.unet.device

    @property
    def dtype(self) -> torch.dtype:
        """Dtype of the UNet."""
        return self.unet.dtype

    @property
    def image_size(self) -> int:
        """Side of generated images in pixels."""
        return int(self.unet.config.sample_size) * self.codec.downsample


def make_world_unet(
    sample_size: int,
    in_channels: int,
    block_channels: Sequence[int],
    cross_attention: Sequence[bool],
    layers_per_block: int = 2,
    attention_head_dim: int = 8,
    cross_attention_dim: int = 384,
    mid_cross_attention: bool = True,
    norm_num_groups: int = 32,
) -> UNet2DConditionModel:
    """A small conditional UNet; `cross_attention[i]` says whether level i (top first) attends to the text."""
    if len(block_channels) != len(cross_attention):
        raise ValueError(
            f"block_channels has {len(block_channels)} levels but cross_attention has {len(cross_attention)}"
        )
    bad = [c for c in block_channels if c % norm_num_groups]
    if bad:
        raise ValueError(f"block channels {bad} are not divisible by norm_num_groups={norm_num_groups}")
    down = tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in cross_attention)
    # Up blocks run bottom-first, so their flags are the down flags reversed.
    up = tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(cross_attention))
    return UNet2DConditionModel(
        sample_size=sample_size,
        in_channels=in_channels,
        out_channels=in_channels,
        down_block_types=down,
        up_block_types=up,
        mid_block_type="UNetMidBlock2DCrossAttn" if mid_cross_attention else "UNetMidBlock2D",
        block_out_channels=tuple(block_channels),
        layers_per_block=layers_per_block,
        attention_head_dim=attention_head_dim,
        cross_attention_dim=cross_attention_dim,
        norm_num_groups=norm_num_groups,
    )


def make_world_scheduler(
    prediction_type: str = "v_prediction",
    beta_schedule: str = "squaredcos_cap_v2",
    num_train_timesteps: int = 1000,
    clip_sample: bool = True,
    timestep_spacing: str = "trailing",
) -> DDPMScheduler:
    """Training scheduler of the world model; the sampler builds DDIM from its config.

    "trailing" spacing makes few-step DDIM start at the last training timestep (pure noise);
    clip_sample keeps predicted x0 inside [-1, 1], which is where space-to-depth pixels live.
    """
    return DDPMScheduler(
        num_train_timesteps=num_train_timesteps,
        beta_schedule=beta_schedule,
        prediction_type=prediction_type,
        clip_sample=clip_sample,
        timestep_spacing=timestep_spacing,
    )


def load_bundle(
    preset: str, path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
) -> ModelBundle:
    """Load a bundle: `world` from a saved folder, `sd` from a SD 1.x diffusers folder or hub id."""
    device = resolve_device(device)
    if preset == "world":
        return _load_world(Path(path), torch.device(device), dtype or torch.float32)
    if preset == "sd":
        device = torch.device(device)
        if dtype is None:
            dtype = torch.float16 if device.type == "cuda" else torch.float32
        return _load_sd(path, device, dtype)
    raise ValueError(f"unknown preset {preset!r} (known: {', '.join(PRESETS)})")


def _load_world(path: Path, device: torch.device, dtype: torch.dtype) -> ModelBundle:
    """World folder: unet/, scheduler/, codec.json; the text encoder comes from the MiniLM package."""
    import json

    if not path.is_dir():
        raise FileNotFoundError(f"world model folder not found: {path} (run `dvc repro pretrain` to build it)")
    missing = [f for f in WORLD_FILES if not (path / f).is_file()]
    if missing:
        raise FileNotFoundError(
            f"world model folder {path} is incomplete, missing: {', '.join(missing)} "
            "(run `dvc repro pretrain` to rebuild it)"
        )
    try:
        meta = json.loads((path / "codec.json").read_text())
        unet = UNet2DConditionModel.from_pretrained(str(path / "unet"), local_files_only=True, torch_dtype=dtype)
        scheduler = DDPMScheduler.from_pretrained(str(path / "scheduler"), local_files_only=True)
    except (OSError, ValueError, RuntimeError) as e:  # corrupt JSON or safetensors, truncated files
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        raise CdcError(f"world model folder {path} could not be read: {first}") from None
    text = MiniLMEncoder(max_length=int(meta["text"]["max_length"]), pooled_scale=float(meta["text"]["pooled_scale"]))
    unet.to(device).eval()
    text.to(device)
    codec = codec_from_config(meta["codec"])
    return ModelBundle(text=text, unet=unet, scheduler=scheduler, codec=codec, preset="world")


def _is_local(path: str | Path) -> bool:
    """A path that exists, or that cannot be a hub id ('owner/name'), is treated as a local folder."""
    s = str(path)
    if isinstance(path, Path) or s.startswith((".", "/", "~")) or s.count("/") != 1:
        return True
    return Path(s).exists() or Path(s).parent.is_dir()  # 'data/sd' with data/ present is a local typo


def _hub_cached_or_reachable(repo_id: str, timeout: float = 3.0) -> bool:
    """True when the hub id's weights are in the local cache (load offline); False when the hub answers
    (download). Offline and not cached: CdcError at once, instead of minutes of retries."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants, try_to_load_from_cache

    if isinstance(try_to_load_from_cache(repo_id, "model_index.json"), str):
        return True
    if constants.HF_HUB_OFFLINE:
        raise CdcError(f"{repo_id!r} is not in the Hugging Face cache and HF_HUB_OFFLINE is set; "
                       "pass a local Stable Diffusion folder with --model")
    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
    except OSError:
        raise CdcError(f"{repo_id!r} is not in the Hugging Face cache and {host} cannot be reached; "
                       "pass a local Stable Diffusion folder with --model") from None
    return False


def _refuse_other_sd(name: str, cross_attention_dim: Any, addition_embed_type: str | None) -> None:
    """SDXL (a second text encoder, added text-time embeddings) and SD 2.x (1024-wide OpenCLIP context) are
    refused by name: the methods, prompts and released settings here are those of SD 1.x (768-wide CLIP-L)."""
    if addition_embed_type is not None:
        raise CdcError(f"{name} is an SDXL checkpoint (UNet addition_embed_type {addition_embed_type!r}); "
                       "cdc supports Stable Diffusion 1.x only")
    if cross_attention_dim == 1024:
        raise CdcError(f"{name} looks like Stable Diffusion 2.x (1024-wide OpenCLIP context); "
                       "cdc supports Stable Diffusion 1.x only")


def check_sd1(root: Path) -> None:
    """Refuse a local SDXL or SD 2.x folder from its config files, before any weight is read."""
    from cdc.io import load_json

    index = root / "model_index.json"
    if index.is_file():
        name = str(load_json(index).get("_class_name", ""))
        if "XL" in name or (root / "text_encoder_2").is_dir():
            raise CdcError(f"{root} is an SDXL checkpoint ({name or 'text_encoder_2/'}); "
                           "cdc supports Stable Diffusion 1.x only")
    unet_config = root / "unet" / "config.json"
    if unet_config.is_file():
        config = load_json(unet_config)
        _refuse_other_sd(str(root), config.get("cross_attention_dim"), config.get("addition_embed_type"))


def _load_sd(path: str | Path, device: torch.device, dtype: torch.dtype) -> ModelBundle:
    """SD 1.x: tokenizer, text_encoder, unet, vae and scheduler from one diffusers repository layout."""
    from diffusers import AutoencoderKL
    from transformers import CLIPTextModel, CLIPTokenizer

    local = _is_local(path)
    if local:
        root = Path(path).expanduser()
        if not root.is_dir():
            raise FileNotFoundError(f"Stable Diffusion folder not found: {root}")
        check_sd1(root)
        needed = ("tokenizer", "text_encoder", "unet", "vae", "scheduler")
        missing = [d for d in needed if not (root / d).is_dir()]
        if missing:
            raise FileNotFoundError(f"Stable Diffusion folder {root} is missing: {', '.join(missing)}")
        path = str(root)
    if not local:
        local = _hub_cached_or_reachable(str(path))
    kw: dict[str, Any] = {"local_files_only": local}
    tokenizer = CLIPTokenizer.from_pretrained(path, subfolder="tokenizer", **kw)
    text_model = CLIPTextModel.from_pretrained(path, subfolder="text_encoder", dtype=dtype, **kw)
    unet = UNet2DConditionModel.from_pretrained(path, subfolder="unet", torch_dtype=dtype, **kw)
    vae = AutoencoderKL.from_pretrained(path, subfolder="vae", torch_dtype=dtype, **kw)
    # SD folders ship a PNDM sampler config; training needs DDPM semantics on the same betas.
    scheduler = DDPMScheduler.from_config(DDPMScheduler.load_config(path, subfolder="scheduler", **kw))
    _refuse_other_sd(str(path), unet.config.cross_attention_dim, unet.config.get("addition_embed_type"))
    for module in (text_model, unet, vae):
        module.to(device).eval()
    return ModelBundle(
        text=ClipEncoder(tokenizer, text_model), unet=unet, scheduler=scheduler, codec=VaeCodec(vae), preset="sd"
    )


def save_world_bundle(bundle: ModelBundle, path: str | Path) -> None:
    """Write a world bundle folder (unet/, scheduler/, codec.json) atomically."""
    from cdc.io import atomic_path, save_json

    if not isinstance(bundle.codec, SpaceToDepthCodec) or not isinstance(bundle.text, MiniLMEncoder):
        raise ValueError(
            f"save_world_bundle needs a world bundle (MiniLM + space-to-depth), got preset {bundle.preset!r}"
        )
    if getattr(bundle.unet, "peft_config", None):
        raise ValueError("the UNet carries LoRA adapters; save them with the LoRA saver or merge them first")
    text_meta = {"type": "minilm", "max_length": bundle.text.max_length, "pooled_scale": bundle.text.pooled_scale}
    meta = {"codec": bundle.codec.to_config(), "text": text_meta}
    with atomic_path(Path(path)) as tmp:
        tmp = Path(tmp)
        tmp.mkdir(parents=True, exist_ok=True)
        bundle.unet.save_pretrained(str(tmp / "unet"), safe_serialization=True)
        bundle.scheduler.save_pretrained(str(tmp / "scheduler"))
        save_json(meta, tmp / "codec.json")
