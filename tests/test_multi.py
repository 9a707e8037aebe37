"""Many concepts at once: nested erased sets with anchors that are never erased, their pairs and samples, and
one run per count that leaves the bundle as it was."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from conftest import REPO
from helpers import fresh

from cdc.anchors import pair_samples
from cdc.judge import JudgeNet
from cdc.lora import tuner_layers
from cdc.stages.multi import balanced, concept_pairs, erase_many, erase_order, first_pairs, multi_row
from cdc.stages.params import read_yaml
from cdc.world.build import build_world

FAMILIES = ["church", "articulated-lorry", "fish"]


@pytest.fixture(scope="module")
def big_world():
    """The committed families and 8 other concepts, at 32 px."""
    fam = read_yaml(REPO / "data/world/families.yaml")
    oos = read_yaml(REPO / "data/prompts/out_of_set.yaml")
    return build_world(fam, oos, size=32, n_concepts=105, seed=0, templates=["{a}", "{p}"], progress=False)


def test_erase_order_is_nested_and_never_erases_an_anchor(big_world):
    keep = [c["key"] for c in big_world.concepts][-2:]  # stand-ins for the evaluation's retained concepts
    order = erase_order(big_world, FAMILIES, 6, keep, seed=3)
    assert order[:3] == [("church", "house"), ("articulated lorry", "delivery truck"), ("fish", "tropical fish")]
    assert erase_order(big_world, FAMILIES, 4, keep, seed=3) == order[:4]
    assert erase_order(big_world, FAMILIES, 2, keep, seed=3) == order[:2]
    erased, anchors = {k for k, _ in order}, {a for _, a in order}
    assert len(erased) == 6 and not erased & anchors and not erased & set(keep)
    family_keys = {k for f in big_world.targets.values() for k in [*f["members"], *f["neighbours"], f["anchor"]]}
    assert not {k for k, _ in order[3:]} & family_keys
    category = {c["key"]: c["category"] for c in big_world.concepts}
    free = [c["key"] for c in big_world.concepts if c["key"] not in erased | family_keys | set(keep)]
    for key, anchor in order[3:]:  # an anchor of the same category wherever the free concepts have one
        if any(category[k] == category[key] for k in free):
            assert category[anchor] == category[key]
    assert erase_order(big_world, FAMILIES, 6, keep, seed=4) != order  # the seed picks the others
    with pytest.raises(ValueError, match="'weapon' is not a one-member object family"):
        erase_order(big_world, ["weapon"], 1, [], seed=0)
    with pytest.raises(ValueError, match="'openmoji' is not a one-member object family"):
        erase_order(big_world, ["openmoji"], 1, [], seed=0)
    with pytest.raises(KeyError, match="unknown concept family 'castle'"):
        erase_order(big_world, ["castle"], 1, [], seed=0)
    with pytest.raises(ValueError, match="too few to erase 40"):
        erase_order(big_world, FAMILIES, 40, keep, seed=0)


def test_concept_pairs_put_every_phrase_in_every_style_onto_its_anchor(big_world):
    order = erase_order(big_world, FAMILIES, 5, [], seed=0)
    pairs, owner = concept_pairs(big_world, order)
    small, _ = concept_pairs(big_world, order[:2])
    assert pairs.target_prompts[: len(small.target_prompts)] == small.target_prompts  # nested sets nest their pairs
    assert owner.tolist() == sorted(owner.tolist()) and set(owner.tolist()) == set(range(5))
    for target, anchor in zip(pairs.target_prompts, pairs.anchor_prompts):
        assert target != anchor and target.split(", ")[1] == anchor.split(", ")[1]  # the same style
    church = [t for t, a in zip(pairs.target_prompts, pairs.anchor_prompts) if a == "a house, twemoji style"]
    phrases = big_world.concepts[big_world.index("church")]["phrases"]
    assert len(church) == len(phrases) and "a cathedral, twemoji style" in church


@pytest.mark.slow
def test_pair_samples_and_first_pairs_keep_images_with_their_pairs(tiny_world_bundle, big_world, smoke_params,
                                                                  one_thread):
    pairs, _ = concept_pairs(big_world, erase_order(big_world, FAMILIES, 2, [], seed=0))
    sampler = dataclasses.replace(smoke_params.sample, steps=2)
    samples = pair_samples(tiny_world_bundle, pairs, 2, sampler, seed=0, progress=False)
    n = len(pairs.target_prompts)
    assert samples["target_images"].shape[0] == samples["anchor_images"].shape[0] == 2 * n
    assert samples["target_index"].tolist() == np.repeat(np.arange(n), 2).tolist()
    head, mine = first_pairs(pairs, samples, 3)
    assert head.target_prompts == pairs.target_prompts[:3] and mine["anchor_index"].tolist() == [0, 0, 1, 1, 2, 2]
    assert np.array_equal(mine["target_images"], samples["target_images"][:6])


def test_erase_many_trains_one_run_per_count_and_scores_its_concepts(tiny_world_bundle, big_world, smoke_params,
                                                                    one_thread):
    bundle = fresh(tiny_world_bundle)
    order = erase_order(big_world, FAMILIES, 4, [], seed=0)
    n_pairs = len(concept_pairs(big_world, order)[0].target_prompts)
    images = np.random.default_rng(0).integers(0, 256, (n_pairs, 32, 32, 3), dtype=np.uint8)
    index = np.arange(n_pairs)
    samples = {"anchor_images": images, "anchor_index": index, "target_images": images, "target_index": index}
    cfg = dataclasses.replace(smoke_params.erase.esd, steps=1, batch_size=2)
    seen = []

    def score(model, erased):
        seen.append((erased, bool(tuner_layers(model.unet))))
        return {"erased": 0.0}

    rows = erase_many(bundle, "esd", cfg, big_world, order, [1, 4], samples, score, progress=False)
    assert [r["count"] for r in rows] == [1, 4] and rows[0]["pairs"] < rows[1]["pairs"] == n_pairs
    assert seen == [(["church"], True), ([k for k, _ in order], True)]  # scored with the erasure in place
    assert not tuner_layers(bundle.unet)


def test_multi_row_rates_each_erased_concept(tiny_world_bundle, big_world, smoke_params, one_thread):
    judge = JudgeNet(len(big_world.concepts), len(big_world.styles), width=8).eval()
    sampler = dataclasses.replace(smoke_params.sample, steps=2)
    row = multi_row(tiny_world_bundle, judge, big_world, ["church", "fish"], ["house"], smoke_params.evaluate, sampler)
    per_style = smoke_params.evaluate.images_per_prompt * len(big_world.styles)
    assert set(row["per_concept"]) == {"church", "fish"} and row["erased_n"] == 2 * per_style
    assert row["erased"] == pytest.approx(np.mean(list(row["per_concept"].values())))
    assert 0 <= row["retain_all"] <= 1 and row["retain_all_n"] == smoke_params.evaluate.retain_images * 2


def test_balanced_gives_every_concept_as_many_images():
    owner = np.array([0, 0, 0, 1])  # concept 0 has three pairs, concept 1 one
    index = np.repeat(np.arange(4), 2)  # two images per pair
    images = np.arange(8)[:, None, None, None] * np.ones((8, 2, 2, 3), dtype=np.uint8)
    samples = {"anchor_images": images, "anchor_index": index, "target_images": images + 100, "target_index": index}
    out = balanced(samples, owner)
    for side in ("anchor", "target"):
        concept = owner[out[f"{side}_index"]]
        assert (concept == 0).sum() == (concept == 1).sum() == 6
        kept = out[f"{side}_images"][:, 0, 0, 0] - (100 if side == "target" else 0)
        assert np.array_equal(index[kept], out[f"{side}_index"])  # each image stays with its pair
    assert set(out["anchor_images"][:, 0, 0, 0].tolist()) == set(range(8))  # nothing dropped
