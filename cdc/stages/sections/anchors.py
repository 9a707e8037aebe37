"""params.yaml `anchors`: the base-model samples an erasure trains on."""

from __future__ import annotations

from dataclasses import dataclass

from cdc.config import Checked, Phrases, bounded


@dataclass(frozen=True)
class AnchorsParams(Checked):
    """Base-model samples that an erasure trains on: anchor prompts (DoCo, CA) and target prompts (ESD)."""

    samples_per_prompt: int = bounded(1)  # seeded images per prompt
    phrases: Phrases  # all: every caption phrase of the family; names: names only; drawn: those the base model draws
    min_drawn: float = bounded(0, 1)  # phrases "drawn": keep a phrase drawn as the family at least this often
    style_probe: int = bounded(1)  # objects through which a style family is prompted
    seed: int = bounded(0)  # first sample seed; probe choice too
