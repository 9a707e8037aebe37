"""params.yaml `paper`: the paper built from the report's files."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cdc.config import Checked, check_names
from cdc.errors import ParamsError


@dataclass(frozen=True)
class PaperParams(Checked):
    """The paper built from the report's files (paper/main.typ, compiled with Typst)."""

    grids: list[str]  # families of erase.concepts whose before/after grid the paper shows, in that order

    def __post_init__(self) -> None:
        """Distinct families."""
        super().__post_init__()
        check_names("grids", self.grids)

    def cross_check(self, loaded: Mapping[str, Any]) -> None:
        """The paper shows grids of erased families only (`cdc sweep` narrows paper.grids with erase.concepts)."""
        if (erase := loaded.get("erase")) is not None:
            if unknown := [f for f in self.grids if f not in erase.concepts]:
                raise ParamsError(f"'paper.grids': {unknown[0]!r} is not in erase.concepts, so it has no grid")
