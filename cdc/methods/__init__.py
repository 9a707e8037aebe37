"""Concept-erasure methods (DoCo, ESD, CA) as pure training functions over a ModelBundle + LoRA."""

from cdc.methods.ca import CaConfig, train_ca
from cdc.methods.doco import DocoConfig, train_doco
from cdc.methods.esd import EsdConfig, train_esd
from cdc.methods.lora import add_lora, load_lora, remove_lora, save_lora

__all__ = [
    "CaConfig",
    "DocoConfig",
    "EsdConfig",
    "add_lora",
    "load_lora",
    "remove_lora",
    "save_lora",
    "train_ca",
    "train_doco",
    "train_esd",
]
