"""LoRA files: save a UNet LoRA in diffusers format with the config that made it, and the one loader.

A saved folder holds `pytorch_lora_weights.safetensors` (loadable without cdc:
`pipe.load_lora_weights(dir)` or `unet.load_lora_adapter(dir, weight_name=WEIGHT_NAME, prefix="unet")`)
and `cdc_config.json` (method, its parameters, and fingerprints of the base model it was made for).
"""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path
from typing import Any

from torch import nn

from cdc.errors import LoraError
from cdc.io import atomic_path, canonicalize_safetensors, load_json, save_json

WEIGHT_NAME = "pytorch_lora_weights.safetensors"  # diffusers' LORA_WEIGHT_NAME_SAFE
CONFIG_NAME = "cdc_config.json"


def _base_weight(unet: nn.Module, name: str) -> Any:
    """Weight of the (base layer of the) module `name`; LoraError if this UNet has no such module."""
    try:
        module = unet.get_submodule(name)
    except AttributeError as e:
        raise LoraError(f"LoRA targets module {name!r}, which this UNet lacks (LoRA from another model?)") from e
    return getattr(module, "base_layer", module).weight


def fingerprint(unet: nn.Module, targets: list[str]) -> str:
    """Architecture fingerprint: sha256 over the UNet config and the targeted weights' shapes."""
    config = {k: v for k, v in dict(unet.config).items() if not k.startswith("_")}
    shapes = {n: list(_base_weight(unet, n).shape) for n in sorted(targets)}
    text = json.dumps({"config": config, "shapes": shapes}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def weights_hash(unet: nn.Module, targets: list[str]) -> str:
    """sha256 over the targeted base weights' bytes: tells two trainings of one architecture apart."""
    h = hashlib.sha256()
    for n in sorted(targets):
        h.update(_base_weight(unet, n).detach().float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def save_lora(unet: nn.Module, path: str | Path, config: dict[str, Any]) -> Path:
    """Write the UNet's "default" adapter and `cdc_config.json` (config + base fingerprints) atomically."""
    from diffusers import StableDiffusionPipeline
    from peft.tuners.tuners_utils import BaseTunerLayer
    from peft.utils import get_peft_model_state_dict

    peft = getattr(unet, "peft_config", None) or {}
    if "default" not in peft:
        raise ValueError("the UNet carries no 'default' LoRA adapter to save")
    # Names of the wrapped layers themselves: peft compresses long target lists into suffixes.
    targets = sorted(n for n, m in unet.named_modules() if isinstance(m, BaseTunerLayer))
    # peft key names (lora_A/lora_B), which diffusers' loaders read as they are. Converting to
    # diffusers' lora.down/lora.up names (convert_state_dict_to_diffusers) made diffusers 0.42.1
    # drop every attention layer of a `full`-group LoRA on reload, silently.
    state = get_peft_model_state_dict(unet, adapter_name="default")
    state = {k: v.detach().float().cpu().contiguous() for k, v in state.items()}
    meta = {
        **config,
        "lora": {"rank": peft["default"].r, "alpha": peft["default"].lora_alpha, "targets": targets},
        "base_fingerprint": fingerprint(unet, targets),
        "base_weights": weights_hash(unet, targets),
    }
    # The adapter metadata carries lora_alpha: without it loaders assume alpha == rank. peft keeps
    # target_modules as a set, whose order changes from process to process (string hashing): sorted,
    # the same weights give the same file bytes, so DVC sees an unchanged LoRA as unchanged.
    adapter = peft["default"].to_dict()
    if isinstance(adapter.get("target_modules"), (set, list, tuple)):
        adapter["target_modules"] = sorted(adapter["target_modules"])
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.mkdir(parents=True)
        StableDiffusionPipeline.save_lora_weights(
            str(tmp), unet_lora_layers=state, safe_serialization=True, unet_lora_adapter_metadata=adapter
        )
        canonicalize_safetensors(tmp / WEIGHT_NAME)
        save_json(meta, tmp / CONFIG_NAME)
    return path


def read_lora_config(path: str | Path) -> dict[str, Any]:
    """The `cdc_config.json` of a LoRA folder written by `save_lora`."""
    path = Path(path)
    for name in (WEIGHT_NAME, CONFIG_NAME):
        if not (path / name).is_file():
            raise FileNotFoundError(f"LoRA folder {path} has no {name}")
    try:
        return load_json(path / CONFIG_NAME)
    except ValueError as e:
        raise LoraError(str(e)) from None


def check_lora_fits(unet: nn.Module, path: str | Path, allow_other_base: bool = False) -> dict[str, Any]:
    """The config of a cdc LoRA after checking it was made for this UNet: its architecture always, its
    exact base weights unless `allow_other_base` (then a warning says the weights differ)."""
    meta = read_lora_config(path)
    targets = list(meta.get("lora", {}).get("targets", []))
    if not targets or "base_fingerprint" not in meta:
        raise LoraError(f"{Path(path) / CONFIG_NAME} lacks lora.targets/base_fingerprint; not a cdc LoRA")
    got = fingerprint(unet, targets)  # raises LoraError for modules this UNet lacks
    if got != meta["base_fingerprint"]:
        raise LoraError(
            f"LoRA {path} was trained on another model: base fingerprint {meta['base_fingerprint']} != "
            f"this UNet's {got} (different config or weight shapes)"
        )
    if weights_hash(unet, targets) != meta.get("base_weights"):
        message = f"LoRA {path} was trained on other base weights of the same architecture"
        if not allow_other_base:
            raise LoraError(f"{message} (pass allow_other_base / --allow-other-base to load it anyway)")
        warnings.warn(f"{message}; loading it anyway as asked", stacklevel=2)
    return meta


def load_lora(unet: nn.Module, path: str | Path, adapter_name: str = "default",
              allow_other_base: bool = False) -> nn.Module:
    """Load a diffusers-format LoRA (a folder or a .safetensors file) into `unet` in place.

    A folder written by `save_lora` is first checked with `check_lora_fits`; LoRAs from elsewhere
    (no cdc_config.json) are loaded as they are. Every problem raises LoraError naming the file.
    """
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if path.is_dir() and (path / CONFIG_NAME).is_file():
        check_lora_fits(unet, path, allow_other_base)
    weights = path / WEIGHT_NAME if path.is_dir() else path
    if not weights.is_file():
        raise FileNotFoundError(f"LoRA weights not found: {weights}")
    if adapter_name in (getattr(unet, "peft_config", None) or {}):
        raise LoraError(f"the UNet already has an adapter named {adapter_name!r}")
    try:
        with safe_open(str(weights), framework="pt") as f:
            keys = list(f.keys())
    except (SafetensorError, OSError, ValueError) as e:
        raise LoraError(f"{weights} is not a readable safetensors file: {e}") from None
    prefix = "unet" if any(k.startswith("unet.") for k in keys) else None
    if prefix is None and any(k.startswith(("text_encoder.", "transformer.")) for k in keys):
        raise LoraError(f"LoRA {weights} has no UNet weights (keys start with {keys[0].split('.')[0]!r})")
    try:
        unet.load_lora_adapter(str(weights.parent), weight_name=weights.name, prefix=prefix,
                               adapter_name=adapter_name, local_files_only=True)
    except (RuntimeError, ValueError, KeyError) as e:
        # torch lists every mismatching tensor; the first one is enough to name the problem.
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        first = next((ln for ln in lines if "mismatch" in ln), lines[0] if lines else type(e).__name__)
        raise LoraError(f"LoRA {weights} does not fit this UNet (made for another model?): {first[:300]}") from None
    if adapter_name not in (getattr(unet, "peft_config", None) or {}):
        raise LoraError(f"LoRA {weights} loaded no weights into this UNet")
    bad = [n for n, p in unet.named_parameters() if f".{adapter_name}." in n and not p.detach().isfinite().all()]
    if bad:
        unet.delete_adapters(adapter_name)
        raise LoraError(f"LoRA {weights} holds non-finite weights (NaN or inf), e.g. in {bad[0]}")
    return unet
