"""params.yaml `relearn`: fine-tune each erased model on its concept."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from cdc.config import Checked, bounded, check_names, check_steps
from cdc.methods.config import LoraGroup, LoraRunConfig
from cdc.stages.sections.erase import Method, check_methods


@dataclass(frozen=True)
class RelearnParams(Checked):
    """Each erased model fine-tuned on images of its concept: after how many steps is the concept back?"""

    concepts: list[str]  # world families whose erase-stage anchors (pairs, base-model samples) the stage reuses
    FAMILY_FIELDS: ClassVar[tuple[str, ...]] = ("concepts",)
    methods: list[Method]  # each erased as erase.<method> says, then fine-tuned
    checkpoints: list[int]  # fine-tuning steps at which the concept's rates are judged; 0: the erased model
    returned: float = bounded(0, 1, lo_open=True)  # the concept is back once its in-set rate reaches this
    lr: float = bounded(0, lo_open=True)  # AdamW on the fine-tuning LoRA
    batch_size: int = bounded(1)
    lora_group: LoraGroup  # the layers the fine-tune adapts (the erasure is merged into the UNet first)
    lora_rank: int = bounded(1)
    max_grad_norm: float = bounded(0, lo_open=True)
    weight_decay: float = bounded(0)
    seed: int = bounded(0)  # LoRA init and every batch, noise and timestep draw

    def __post_init__(self) -> None:
        """Distinct families and methods; increasing checkpoints from 0 or more, the last above 0."""
        super().__post_init__()
        check_names("concepts", self.concepts)
        check_names("methods", self.methods)
        check_steps("checkpoints", self.checkpoints)

    def run_config(self) -> LoraRunConfig:
        """The fine-tune as a LoRA run config (its length is the last checkpoint)."""
        return LoraRunConfig(steps=self.checkpoints[-1], lr=self.lr, batch_size=self.batch_size,
                             lora_group=self.lora_group, lora_rank=self.lora_rank, lora_alpha=None,
                             max_grad_norm=self.max_grad_norm, weight_decay=self.weight_decay, seed=self.seed,
                             log_every=1)

    def cross_check(self, loaded: Mapping[str, Any]) -> None:
        """Every method has its erase section."""
        check_methods("relearn.methods", self.methods, loaded)
