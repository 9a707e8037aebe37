"""params.yaml `multi`: several concepts erased in one run."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cdc.config import Checked, bounded, check_names
from cdc.stages.sections.erase import Method, check_methods


@dataclass(frozen=True)
class MultiParams(Checked):
    """Several world concepts erased in one run: erasure and retention against how many."""

    counts: list[int]  # sizes of the nested erased sets, increasing
    families: list[str]  # one-member object families erased first (with their anchors), then seeded concepts
    methods: list[Method]  # each trained once per count with erase.<method> unchanged
    seed: int = bounded(0)  # which other concepts, their anchors, and the first sample seed

    def __post_init__(self) -> None:
        """Distinct families and methods; increasing positive counts."""
        super().__post_init__()
        check_names("families", self.families)
        check_names("methods", self.methods)
        if not self.counts or self.counts[0] < 1 or any(b <= a for a, b in zip(self.counts, self.counts[1:])):
            raise ValueError(f"counts must be increasing numbers of concepts >= 1, got {self.counts}")

    def cross_check(self, loaded: Mapping[str, Any]) -> None:
        """Every method has its erase section."""
        check_methods("multi.methods", self.methods, loaded)
