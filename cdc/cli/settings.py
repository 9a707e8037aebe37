"""What the `cdc` commands read from a params file: the sampler, how many anchor images to draw, each method's
settings, the prefix attack and the confidence of the intervals.

params_sd.yaml holds exactly these sections (an unknown or missing key is an error, as in params.yaml); the
pipeline's params.yaml is validated whole and these keys are taken from it.
"""

from __future__ import annotations

import os
import typing
from collections.abc import Mapping
from dataclasses import dataclass

from cdc.attacks.config import PrefixAttackConfig
from cdc.config import Checked, SampleParams, bounded
from cdc.errors import ParamsError
from cdc.stages.params import load_sections, read_yaml
from cdc.stages.schema import load_params
from cdc.stages.sections.erase import MethodSections


@dataclass(frozen=True)
class AnchorSampling(Checked):
    """How many base-model images `cdc erase` draws per anchor (and target) prompt, from which seed."""

    samples_per_prompt: int = bounded(1)
    seed: int = bounded(0)  # image j of a prompt has seed seed + j


@dataclass(frozen=True)
class AttackSettings(Checked):
    """`cdc attack`: the prefix attack (UnlearnDiffAtk)."""

    prefix: PrefixAttackConfig


@dataclass(frozen=True)
class IntervalSettings(Checked):
    """`cdc evaluate` and `cdc attack`: the level of the Wilson interval on every rate."""

    confidence: float = bounded(0, 1, lo_open=True, hi_open=True)


@dataclass(frozen=True)
class CommandParams:
    """All a command reads; each field is one section of the params file."""

    sample: SampleParams
    anchors: AnchorSampling
    erase: MethodSections  # erase.<method> for each method `cdc erase --method` can run with these settings
    attack: AttackSettings
    report: IntervalSettings


def load_command_params(path: str | os.PathLike[str]) -> CommandParams:
    """The commands' sections of a params file: params_sd.yaml as it is, or the pipeline's params.yaml (it has a
    `world` section) validated whole first."""
    data = read_yaml(path)
    if isinstance(data, Mapping) and "world" in data:
        full = load_params(path, families=None)  # the commands name their concept themselves
        return CommandParams(
            sample=full.sample,
            anchors=AnchorSampling(samples_per_prompt=full.anchors.samples_per_prompt, seed=full.anchors.seed),
            erase=MethodSections(full.erase.configs),
            attack=AttackSettings(prefix=full.attack.prefix),
            report=IntervalSettings(confidence=full.report.confidence),
        )
    classes = typing.get_type_hints(CommandParams)  # section -> class
    if isinstance(data, Mapping) and (unknown := [k for k in data if k not in classes]):
        raise ParamsError(f"{path}: unknown section '{unknown[0]}' (known: {', '.join(sorted(classes))})")
    return CommandParams(**vars(load_sections(path, families=None, **classes)))
