"""The emoji world: concept choice, renders, captions and the out-of-set guard."""

from pathlib import Path

import numpy as np
import pytest

from cdc.stages.params import read_yaml
from cdc.world.build import build_world, check_families, required_keys
from cdc.world.captions import all_captions, canonical_prompt, normalise, sample_captions, with_article
from cdc.world.data import load_renders, load_world, save_world
from cdc.world.render import render
from cdc.world.sources import STYLES, catalogue, glyph

REPO = Path(__file__).resolve().parents[1]
FAMILIES = read_yaml(REPO / "data/world/families.yaml")
OUT_OF_SET = read_yaml(REPO / "data/prompts/out_of_set.yaml")
TEMPLATES = ["{a}", "{p}", "an emoji of {a}"]


@pytest.fixture(scope="module")
def small_world():
    """Only the families and their neighbours (n_concepts=1 adds nothing else)."""
    return build_world(FAMILIES, OUT_OF_SET, size=16, n_concepts=1, seed=0, templates=TEMPLATES, progress=False)


def test_catalogue_has_enough_concepts_in_both_styles():
    entries = catalogue()
    assert len(entries) >= 300
    keys = {e.key for e in entries}
    assert {"church", "articulated lorry", "parachute", "fish", "water pistol", "axe"} <= keys


def test_renders_are_white_squares_with_the_glyph_inside():
    church = next(e for e in catalogue() if e.key == "church")
    for style in STYLES:
        img = render(glyph(church, style), 32)
        assert img.shape == (32, 32, 3) and img.dtype == np.uint8
        assert (img[0] == 255).all() or img[0].mean() > 240  # margin stays white
        assert img.min() < 128  # something dark was drawn
    assert not np.array_equal(render(glyph(church, "twemoji"), 32), render(glyph(church, "openmoji"), 32))


def test_build_contains_every_family_in_both_styles(small_world):
    w = small_world
    assert set(required_keys(w.targets)) <= set(w.keys)
    assert w.images.shape == (2 * len(w.concepts), 16, 16, 3)
    for c in range(len(w.concepts)):
        assert sorted(w.style[w.concept == c].tolist()) == [0, 1]
    weapon = [c for c in w.concepts if c["family"] == "weapon"]
    assert len(weapon) >= 7 and all("weapon" in c["phrases"] for c in weapon)


def test_build_is_deterministic_and_round_trips(small_world, tmp_path):
    again = build_world(FAMILIES, OUT_OF_SET, size=16, n_concepts=1, seed=0, templates=TEMPLATES, progress=False)
    assert np.array_equal(again.images, small_world.images)
    save_world(small_world, tmp_path / "w")
    loaded = load_world(tmp_path / "w")
    assert np.array_equal(loaded.images, small_world.images) and loaded.concepts == small_world.concepts
    save_world(again, tmp_path / "v")  # byte-identical, so git and DVC see no change on a rebuild
    assert (tmp_path / "w" / "images.npz").read_bytes() == (tmp_path / "v" / "images.npz").read_bytes()


def test_renders_carry_their_labels_without_the_captions(small_world, tmp_path):
    save_world(small_world, tmp_path / "w")
    before = (tmp_path / "w" / "images.npz").read_bytes()
    renders = load_renders(tmp_path / "w")
    assert renders.keys == small_world.keys and renders.styles == small_world.styles
    assert np.array_equal(renders.concept, small_world.concept) and np.array_equal(renders.images, small_world.images)
    # A caption change rewrites concepts.json only: the judge, which depends on images.npz, is not retrained.
    small_world.concepts[0]["phrases"].append("a brand new phrase")
    try:
        save_world(small_world, tmp_path / "v")
    finally:
        small_world.concepts[0]["phrases"].pop()
    assert (tmp_path / "v" / "images.npz").read_bytes() == before


def test_out_of_set_prompts_never_in_training(small_world):
    w = small_world
    captions = [c for con in w.concepts for s in w.styles for c in all_captions(con["phrases"], s, TEMPLATES)]
    training = {normalise(c) for c in captions}
    for prompts in w.out_of_set.values():
        assert not {normalise(p) for p in prompts} & training


def test_leaked_out_of_set_prompt_is_rejected():
    leaky = {**OUT_OF_SET, "church": OUT_OF_SET["church"] + ["a church"]}
    with pytest.raises(ValueError, match="appear in the training captions"):
        build_world(FAMILIES, leaky, size=16, n_concepts=1, seed=0, templates=TEMPLATES, progress=False)


def test_bad_families_are_rejected():
    bad = {"church": {**FAMILIES["targets"]["church"], "anchor": "church"}}
    with pytest.raises(ValueError, match="anchor"):
        check_families(bad, list(STYLES))
    with pytest.raises(ValueError, match="not emoji"):
        targets = {"x": {**FAMILIES["targets"]["church"], "members": ["no such emoji"]}}
        build_world({"targets": targets}, {"x": ["a thing"]}, size=16, n_concepts=1, seed=0, templates=TEMPLATES,
                    progress=False)


def test_missing_world_folder_names_the_stage(tmp_path):
    with pytest.raises(FileNotFoundError, match="dvc repro world"):
        load_world(tmp_path / "nowhere")


def test_captions():
    assert with_article("axe") == "an axe" and with_article("a weapon") == "a weapon"
    assert canonical_prompt("church", "openmoji") == "a church, openmoji style"
    caps = sample_captions(["church", "steeple"], "twemoji", TEMPLATES, 5, seed=1)
    assert caps[0] == "a church, twemoji style" and len(set(caps)) == 5
    assert caps == sample_captions(["church", "steeple"], "twemoji", TEMPLATES, 5, seed=1)


def test_captions_teach_every_phrase_before_repeating_one():
    phrases = ["fish"] + [f"fish kind {i}" for i in range(19)]
    for seed in range(5):
        caps = sample_captions(phrases, "openmoji", TEMPLATES, 24, seed=seed)
        assert len(set(caps)) == 24 and caps[0] == "a fish, openmoji style"
        assert all(set(all_captions([p], "openmoji", TEMPLATES)) & set(caps) for p in phrases[1:])
    short = sample_captions(["axe"], "twemoji", ["{a}"], 50, seed=0)  # fewer captions than k: all of them
    assert sorted(short) == sorted(all_captions(["axe"], "twemoji", ["{a}"]))
