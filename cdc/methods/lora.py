"""LoRA on the UNet via peft: parameter groups, training helpers, and diffusers-format save/load."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cdc.errors import CdcError

GROUPS = ("xattn-kv", "xattn", "attn", "full")
WEIGHT_NAME = "pytorch_lora_weights.safetensors"  # diffusers' LORA_WEIGHT_NAME_SAFE
CONFIG_NAME = "cdc_config.json"
_ATTN_PROJ = ("to_q", "to_k", "to_v", "to_out.0")
_BLOCKS = ("down_blocks.", "mid_block.", "up_blocks.")


def target_modules(unet: nn.Module, group: str) -> list[str]:
    """Full module names LoRA wraps for `group` (sorted).

    xattn-kv: cross-attention K/V (`attn2.to_k`, `attn2.to_v`), DoCo's released default;
    xattn: attn2 Q/K/V/out (ESD-x); attn: attn1 and attn2 Q/K/V/out;
    full: every nn.Linear and nn.Conv2d inside the down/mid/up blocks.
    """
    if group not in GROUPS:
        raise ValueError(f"unknown LoRA group {group!r} (known: {', '.join(GROUPS)})")
    names = []
    for name, module in unet.named_modules():
        module = getattr(module, "base_layer", module)  # already-wrapped layers count by their base
        if group == "full":
            ok = (
                name.startswith(_BLOCKS)
                and isinstance(module, (nn.Linear, nn.Conv2d))
                and ".lora_" not in name
                and not name.endswith(".base_layer")
            )
        else:
            attns = ("attn2",) if group.startswith("xattn") else ("attn1", "attn2")
            projs = ("to_k", "to_v") if group == "xattn-kv" else _ATTN_PROJ
            ok = any(name.endswith(f"{a}.{p}") for a in attns for p in projs) and isinstance(module, nn.Linear)
        if ok:
            names.append(name)
    if not names:
        raise ValueError(f"LoRA group {group!r} matches no module of this UNet")
    return sorted(names)


def add_lora(
    unet: nn.Module, group: str = "xattn-kv", rank: int = 4, alpha: float | None = None, seed: int = 0
) -> nn.Module:
    """Freeze `unet` and add a trainable LoRA adapter ("default") on `group`, in place; returns unet.

    Init is peft's "gaussian" (A ~ N(0, 1/r), B = 0), so the adapter starts as the identity and the
    untouched base stays reachable with `base_model(unet)`. LoRA weights are float32 even on an
    fp16 UNet (peft casts activations to the adapter dtype), as diffusers' examples do.
    """
    from peft import LoraConfig

    if getattr(unet, "peft_config", None):
        raise ValueError(f"the UNet already carries LoRA adapters {list(unet.peft_config)}; remove_lora(unet) first")
    if rank < 1:
        raise ValueError(f"LoRA rank must be >= 1, got {rank}")
    targets = target_modules(unet, group)
    unet.requires_grad_(False)
    config = LoraConfig(
        r=rank, lora_alpha=float(rank if alpha is None else alpha), init_lora_weights="gaussian", target_modules=targets
    )
    device = next(unet.parameters()).device
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        unet.add_adapter(config)
    for p in lora_parameters(unet):
        p.data = p.data.float()
    return unet


def lora_parameters(unet: nn.Module) -> list[nn.Parameter]:
    """The trainable LoRA tensors in a fixed (module-name) order."""
    params = [p for n, p in unet.named_parameters() if ".lora_" in n and p.requires_grad]
    if not params:
        raise ValueError("the UNet has no trainable LoRA parameters; call add_lora first")
    return params


def remove_lora(unet: nn.Module) -> nn.Module:
    """Strip every LoRA layer, giving back the plain base UNet (in place)."""
    if getattr(unet, "peft_config", None):
        unet.unload_lora()
    return unet


def tuner_layers(unet: nn.Module) -> list[nn.Module]:
    """The peft-wrapped layers of `unet` (collect once; walking the module tree costs milliseconds)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [m for m in unet.modules() if isinstance(m, BaseTunerLayer)]


@contextmanager
def base_model(unet: nn.Module, layers: list[nn.Module] | None = None) -> Iterator[nn.Module]:
    """Run the frozen base model: LoRA disabled inside the block (no second UNet copy in memory).

    Pass `layers=tuner_layers(unet)` in loops: diffusers' own disable_adapters() re-walks the tree
    and re-reads package metadata on every call (~10 ms).
    """
    layers = tuner_layers(unet) if layers is None else layers
    if not layers:
        raise ValueError("the UNet has no LoRA adapter to disable")
    for m in layers:
        m.enable_adapters(False)
    try:
        yield unet
    finally:
        for m in layers:
            m.enable_adapters(True)  # also restores requires_grad on the adapter weights (peft)


@contextmanager
def detach_first_token(unet: nn.Module) -> Iterator[None]:
    """Stop gradients through cross-attention K/V of context position 0 (released DoCo's
    CustomDiffusionAttnProcessor does this for CLIP's start token), via forward hooks."""

    def hook(_module: nn.Module, _inputs: Any, out: torch.Tensor) -> torch.Tensor:
        return torch.cat([out[:, :1].detach(), out[:, 1:]], dim=1)  # (B, L, inner)

    handles = [
        m.register_forward_hook(hook) for name, m in unet.named_modules() if name.endswith(("attn2.to_k", "attn2.to_v"))
    ]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _lora_leaves(unet: nn.Module) -> list[nn.Module]:
    """The lora_A / lora_B sub-layers (nn.Linear or nn.Conv2d) of every adapted module."""
    return [m for n, m in unet.named_modules() if ".lora_A." in n or ".lora_B." in n]


def _forward_with(module: nn.Module, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """`module(x)` computed with another weight tensor of the same shape."""
    if isinstance(module, nn.Conv2d):
        return module._conv_forward(x, weight, module.bias)
    return nn.functional.linear(x, weight, module.bias)


@contextmanager
def route_grads(unet: nn.Module, params: list[nn.Parameter], n_first: int) -> Iterator[list[torch.Tensor]]:
    """Inside the block, batch rows [n_first:] see the LoRA through shadow leaves (same storage, no
    copy), so ONE backward of a summed loss yields d/dLoRA of the first rows' loss in `params` and of
    the other rows' loss in the yielded shadows (same order as `params`). Exact because UNet samples
    never mix (GroupNorm, attention and convs are per sample). DoCo uses it to get g_adv and g_prior
    from one 2B forward/backward instead of two B ones."""
    shadows = [p.detach().requires_grad_(True) for p in params]
    by_id = {id(p): s for p, s in zip(params, shadows)}

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], out: torch.Tensor) -> torch.Tensor:
        x = inputs[0]
        shadow = by_id.get(id(module.weight))
        if shadow is None or x.shape[0] <= n_first:
            return out
        # The module's own output is recomputed in two row blocks; LoRA layers are rank r, so cheap.
        return torch.cat(
            [_forward_with(module, x[:n_first], module.weight), _forward_with(module, x[n_first:], shadow)]
        )

    handles = [m.register_forward_hook(hook) for m in _lora_leaves(unet)]
    try:
        yield shadows
    finally:
        for h in handles:
            h.remove()


def _base_weight(unet: nn.Module, name: str) -> torch.Tensor:
    """Weight of the (base layer of the) module `name`; CdcError if this UNet has no such module."""
    try:
        module = unet.get_submodule(name)
    except AttributeError as e:
        raise CdcError(f"LoRA targets module {name!r}, which this UNet does not have (LoRA from another model?)") from e
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
    """Write `pytorch_lora_weights.safetensors` (loadable without cdc: `pipe.load_lora_weights(path)`
    or `unet.load_lora_adapter(path, weight_name=..., prefix="unet")`) and `cdc_config.json`
    (config + base fingerprint) atomically."""
    from diffusers import StableDiffusionPipeline
    from peft.tuners.tuners_utils import BaseTunerLayer
    from peft.utils import get_peft_model_state_dict

    from cdc.io import atomic_path, canonicalize_safetensors, save_json

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


def load_lora_config(path: str | Path) -> dict[str, Any]:
    """The `cdc_config.json` beside a saved LoRA."""
    from cdc.io import load_json

    path = Path(path)
    for name in (WEIGHT_NAME, CONFIG_NAME):
        if not (path / name).is_file():
            raise FileNotFoundError(f"LoRA folder {path} has no {name}")
    return load_json(path / CONFIG_NAME)


def check_lora_fits(unet: nn.Module, path: str | Path, strict_weights: bool = False) -> dict[str, Any]:
    """The config of a LoRA saved by `save_lora`, after checking it was made for this architecture
    (CdcError otherwise; with strict_weights, also for these exact base weights)."""
    meta = load_lora_config(path)
    targets = list(meta.get("lora", {}).get("targets", []))
    if not targets or "base_fingerprint" not in meta:
        raise CdcError(f"{Path(path) / CONFIG_NAME} lacks lora.targets/base_fingerprint; not a cdc LoRA")
    got = fingerprint(unet, targets)  # raises CdcError for modules this UNet lacks
    if got != meta["base_fingerprint"]:
        raise CdcError(
            f"LoRA {path} was trained on another model: base fingerprint {meta['base_fingerprint']} != "
            f"this UNet's {got} (different config or weight shapes)"
        )
    if strict_weights and weights_hash(unet, targets) != meta.get("base_weights"):
        raise CdcError(f"LoRA {path} was trained on other base weights of the same architecture")
    return meta


def load_lora(
    unet: nn.Module, path: str | Path, adapter_name: str = "default", strict_weights: bool = False
) -> nn.Module:
    """Load a LoRA saved by `save_lora` into `unet` in place, after `check_lora_fits`."""
    from cdc.bundle import apply_lora

    load_lora_config(path)  # a folder without the cdc config is not a LoRA this loader accepts
    if adapter_name in (getattr(unet, "peft_config", None) or {}):
        raise ValueError(f"the UNet already has an adapter named {adapter_name!r}")
    try:
        return apply_lora(unet, path, adapter_name, strict_weights)
    except ValueError as e:
        raise CdcError(str(e)) from e
