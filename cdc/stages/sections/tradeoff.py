"""params.yaml `tradeoff`: erasure-retention curves on the validation split."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from cdc.config import Checked, bounded, check_names
from cdc.errors import ParamsError
from cdc.stages.sections.erase import Method, check_methods


@dataclass(frozen=True)
class TradeoffParams(Checked):
    """Each method's erasure-retention curve, swept on the validation split, and its matched-erasure row."""

    concepts: list[str]  # world families whose erase-stage anchors the sweep reuses
    methods: list[Method]
    FAMILY_FIELDS: ClassVar[tuple[str, ...]] = ("concepts",)
    scales: list[float]  # training lengths: x each method's own updates (steps - warmup_steps); one run, snapshotted
    validation_seed: int = bounded(0)  # sample.seed and evaluate.seed of the validation split

    def __post_init__(self) -> None:
        """Distinct families and methods; positive, increasing scales."""
        super().__post_init__()
        check_names("concepts", self.concepts)
        check_names("methods", self.methods)
        if not self.scales or any(not 0 < s <= 10 for s in self.scales) or self.scales != sorted(set(self.scales)):
            raise ValueError(f"scales must be increasing values in (0, 10], got {self.scales}")

    def cross_check(self, loaded: Mapping[str, Any]) -> None:
        """Every method has its erase section; the validation seed is no seed of the evaluation split."""
        check_methods("tradeoff.methods", self.methods, loaded)
        evaluation = [s.seed for s in (loaded.get("sample"), loaded.get("evaluate")) if s is not None]
        if self.validation_seed in evaluation:
            raise ParamsError(f"'tradeoff.validation_seed' {self.validation_seed} is a seed of the evaluation split "
                              "(sample.seed or evaluate.seed): choosing on it would tune on the test set")
