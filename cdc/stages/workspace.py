"""The pipeline's outputs that a script needs for one target family, checked to exist before any is loaded."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cdc.anchors import Pairs, load_anchors
from cdc.bundle import ModelBundle, load_bundle
from cdc.errors import CdcError
from cdc.judge import JudgeNet, load_judge
from cdc.world.data import World, load_world


@dataclass(frozen=True)
class FamilyInputs:
    """The built world, its judge, the world model and the family's anchors (pairs, probe objects, samples)."""

    world: World
    judge: JudgeNet
    bundle: ModelBundle
    pairs: Pairs
    probe: list[str]
    samples: dict[str, np.ndarray]


def load_family_inputs(data: str | Path, concept: str, erased: str | Path | None = None) -> FamilyInputs:
    """Load what `dvc repro anchors@<concept>` leaves under `data`; `erased`, when given, must be an erase output."""
    data = Path(data)
    anchors = data / "anchors" / concept
    for path in (anchors, data / "models" / "world", data / "models" / "judge", data / "world" / "built"):
        if not path.exists():
            raise CdcError(f"{path} does not exist: run `dvc repro anchors@{concept}` first")
    if erased is not None and not Path(erased).exists():
        raise CdcError(f"{erased} does not exist (erase stage outputs live in {data / 'erase' / concept}/)")
    pairs, probe, samples = load_anchors(anchors)
    return FamilyInputs(load_world(data / "world" / "built"), load_judge(data / "models" / "judge"),
                        load_bundle("world", data / "models" / "world"), pairs, probe, samples)


def family_inputs_or_exit(data: str | Path, concept: str, erased: str | Path | None = None) -> FamilyInputs:
    """`load_family_inputs` for a command-line script: a missing input ends it with the one-line message."""
    try:
        return load_family_inputs(data, concept, erased)
    except CdcError as e:
        raise SystemExit(str(e)) from None
