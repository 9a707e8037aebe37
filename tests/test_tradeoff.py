"""The trade-off sweep: one snapshotted run equals one run per length, and the matched point is chosen right."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from cdc.anchors import erase_pairs
from cdc.lora import lora_parameters, remove_lora
from cdc.methods.train import encode
from cdc.stages.erase import run_method
from cdc.stages.tradeoff import Snapshots, matched_point, snapshot_steps, tradeoff


def _samples(n: int = 4) -> dict[str, np.ndarray]:
    images = np.random.default_rng(0).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    index = np.arange(n) % 2
    return {"anchor_images": images, "anchor_index": index, "target_images": images, "target_index": index}


def test_snapshot_steps_scale_the_updates_after_warmup(smoke_params):
    doco = dataclasses.replace(smoke_params.erase.doco, steps=400, warmup_steps=100)
    assert snapshot_steps(doco, [0.25, 0.5, 1.0, 1.5]) == [175, 250, 400, 550]
    esd = dataclasses.replace(smoke_params.erase.esd, steps=300)
    assert snapshot_steps(esd, [0.5, 1.0]) == [150, 300]
    assert snapshot_steps(dataclasses.replace(esd, steps=2), [0.01]) == [1]  # at least one update
    with pytest.raises(ValueError, match="distinct and increasing"):
        snapshot_steps(dataclasses.replace(esd, steps=2), [0.1, 0.2])  # both round to one update


@pytest.mark.parametrize("method", ["esd", "doco"])
def test_a_snapshot_is_the_shorter_run(tiny_world_bundle, world, smoke_params, method, one_thread):
    """The state at step s of a long run is bit for bit the state a run of s steps ends in: no knob of the loop
    depends on its length, so one run gives every point of a curve."""
    pairs, samples = erase_pairs(world, "church", []), _samples()
    cfg = dataclasses.replace(getattr(smoke_params.erase, method), steps=4, batch_size=2)
    if method == "doco":
        cfg = dataclasses.replace(cfg, warmup_steps=1)
    snaps = Snapshots([2, 4])
    try:
        run_method(tiny_world_bundle, method, pairs, samples, cfg, progress=False, on_step=snaps)
        long = [p.detach().clone() for p in lora_parameters(tiny_world_bundle.unet)]
        snaps.restore(2)
        restored = [p.detach().clone() for p in lora_parameters(tiny_world_bundle.unet)]
    finally:
        remove_lora(tiny_world_bundle.unet)
    try:
        run_method(tiny_world_bundle, method, pairs, samples, dataclasses.replace(cfg, steps=2), progress=False)
        short = [p.detach().clone() for p in lora_parameters(tiny_world_bundle.unet)]
    finally:
        remove_lora(tiny_world_bundle.unet)
    assert all(torch.equal(a, b) for a, b in zip(restored, short, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(long, short, strict=True))  # the run went on after step 2
    with pytest.raises(KeyError, match="no snapshot at step 3"):
        snaps.restore(3)


@pytest.mark.slow
def test_an_advunlearn_snapshot_is_the_shorter_run(tiny_world_bundle, world, smoke_params, one_thread):
    """The same for AdvUnlearn, whose trained tensors are a copy of the text encoder (the bundle's own is kept):
    restored to step 2, the long run's encoder encodes as the 2-step run's does."""
    pairs, samples = erase_pairs(world, "church", []), _samples()
    retain = (["a dog", "a cat"], samples["anchor_images"][:2])
    cfg = dataclasses.replace(smoke_params.erase.advunlearn, steps=4, warmup_steps=1, batch_size=2)
    prompts = pairs.target_prompts[:3]

    def contexts(bundle):
        return encode(bundle.text, prompts, bundle.device, bundle.dtype)

    before = contexts(tiny_world_bundle)
    snaps = Snapshots([2, 4])
    erased, _ = run_method(tiny_world_bundle, "advunlearn", pairs, samples, cfg, retain=retain, progress=False,
                           on_step=snaps)
    long = contexts(erased)
    snaps.restore(2)
    restored = contexts(erased)
    short, _ = run_method(tiny_world_bundle, "advunlearn", pairs, samples, dataclasses.replace(cfg, steps=2),
                          retain=retain, progress=False)
    assert torch.equal(restored, contexts(short)) and not torch.equal(long, restored)
    assert torch.equal(contexts(tiny_world_bundle), before)  # the bundle's own encoder is untouched


def _row(steps: int, in_set: float, out: float, nbr: float, every: float) -> dict:
    return {"steps": steps, "in_set": in_set, "out_of_set": out, "retain_neighbors": nbr, "retain_all": every}


def test_matched_point_is_the_best_retention_among_points_that_erase():
    rows = [_row(10, 0.5, 0.6, 1.0, 1.0),  # keeps everything, erases nothing
            _row(20, 0.04, 0.2, 0.9, 0.9),  # out-of-set above the target
            _row(30, 0.0, 0.1, 0.8, 0.9),  # erases
            _row(40, 0.0, 0.0, 0.5, 0.9)]  # erases, keeps less
    assert matched_point(rows, 0.05, 0.15) == 2
    assert matched_point(rows, 0.05, 0.25) == 1
    assert matched_point(rows[:2], 0.05, 0.15) is None
    tie = [_row(30, 0.0, 0.0, 0.8, 0.9), _row(40, 0.0, 0.0, 0.8, 0.9)]
    assert matched_point(tie, 0.05, 0.15) == 0  # the shorter run on a tie


@pytest.mark.slow
def test_tradeoff_scores_each_snapshot_and_leaves_the_bundle_as_it_was(tiny_world_bundle, world, smoke_params,
                                                                       one_thread):
    """Each point is scored on the model at its own length (here the scorer reads the LoRA's norm, which grows
    with training); the matched point is scored again by the evaluation scorer; no LoRA is left behind."""
    pairs, samples = erase_pairs(world, "church", []), _samples()
    cfg = dataclasses.replace(smoke_params.erase.esd, steps=4, batch_size=2)

    def norm(model) -> float:
        return float(sum(p.detach().pow(2).sum() for p in lora_parameters(model.unet)))

    def validate(model) -> dict:
        size = norm(model)  # a stand-in for erasure: the 2nd and 3rd points "erase"
        return {"norm": size, "in_set": 1.0 if size < sizes[1] else 0.0, "out_of_set": 0.0,
                "retain_neighbors": 1.0, "retain_all": 1.0}

    sizes = []
    snaps = Snapshots([1, 2, 4])
    try:
        run_method(tiny_world_bundle, "esd", pairs, samples, cfg, progress=False, on_step=snaps)
        for step in (1, 2, 4):
            snaps.restore(step)
            sizes.append(norm(tiny_world_bundle))
    finally:
        remove_lora(tiny_world_bundle.unet)
    assert sizes[0] < sizes[1] < sizes[2]
    out = tradeoff(tiny_world_bundle, "esd", cfg, pairs, samples, [0.25, 0.5, 1.0], validate,
                   lambda m: {"split": "evaluation", "norm": norm(m)}, 0.05, 0.15, progress=False)
    assert [p["steps"] for p in out["points"]] == [1, 2, 4]
    assert [p["norm"] for p in out["points"]] == pytest.approx(sizes, rel=1e-6)
    assert out["matched_scale"] == 0.5 and out["matched"]["steps"] == 2  # the shorter of two equal points
    assert out["matched"]["norm"] == pytest.approx(sizes[1], rel=1e-6)
    assert not any(".lora_" in n for n, _ in tiny_world_bundle.unet.named_parameters())
    never = tradeoff(tiny_world_bundle, "esd", cfg, pairs, samples, [1.0],
                     lambda m: validate(m) | {"in_set": 1.0}, validate, 0.05, 0.15, progress=False)
    assert never["matched"] is None and never["matched_scale"] is None
