"""params.yaml `world`: build the emoji world."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from cdc.config import Checked, bounded, check_names

Style = Literal["twemoji", "openmoji"]


@dataclass(frozen=True)
class WorldParams(Checked):
    """Build the emoji world: concepts present in every style, rendered small on white."""

    size: int = bounded(8)  # render size in pixels (square)
    styles: list[Style]
    n_concepts: int = bounded(1)  # target families + neighbours + a seeded sample of the other emoji
    min_concepts: int = bounded(1)  # fail the build if fewer concepts come out
    seed: int = bounded(0)
    caption_templates: list[str]  # "{a}" = phrase with its article ("a church"), "{p}" = bare phrase

    def __post_init__(self) -> None:
        """Distinct styles; every template names the phrase."""
        super().__post_init__()
        check_names("styles", self.styles)
        if not self.caption_templates or any("{a}" not in t and "{p}" not in t for t in self.caption_templates):
            raise ValueError("caption_templates must be non-empty and each must contain {a} or {p}")
