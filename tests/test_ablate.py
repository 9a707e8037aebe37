"""Anchor arms: the same targets mapped onto another anchor, whose images the base model draws like the anchors
stage draws the family's."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from cdc.anchors import erase_pairs
from cdc.sampler import sample
from cdc.stages.ablate import reanchored


def _samples(n_pairs: int, per_pair: int = 2) -> dict[str, np.ndarray]:
    index = np.repeat(np.arange(n_pairs), per_pair)
    images = np.zeros((len(index), 32, 32, 3), dtype=np.uint8)
    return {"anchor_images": images, "anchor_index": index, "target_images": images + 1, "target_index": index}


def test_reanchored_swaps_the_anchor_side_and_draws_it(tiny_world_bundle, world, smoke_params, one_thread):
    sampler = dataclasses.replace(smoke_params.sample, steps=2)
    pairs = erase_pairs(world, "church", [])
    pairs = dataclasses.replace(pairs, target_prompts=pairs.target_prompts[:4], anchor_prompts=pairs.anchor_prompts[:4])
    samples = _samples(4)
    far, drawn = reanchored(tiny_world_bundle, world, pairs, samples, "rocket", sampler, seed=7, progress=False)
    assert far.target_prompts == pairs.target_prompts
    assert far.anchor_prompts == [a.replace("a house", "a rocket") for a in pairs.anchor_prompts]
    assert np.array_equal(drawn["target_images"], samples["target_images"])  # the target side is kept
    assert np.array_equal(drawn["anchor_index"], samples["anchor_index"])
    want = sample(tiny_world_bundle, [far.anchor_prompts[i] for i in samples["anchor_index"]],
                  list(range(7, 7 + len(samples["anchor_index"]))), sampler, progress=False)
    assert np.array_equal(drawn["anchor_images"], want)  # the anchors stage's seeds, for the new prompts
    empty, _ = reanchored(tiny_world_bundle, world, pairs, samples, "", sampler, seed=7, progress=False)
    assert empty.anchor_prompts == [""] * 4


def test_reanchored_refuses_what_cannot_be_an_anchor(tiny_world_bundle, world, smoke_params):
    pairs, samples = erase_pairs(world, "church", []), _samples(1)
    with pytest.raises(KeyError, match="unknown anchor concept 'pizza'"):
        reanchored(tiny_world_bundle, world, pairs, samples, "pizza", smoke_params.sample, seed=0)
    with pytest.raises(ValueError, match="'church' is a member of 'church'"):
        reanchored(tiny_world_bundle, world, pairs, samples, "church", smoke_params.sample, seed=0)
    style = erase_pairs(world, "openmoji", ["rocket"])
    with pytest.raises(ValueError, match="is a style family"):
        reanchored(tiny_world_bundle, world, style, samples, "rocket", smoke_params.sample, seed=0)
