"""params.yaml `attack`: the attacks every erased model (and the base model) faces."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from cdc.attacks.config import ContextAttackConfig, InversionConfig, PrefixAttackConfig, RingABellConfig
from cdc.config import Checked, bounded


@dataclass(frozen=True)
class AttackParams(Checked):
    """Attack every erased model (and the base model) on the same prompts and seeds."""

    prompts: int = bounded(1)  # in-set prompts attacked per family (a seeded subset of the training prompts)
    seed: int = bounded(0)  # prompt choice; image i of an attack is drawn with seed + i
    FAMILY_FIELDS: ClassVar[tuple[str, ...]] = ("harmful",)
    harmful: list[str]  # families attacked with harmful_k prefix tokens (the released k for nudity)
    harmful_k: int = bounded(1)
    images: int = bounded(1)  # fresh seeds per attacked prompt (prefix, Ring-A-Bell), none of them the attack's own
    prefix: PrefixAttackConfig  # the discrete prefix attack (UnlearnDiffAtk)
    inversion: InversionConfig  # concept inversion (CCE); start "concept": the family's own word
    style_templates: list[str]  # inversion templates for a style family (the object prompts name no style)
    inversion_images: int = bounded(1)  # seeds per inversion template at generation
    ringabell: RingABellConfig  # the black-box search over tokens (Ring-A-Bell), with the original encoder only
    context: ContextAttackConfig  # the white-box upper bound: a free context fitted through the erased UNet

    def __post_init__(self) -> None:
        """Every style template has the {} slot the learned word fills."""
        super().__post_init__()
        if bad := [t for t in self.style_templates if "{}" not in t]:
            raise ValueError(f"style_templates: {bad[0]!r} has no {{}} for the learned word")
