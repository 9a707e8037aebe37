"""The tradeoff stage: a method's erasure-retention curve from one run snapshotted at several training lengths,
and its matched-erasure point (the best retention among the lengths that erase), chosen on the validation split
and scored again on the evaluation split."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from cdc.anchors import Pairs
from cdc.bundle import ModelBundle
from cdc.lora import remove_lora
from cdc.stages.ablate import Scorer
from cdc.stages.erase import MethodConfig, run_method


def snapshot_steps(cfg: MethodConfig, scales: Sequence[float]) -> list[int]:
    """The total steps of each training length: the warm-up, then scale x the method's own updates
    (steps - warmup_steps; all steps for ESD and CA), at least one update each."""
    warm = getattr(cfg, "warmup_steps", 0)
    steps = [warm + max(1, round(s * (cfg.steps - warm))) for s in scales]
    if len(set(steps)) != len(steps) or steps != sorted(steps):
        raise ValueError(f"scales {list(scales)} give training lengths {steps}: they must be distinct and increasing")
    return steps


class Snapshots:
    """A step hook (`cdc.methods.train.StepHook`) that copies the trained tensors at chosen steps and can put
    any copy back into them, so one run stands in for one run per length."""

    def __init__(self, steps: Sequence[int]) -> None:
        self.steps = set(steps)
        self.saved: dict[int, list[torch.Tensor]] = {}
        self._params: list[nn.Parameter] = []

    def __call__(self, step: int, params: Sequence[nn.Parameter]) -> None:
        """Copy `params` if `step` is one of the chosen steps."""
        if step in self.steps:
            self._params = list(params)
            self.saved[step] = [p.detach().clone() for p in params]

    def restore(self, step: int) -> None:
        """Put the copy taken at `step` back into the trained tensors."""
        if step not in self.saved:
            raise KeyError(f"no snapshot at step {step} (taken: {sorted(self.saved)})")
        with torch.no_grad():
            for p, saved in zip(self._params, self.saved[step], strict=True):
                p.copy_(saved)


def matched_point(rows: Sequence[dict], in_set_max: float, out_of_set_max: float) -> int | None:
    """Index of the row that erases (in-set <= in_set_max and out-of-set <= out_of_set_max) with the best
    retention (neighbours + all retained concepts; the shorter run on a tie), or None when no row erases."""
    erased = [i for i, r in enumerate(rows) if r["in_set"] <= in_set_max and r["out_of_set"] <= out_of_set_max]
    if not erased:
        return None
    return max(erased, key=lambda i: (rows[i]["retain_neighbors"] + rows[i]["retain_all"], -rows[i]["steps"]))


def seconds_at(history: Sequence[dict], step: int) -> float | None:
    """Training seconds up to `step`, from the last history row at or before it."""
    logged = [h["seconds"] for h in history if h["step"] <= step]
    return round(float(logged[-1]), 1) if logged else None


def tradeoff(
    bundle: ModelBundle, method: str, cfg: MethodConfig, pairs: Pairs, samples: dict[str, np.ndarray],
    scales: Sequence[float], validate: Scorer, evaluate: Scorer, in_set_max: float, out_of_set_max: float, *,
    retain: tuple[list[str], np.ndarray] | None = None, progress: bool = True,
) -> dict:
    """Train `method` once to the longest length, score every snapshot with `validate` (the curve), then score
    the matched point with `evaluate`; `bundle` is left as it was.

    Returns {"points": one row per scale (scale, steps, seconds, the validation scores), "matched": the matched
    point's evaluation row or None, "matched_scale": its scale or None}.
    """
    at = snapshot_steps(cfg, scales)
    snaps = Snapshots(at)
    start = time.perf_counter()
    try:
        erased, history = run_method(bundle, method, pairs, samples, dataclasses.replace(cfg, steps=at[-1]),
                                     retain=retain, progress=progress, on_step=snaps)
        total = time.perf_counter() - start
        points = []
        for scale, step in zip(scales, at):
            snaps.restore(step)
            points.append({"scale": scale, "steps": step, "seconds": seconds_at(history, step)} | validate(erased))
        pick = matched_point(points, in_set_max, out_of_set_max)
        matched = None
        if pick is not None:
            snaps.restore(at[pick])
            matched = {"scale": scales[pick], "steps": at[pick], "seconds": points[pick]["seconds"]} | evaluate(erased)
    finally:
        remove_lora(bundle.unet)  # a LoRA method trained inside bundle.unet; AdvUnlearn's encoder is a copy
    return {"points": points, "matched": matched, "matched_scale": None if pick is None else scales[pick],
            "train_seconds": round(total, 1)}
