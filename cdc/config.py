"""Configuration dataclasses the library takes, and their base: value checks that run however one is built."""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass
from typing import Any, Literal

from cdc.choices import Precision


def bounded(lo: float | None = None, hi: float | None = None, *, lo_open: bool = False,
            hi_open: bool = False) -> Any:
    """A required dataclass field whose value must lie in [lo, hi] (open ends with lo_open / hi_open)."""
    return dataclasses.field(metadata={"range": (lo, hi, lo_open, hi_open)})


def _range_text(lo: float | None, hi: float | None, lo_open: bool, hi_open: bool) -> str:
    """'>= 1', '> 0', 'in [0, 1)' and so on."""
    if hi is None:
        return f"{'>' if lo_open else '>='} {lo}"
    if lo is None:
        return f"{'<' if hi_open else '<='} {hi}"
    return f"in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"


def _in_range(value: float, lo: float | None, hi: float | None, lo_open: bool, hi_open: bool) -> bool:
    """Whether value lies in the (half-)open interval."""
    if lo is not None and (value < lo or (lo_open and value == lo)):
        return False
    return hi is None or not (value > hi or (hi_open and value == hi))


def _check_value(name: str, tp: Any, value: Any, bounds: tuple | None) -> None:
    """Raise ValueError when a value cannot run: non-finite, out of range or not one of a Literal's options."""
    if typing.get_origin(tp) is Literal and value not in typing.get_args(tp):
        choices = ", ".join(repr(a) for a in typing.get_args(tp))
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    items = value if isinstance(value, (list, tuple)) else [value]
    for item in items:
        if isinstance(item, bool) or not isinstance(item, (int, float)):
            continue
        if not math.isfinite(item):
            raise ValueError(f"{name} must be finite, got {item}")
        if bounds is not None and not _in_range(item, *bounds):
            raise ValueError(f"{name} must be {_range_text(*bounds)}, got {item}")


@dataclasses.dataclass(frozen=True)
class Checked:
    """Frozen dataclass base: numbers finite and inside their `bounded` ranges, Literal fields one of their options."""

    def __post_init__(self) -> None:
        """Check every field (subclasses add cross-field rules and call this first)."""
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            _check_value(f.name, hints[f.name], getattr(self, f.name), f.metadata.get("range"))


def check_names(what: str, names: list[str], known: tuple[str, ...] | None = None) -> None:
    """A non-empty list of distinct names, each one of `known` when given."""
    if not names:
        raise ValueError(f"{what} is empty")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"{what} lists {', '.join(dup)} more than once")
    if known is not None:
        unknown = [n for n in names if n not in known]
        if unknown:
            raise ValueError(f"{what}: unknown {unknown[0]!r} (known: {', '.join(known)})")


def check_steps(what: str, steps: list[int]) -> list[int]:
    """Strictly increasing step counts >= 0 that end above 0 (step 0: before any update), or ValueError."""
    steps = [int(s) for s in steps]
    if not steps or steps[0] < 0 or steps[-1] < 1 or any(b <= a for a, b in zip(steps, steps[1:])):
        raise ValueError(f"{what} must be increasing steps >= 0 ending above 0, got {steps}")
    return steps


# ------------------------------------------------------------------ settings the library reads

Phrases = Literal["all", "names", "drawn"]  # anchors.phrases; cdc.anchors.erase_pairs builds each
PHRASES = typing.get_args(Phrases)


@dataclass(frozen=True)
class JudgeParams(Checked):
    """Train the concept/style classifier used to score generated images."""

    steps: int = bounded(1)
    batch_size: int = bounded(1)
    lr: float = bounded(0, lo_open=True)  # peak of the one-cycle schedule
    width: int = bounded(1)  # channels of the first conv block
    weight_decay: float = bounded(0)  # AdamW, on conv and linear weights only
    label_smoothing: float = bounded(0, 1, hi_open=True)
    augment_strength: float = bounded(0)  # scale of the colour, affine and blur augmentation
    eval_renders: int = bounded(1)  # augmented held-out renders per image for the accuracy report
    seed: int = bounded(0)
    log_every: int = bounded(1)  # steps between history rows


@dataclass(frozen=True)
class SampleParams(Checked):
    """The sampler every later stage and `cdc generate` use (DDIM with classifier-free guidance)."""

    steps: int = bounded(1)
    guidance: float = bounded(0)  # classifier-free guidance scale; 1 = no unconditional pass
    eta: float = bounded(0, 1)  # 0 = deterministic DDIM, 1 = DDPM-like stochastic steps
    batch_size: int = bounded(1)
    seed: int = bounded(0)  # first seed of `cdc generate`
    precision: Precision  # UNet arithmetic: "auto" = bf16 autocast where the hardware has it natively


@dataclass(frozen=True)
class EvaluateParams(Checked):
    """Judge every erased model and the base model on the same prompts and seeds."""

    images_per_prompt: int = bounded(1)  # seeds per in-set and out-of-set prompt
    in_set_images: int = bounded(1)  # fewer seeds per in-set prompt where the family has many (at least 1 each)
    retain_images: int = bounded(1)  # seeds per (retained concept, style) prompt
    n_retain: int = bounded(1)  # retained concepts outside every family (retain_all)
    fid_images: int = bounded(2)  # generated images for world-FID (a fixed seeded subset of renders)
    seed: int = bounded(0)  # sampling seeds, apart from the anchors stage's


@dataclass(frozen=True)
class ReportParams(Checked):
    """What the report calls a successful erasure and how sure its intervals are."""

    in_set_max: float = bounded(0, 1)  # erased: the judge sees the family on its training prompts at most this often
    out_of_set_max: float = bounded(0, 1)  # ... and on paraphrases never trained on
    neighbors_min: float = bounded(0, 1)  # kept: retain_neighbors at least this x the base model's
    retain_all_min: float = bounded(0, 1)  # kept: retain_all at least this x the base model's
    confidence: float = bounded(0, 1, lo_open=True, hi_open=True)  # Wilson intervals on every rate
