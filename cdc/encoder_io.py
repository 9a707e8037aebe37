"""Trainable text-encoder copies (AdvUnlearn's module) and their files, loadable without `cdc`.

The trained module is a full copy of the encoder's transformer layers, not a LoRA: AdvUnlearn trains
all CLIP-L encoder layers plus `final_layer_norm` with token and position embeddings frozen
[OPTML-Group/AdvUnlearn@9d23124 utils/util.py:param_choices, `text_encoder_full`]; MiniLM's six
layers are 22 M parameters, so no adapter is needed.

A saved folder is a plain transformers model folder (`model.save_pretrained` + the tokenizer), so
`transformers.AutoModel.from_pretrained(dir)` loads it, plus `cdc_config.json`: the training config
and a fingerprint and weights hash of the BASE encoder it was made for; `load_text_encoder` refuses
another base.
"""

from __future__ import annotations

import copy
import hashlib
import json
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cdc.bundle import ModelBundle
from cdc.errors import CdcError
from cdc.io import atomic_path, canonicalize_safetensors, load_json, save_json
from cdc.text import TextEncoder

CONFIG_NAME = "cdc_config.json"
WEIGHT_NAME = "model.safetensors"  # transformers' SAFE_WEIGHTS_NAME


class TextEncoderError(CdcError):
    """A saved text encoder is unreadable or was made for another base encoder."""


def encoder_layers(model: nn.Module) -> tuple[nn.ModuleList, nn.Module | None]:
    """The transformer layers of a text model and its final norm: CLIP (`final_layer_norm`) or BERT/MiniLM
    (post-LN layers, no final norm)."""
    root = getattr(model, "text_model", model)  # transformers < 5 nests CLIPTextModel's modules one deeper
    encoder = getattr(root, "encoder", None)
    layers = getattr(encoder, "layers", getattr(encoder, "layer", None))  # CLIP: .layers; BERT: .layer
    if isinstance(layers, nn.ModuleList):
        return layers, getattr(root, "final_layer_norm", None)
    raise ValueError(f"cannot find the transformer layers of a {type(model).__name__}")


def trainable_copy(text: TextEncoder, n_layers: int | None) -> tuple[TextEncoder, list[nn.Parameter]]:
    """A float32 copy of `text` whose first `n_layers` layers train (None: all layers and the final norm,
    released `text_encoder_full`); embeddings stay frozen. `text` itself is left untouched."""
    layers, final_norm = encoder_layers(text.model)
    if n_layers is not None and n_layers > len(layers):
        raise ValueError(f"text_layers={n_layers} but the text encoder has {len(layers)} layers")
    model = copy.deepcopy(text.model).float().eval()  # fp32 master weights even for an fp16 bundle
    model.requires_grad_(False)
    layers, final_norm = encoder_layers(model)
    chosen: list[nn.Module] = list(layers) if n_layers is None else list(layers[:n_layers])
    if n_layers is None and final_norm is not None:
        chosen.append(final_norm)
    for module in chosen:
        module.requires_grad_(True)
    trained = copy.copy(text)  # shares the tokenizer and context settings, not the model
    trained.model = model
    return trained, [p for p in model.parameters() if p.requires_grad]


def frozen(trained: TextEncoder, like: TextEncoder) -> TextEncoder:
    """`trained` frozen, in eval mode and cast to `like`'s dtype and device (what a bundle expects)."""
    trained.model.to(device=like.device, dtype=like.dtype).eval().requires_grad_(False)
    return trained


def _context_settings(text: TextEncoder) -> dict[str, Any]:
    """How the encoder turns hidden states into context: its class, max_length and MiniLM's pooled_scale."""
    out: dict[str, Any] = {"type": type(text).__name__, "max_length": int(text.max_length)}
    if hasattr(text, "pooled_scale"):
        out["pooled_scale"] = float(text.pooled_scale)
    return out


def fingerprint(text: TextEncoder) -> str:
    """Architecture fingerprint: sha256 over the model class, the context settings and every weight's shape."""
    shapes = {n: list(p.shape) for n, p in text.model.named_parameters()}
    spec = {"class": type(text.model).__name__, "context": _context_settings(text), "shapes": shapes}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def weights_hash(text: TextEncoder) -> str:
    """sha256 over every weight cast to float16, so the fp32 and fp16 copies of one base hash the same."""
    h = hashlib.sha256()
    for name, p in sorted(text.model.named_parameters()):
        h.update(name.encode())
        h.update(p.detach().to(device="cpu", dtype=torch.float16).numpy().tobytes())
    return h.hexdigest()[:16]


def _text_of(obj: TextEncoder | ModelBundle) -> TextEncoder:
    """The text encoder of a bundle, or the encoder itself."""
    return obj.text if isinstance(obj, ModelBundle) else obj


def save_text_encoder(trained: TextEncoder | ModelBundle, path: str | Path, config: dict[str, Any], *,
                      base: TextEncoder | ModelBundle) -> Path:
    """Write `trained` as a transformers folder (model + tokenizer) with `cdc_config.json` (config, context
    settings and `base`'s fingerprint and weights hash), atomically."""
    trained, base = _text_of(trained), _text_of(base)
    if fingerprint(trained) != fingerprint(base):
        raise ValueError("the trained text encoder's architecture differs from `base`: not made from it")
    meta = {
        **config,
        "text_encoder": {"class": type(trained.model).__name__, "context": _context_settings(trained)},
        "base_fingerprint": fingerprint(base),
        "base_weights": weights_hash(base),
    }
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.mkdir(parents=True)
        trained.model.save_pretrained(str(tmp), safe_serialization=True)
        trained.tokenizer.save_pretrained(str(tmp))
        if (tmp / WEIGHT_NAME).is_file():
            canonicalize_safetensors(tmp / WEIGHT_NAME)  # same weights -> same bytes (DVC)
        save_json(meta, tmp / CONFIG_NAME)
    return path


def read_text_encoder_config(path: str | Path) -> dict[str, Any]:
    """The `cdc_config.json` of a folder written by `save_text_encoder`."""
    path = Path(path)
    for name in ("config.json", CONFIG_NAME):
        if not (path / name).is_file():
            raise FileNotFoundError(f"text encoder folder {path} has no {name}")
    try:
        meta = load_json(path / CONFIG_NAME)
    except ValueError as e:
        raise TextEncoderError(str(e)) from None
    if not isinstance(meta, dict) or "base_fingerprint" not in meta or "base_weights" not in meta:
        raise TextEncoderError(f"{path / CONFIG_NAME} lacks base_fingerprint/base_weights; not a cdc text encoder")
    return meta


def load_text_encoder(base: TextEncoder | ModelBundle, path: str | Path,
                      allow_other_base: bool = False) -> TextEncoder:
    """A saved text encoder as a new `TextEncoder` like `base` (its tokenizer, context settings, dtype and
    device), after checking it was made for `base`: architecture always, exact weights unless
    `allow_other_base` (then a warning). Use it as `dataclasses.replace(bundle, text=loaded)`."""
    base = _text_of(base)
    meta = read_text_encoder_config(path)
    got = fingerprint(base)
    if got != meta["base_fingerprint"]:
        raise TextEncoderError(
            f"text encoder {path} was made for another base encoder: fingerprint {meta['base_fingerprint']} != "
            f"this bundle's {got} (different model, weight shapes or context settings)"
        )
    if weights_hash(base) != meta["base_weights"]:
        message = f"text encoder {path} was trained from other base weights of the same architecture"
        if not allow_other_base:
            raise TextEncoderError(f"{message} (pass allow_other_base to load it anyway)")
        warnings.warn(f"{message}; loading it anyway as asked", stacklevel=2)
    try:
        model = type(base.model).from_pretrained(str(path), local_files_only=True, dtype=base.dtype)
    except (OSError, ValueError, RuntimeError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        raise TextEncoderError(f"text encoder {path} could not be read: {first}") from None
    bad = [n for n, p in model.named_parameters() if not p.detach().isfinite().all()]
    if bad:
        raise TextEncoderError(f"text encoder {path} holds non-finite weights (NaN or inf), e.g. in {bad[0]}")
    loaded = copy.copy(base)
    loaded.model = model.to(base.device).eval().requires_grad_(False)
    if fingerprint(loaded) != got:
        raise TextEncoderError(f"text encoder {path} does not have the base encoder's weight shapes")
    return loaded
