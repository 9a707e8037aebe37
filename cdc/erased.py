"""An erased model on disk and in memory: what an erasure trained (a UNet LoRA, or AdvUnlearn's text encoder)
saved, loaded and switched off as one kind of thing."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cdc.bundle import ModelBundle
from cdc.encoder_io import load_text_encoder, save_text_encoder
from cdc.lora import base_model, remove_lora, tuner_layers
from cdc.lora_io import load_lora, save_lora


def save_erased(erased: ModelBundle, base: ModelBundle, path: str | Path, config: dict[str, Any]) -> Path:
    """Write what an erasure trained: a text encoder folder where `erased` has its own encoder (AdvUnlearn),
    else the UNet's LoRA; both with `config` and fingerprints of `base`."""
    if erased.text is not base.text:
        return save_text_encoder(erased.text, path, config, base=base.text)
    return save_lora(erased.unet, path, config)


@contextmanager
def erased_model(bundle: ModelBundle, path: str | Path | None,
                 allow_other_base: bool = False) -> Iterator[ModelBundle]:
    """The bundle with an erasure from `path` applied: a text encoder folder (AdvUnlearn) gives a copy with
    that encoder; a LoRA is loaded into `bundle.unet` for the block and removed after it; None: `bundle`."""
    if path is None:
        yield bundle
        return
    path = Path(path)
    if (path / "config.json").is_file():  # a transformers model folder; a LoRA folder has no config.json
        yield dataclasses.replace(bundle, text=load_text_encoder(bundle, path, allow_other_base))
        return
    load_lora(bundle.unet, path, allow_other_base=allow_other_base)
    try:
        yield bundle
    finally:
        remove_lora(bundle.unet)


@contextmanager
def original_model(bundle: ModelBundle) -> Iterator[ModelBundle]:
    """`bundle` as the model before erasure: any LoRA of its UNet switched off inside the block (an erasure of
    the text encoder lives in its own copy of the bundle, so `bundle` is already the original)."""
    layers = tuner_layers(bundle.unet)
    if not layers:
        yield bundle
        return
    with base_model(bundle.unet, layers):
        yield bundle
