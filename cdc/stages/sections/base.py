"""params.yaml `base`: judge the base model's images."""

from __future__ import annotations

from dataclasses import dataclass

from cdc.config import Checked, bounded


@dataclass(frozen=True)
class BaseParams(Checked):
    """Judge the base model's images (in-set and out-of-set prompts)."""

    images_per_prompt: int = bounded(1)
    n_other_concepts: int = bounded(0)  # non-target concepts included in base_concept_acc
    seed: int = bounded(0)
