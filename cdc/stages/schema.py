"""The whole params.yaml: every section's class, for the commands and checks that read all of it (`cdc sweep`,
the CLI's settings, the tests). A stage loads only its own sections (`cdc.stages.params.load_sections`)."""

from __future__ import annotations

import os
from types import SimpleNamespace
from typing import Any

from cdc.config import EvaluateParams, JudgeParams, ReportParams, SampleParams
from cdc.errors import ParamsError
from cdc.stages.params import FAMILIES_FILE, SECTIONS, load_sections
from cdc.stages.sections.ablate import AblateParams
from cdc.stages.sections.anchors import AnchorsParams
from cdc.stages.sections.attack import AttackParams
from cdc.stages.sections.base import BaseParams
from cdc.stages.sections.erase import EraseParams
from cdc.stages.sections.multi import MultiParams
from cdc.stages.sections.paper import PaperParams
from cdc.stages.sections.pretrain import PretrainParams
from cdc.stages.sections.relearn import RelearnParams
from cdc.stages.sections.tradeoff import TradeoffParams
from cdc.stages.sections.transfer import TransferParams
from cdc.stages.sections.world import WorldParams

SECTION_CLASSES: dict[str, type] = {
    "world": WorldParams, "judge": JudgeParams, "pretrain": PretrainParams, "sample": SampleParams,
    "base": BaseParams, "anchors": AnchorsParams, "erase": EraseParams, "evaluate": EvaluateParams,
    "attack": AttackParams, "ablate": AblateParams, "transfer": TransferParams, "tradeoff": TradeoffParams,
    "relearn": RelearnParams, "multi": MultiParams, "report": ReportParams, "paper": PaperParams,
}
assert tuple(SECTION_CLASSES) == SECTIONS, "cdc.stages.params.SECTIONS and SECTION_CLASSES disagree"

Params = SimpleNamespace  # all of params.yaml: one attribute per section


def load_params(path: str | os.PathLike[str] = "params.yaml",
                families: str | os.PathLike[str] | None = FAMILIES_FILE) -> Params:
    """Read and validate the whole params file, every cross-section rule included."""
    return load_sections(path, families, **SECTION_CLASSES)


def load_section(name: str, path: str | os.PathLike[str] = "params.yaml") -> Any:
    """Read and validate one section by name."""
    if name not in SECTION_CLASSES:
        raise ParamsError(f"unknown params section '{name}' (known: {', '.join(SECTION_CLASSES)})")
    return getattr(load_sections(path, **{name: SECTION_CLASSES[name]}), name)
