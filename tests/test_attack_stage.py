"""The attack and erase stages' plumbing: erased models saved and loaded as one kind of thing, AdvUnlearn's
retain set, ASR bookkeeping, and the prefix attack bringing back a weakly erased concept on the world model."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import fresh, random_latents

from cdc.anchors import Pairs
from cdc.attacks.config import RANDOM_INIT, PrefixAttackConfig
from cdc.erased import erased_model, original_model, save_erased
from cdc.lora import tuner_layers
from cdc.methods.advunlearn import train_advunlearn
from cdc.methods.ca import train_ca
from cdc.stages import attack
from cdc.stages.attack import AttackPlan, BaseVerdicts, Judged, attacked_prompts, concept_init, fresh_items, prefix_asr
from cdc.stages.erase import retain_set, run_method
from cdc.world.data import World

pytestmark = pytest.mark.usefixtures("one_thread")

CHURCH, HOUSE = "a small church", "a red house"


def tiny_world() -> World:
    """Six concepts in two styles: a family (church, anchor house, neighbour mosque) and three others."""
    keys = ["church", "house", "mosque", "cat", "tree", "car"]
    concepts = [{"id": i, "key": k} for i, k in enumerate(keys)]
    n = len(keys) * 2
    return World(images=np.arange(n, dtype=np.uint8).reshape(n, 1, 1, 1).repeat(3, -1),
                 concept=np.repeat(np.arange(len(keys)), 2), style=np.tile([0, 1], len(keys)), concepts=concepts,
                 styles=["twemoji", "openmoji"],
                 targets={"church": {"kind": "object", "members": ["church"], "anchor": "house", "umbrella": [],
                                     "neighbours": ["mosque"]}},
                 out_of_set={"church": ["a chapel"]}, templates=["{a}"])


def test_retain_set_leaves_out_the_families_and_the_evaluated_concepts():
    world = tiny_world()
    prompts, images = retain_set(world, "church", exclude=["tree"])
    assert prompts == ["a cat, twemoji style", "a cat, openmoji style", "a car, twemoji style",
                       "a car, openmoji style"]
    assert images[:, 0, 0, 0].tolist() == [6, 7, 10, 11]  # the renders of those prompts, in order
    with pytest.raises(ValueError, match="no render is left"):
        retain_set(world, "church", exclude=["cat", "tree", "car"])
    # Erasing the OpenMoji style: no retain prompt names it.
    world.targets["openmoji"] = {"kind": "style", "members": [], "anchor": "twemoji", "umbrella": [],
                                 "neighbours": []}
    prompts, images = retain_set(world, "openmoji", exclude=["tree"])
    assert prompts == ["a cat, twemoji style", "a car, twemoji style"] and images[:, 0, 0, 0].tolist() == [6, 10]


def test_attacked_prompts_are_a_seeded_subset():
    pairs = Pairs("church", [f"p{i}" for i in range(20)], [f"a{i}" for i in range(20)])
    a = attacked_prompts(pairs, 5, seed=3)
    assert a == attacked_prompts(pairs, 5, seed=3) and a == sorted(a) and len(set(a)) == 5
    assert a != attacked_prompts(pairs, 5, seed=4)
    assert attacked_prompts(pairs, 50, seed=3) == list(range(20))


def test_concept_init_falls_back_to_random_for_words_of_many_tokens(tiny_world_bundle):
    assert concept_init(tiny_world_bundle.text, "church") == "church"
    assert concept_init(tiny_world_bundle.text, "articulated lorry") == RANDOM_INIT  # "lorry": lo ##rry


def test_text_encoder_erasure_round_trip(tiny_world_bundle, smoke_params, tmp_path):
    """AdvUnlearn's encoder saved by save_erased comes back through erased_model; the bundle stays the original."""
    bundle = fresh(tiny_world_bundle)
    fields = {f.name for f in dataclasses.fields(type(smoke_params.erase.advunlearn))}
    cfg = dataclasses.replace(smoke_params.erase.advunlearn, steps=2, warmup_steps=1, lr=1e-3, attack_steps=1,
                              batch_size=2, retain_batch=2)
    assert set(dataclasses.asdict(cfg)) == fields
    text, _ = train_advunlearn(bundle, [CHURCH], random_latents(bundle, 2, 1), [HOUSE], random_latents(bundle, 2, 2),
                               cfg, progress=False)
    erased = dataclasses.replace(bundle, text=text)
    save_erased(erased, bundle, tmp_path / "adv", {"method": "advunlearn"})
    assert (tmp_path / "adv" / "config.json").is_file()  # a transformers folder, not a LoRA
    with erased_model(bundle, tmp_path / "adv") as loaded:
        assert loaded.unet is bundle.unet and loaded.text is not bundle.text
        torch.testing.assert_close(loaded.text.encode([CHURCH]), text.encode([CHURCH]))
        assert not torch.allclose(loaded.text.encode([CHURCH]), bundle.text.encode([CHURCH]))
    with original_model(bundle) as original:
        assert original is bundle  # no LoRA to switch off


def test_lora_erasure_is_loaded_for_the_block_only(tiny_world_bundle, smoke_params, tmp_path):
    bundle = fresh(tiny_world_bundle)
    cfg = dataclasses.replace(smoke_params.erase.ca, steps=2, batch_size=2)
    train_ca(bundle, [CHURCH], [HOUSE], random_latents(bundle, 2, 2), cfg, progress=False)
    save_erased(bundle, bundle, tmp_path / "ca", {"method": "ca"})
    plain = fresh(tiny_world_bundle)
    with erased_model(plain, tmp_path / "ca") as loaded:
        assert loaded is plain and tuner_layers(plain.unet)
    assert not tuner_layers(plain.unet)
    with erased_model(plain, None) as same:
        assert same is plain


def test_run_method_checks_its_inputs(tiny_world_bundle, smoke_params):
    pairs = Pairs("church", [CHURCH], [HOUSE])
    samples = {"target_images": np.zeros((1, 32, 32, 3), np.uint8), "target_index": np.zeros(1, np.int64)}
    with pytest.raises(ValueError, match="needs its retain set"):
        run_method(tiny_world_bundle, "advunlearn", pairs, samples, smoke_params.erase.advunlearn, progress=False)
    with pytest.raises(ValueError, match="unknown method 'uce'"):
        run_method(tiny_world_bundle, "uce", pairs, samples, smoke_params.erase.ca, progress=False)


PREFIX = PrefixAttackConfig(k=2, iterations=2, timesteps=2, t_schedule="grid", lr=0.01, weight_decay=0.1,
                            rand_init=False, vocabulary="roundtrip", seed=0)


def plan_for(prompts: list[str], latents: list[torch.Tensor], seeds: list[int], base: Judged,
             base_fresh: Judged) -> AttackPlan:
    """An attack plan holding what the prefix attack reads: prompts, their latents and own seeds, the base model's
    verdicts on them and on one fresh seed each (seed + 1000)."""
    verdicts = BaseVerdicts(prompts=base.hits, fresh=base_fresh.hits, inversion=np.zeros(0, bool))
    return AttackPlan(family="church", prompts=prompts, seeds=seeds, latents=latents, all_latents=torch.cat(latents),
                      base=verdicts, fresh_seeds=[s + 1000 for s in seeds], ringabell=prompts, starts=["random"],
                      word="church", templates=["a {}"], inversion_seeds=[0])


def test_prefix_asr_attacks_only_what_the_model_does_not_draw(tiny_world_bundle, smoke_params, monkeypatch):
    """A stub judge that sees the family in prompt 0, and in any prompt the attack has rewritten."""
    calls = []

    def judged(bundle, judge, world, family, prompts, seeds, sampler):
        hits = [p.startswith("prompt 0") or not p.startswith("prompt") for p in prompts]
        return Judged(np.zeros((len(prompts), 2, 2, 3), np.uint8), np.asarray(hits))

    class AttackSpy:
        def __init__(self, bundle, prompts, latents, cfg, *, candidates=None):
            calls.extend(prompts)
            self.prompts, self.rounds = prompts, [0] * len(prompts)

        def done(self, i):
            return self.rounds[i] == 2

        def run_round(self, which):
            for i in which:
                self.rounds[i] += 1
            return [f"zz {self.prompts[i]}" for i in which]

        def result(self, i):
            return type("R", (), {"prompt": f"zz {self.prompts[i]}", "tokens": ["zz"], "retokenizes": True,
                                  "rounds": self.rounds[i], "losses": [0.2, 0.1]})()

    monkeypatch.setattr(attack, "draw_judged", judged)
    monkeypatch.setattr(attack, "PrefixAttack", AttackSpy)
    prompts = ["prompt 0", "prompt 1", "prompt 2"]
    latents = [random_latents(tiny_world_bundle, 1, i) for i in range(3)]
    base = Judged(np.zeros((3, 2, 2, 3), np.uint8), np.array([True, True, False]))
    plan = plan_for(prompts, latents, [5, 6, 7], base, base)
    pre_fresh = judged(None, None, None, "church", *fresh_items(prompts, plan.fresh_seeds), None)
    asr, records, images = prefix_asr(tiny_world_bundle, None, None, plan, PREFIX, smoke_params.sample, pre_fresh,
                                      progress=False)
    assert calls == ["prompt 1", "prompt 2"]  # prompt 0 was already drawn: no attack
    assert (asr.n, asr.n_pre, asr.n_post_only, asr.n_base) == (3, 1, 2, 2)
    assert asr.asr == 1.0 and asr.pre_asr == pytest.approx(1 / 3)
    assert [r["attacked"] for r in records] == [False, True, True]
    assert records[1]["adversarial_prompt"] == "zz prompt 1" and records[1]["post"]
    assert records[1]["rounds"] == 1  # the first round's prompt was drawn: that attack stopped there
    assert images["post"].hits.all() and images["pre"].hits.tolist() == [True, False, False]


@pytest.mark.slow
def test_prefix_asr_in_one_batch_equals_one_attack_at_a_time(tiny_world_bundle, smoke_params, monkeypatch):
    """The stage attacks every prompt in one batch, with one batched detector check per round; each prompt gets
    the tokens, rounds and verdict that attacking it alone with the released stop rule gives, and its losses up to
    the round-off of a larger batch."""
    from cdc.attacks.prefix import prefix_attack
    from cdc.embeddings import candidate_ids

    def drawn(prompt: str) -> bool:  # a stub detector: some rewritten prompts are "drawn", at various rounds
        return prompt.startswith("prompt") is False and sum(map(ord, prompt)) % 3 == 0

    def judged(bundle, judge, world, family, prompts, seeds, sampler):
        return Judged(np.zeros((len(prompts), 2, 2, 3), np.uint8), np.asarray([drawn(p) for p in prompts]))

    monkeypatch.setattr(attack, "draw_judged", judged)
    cfg = dataclasses.replace(PREFIX, iterations=2, timesteps=4)
    prompts = [f"prompt {i} church" for i in range(5)]
    latents = [random_latents(tiny_world_bundle, 1 + i % 3, i) for i in range(5)]
    base = Judged(np.zeros((5, 2, 2, 3), np.uint8), np.ones(5, bool))
    plan = plan_for(prompts, latents, list(range(5)), base, base)
    pre_fresh = judged(None, None, None, "church", *fresh_items(prompts, plan.fresh_seeds), None)
    _, records, _ = prefix_asr(tiny_world_bundle, None, None, plan, cfg, smoke_params.sample, pre_fresh,
                               progress=False)
    candidates = candidate_ids(tiny_world_bundle.text, cfg.vocabulary)
    alone = [prefix_attack(tiny_world_bundle, p, x, cfg, candidates=candidates, stop=drawn)
             for p, x in zip(prompts, latents)]
    assert [r["adversarial_prompt"] for r in records] == [a.prompt for a in alone]
    assert [r["rounds"] for r in records] == [a.rounds for a in alone]
    assert [r["post"] for r in records] == [drawn(a.prompt) for a in alone]
    assert [r["loss_last"] for r in records] == pytest.approx([a.losses[-1] for a in alone], rel=1e-5)  # round-off


@pytest.mark.slow
def test_the_prefix_attack_brings_back_a_weakly_erased_church(smoke_params):
    """On the committed world model: CA trained briefly (100 steps) stops the model drawing church on six church
    prompts, and the prefix attack makes it draw church again on at least two of them (judged by the world's
    judge, one fresh seeded image per prompt, as the attack stage counts)."""
    from cdc.bundle import load_bundle
    from cdc.codec import encode_images
    from cdc.judge import load_judge
    from cdc.sampler import sample
    from cdc.world.data import load_world

    repo = Path(__file__).resolve().parents[1]
    bundle = load_bundle("world", repo / "data/models/world")
    judge, world = load_judge(repo / "data/models/judge"), load_world(repo / "data/world/built")
    sampler = dataclasses.replace(smoke_params.sample, steps=10, guidance=1.5, eta=1.0, precision="fp32")
    targets = ["a church, twemoji style", "a church, openmoji style", "a chapel, twemoji style",
               "a cathedral, openmoji style", "a steeple, twemoji style", "a christian church, openmoji style"]
    anchors = [f"a house, {t.rsplit(', ', 1)[1]}" for t in targets]
    seeds = list(range(len(targets)))
    base = attack.draw_judged(bundle, judge, world, "church", targets, seeds, sampler)
    assert base.hits.all()

    def latents(prompts: list[str], first_seed: int) -> torch.Tensor:
        images = sample(bundle, prompts * 2, range(first_seed, first_seed + 2 * len(prompts)), sampler, progress=False)
        return encode_images(bundle.codec, images, bundle.device, bundle.dtype)  # (2P, C, h, w)

    x_anchor, x_target = latents(anchors, 100), latents(targets, 200)
    erased = fresh(bundle)
    cfg = dataclasses.replace(smoke_params.erase.ca, steps=100, batch_size=4, lr=1e-3, prior_weight=0.0,
                              lora_group="xattn-kv", lora_rank=4, log_every=1000)
    train_ca(erased, targets, anchors, x_anchor, cfg, anchor_index=list(range(len(anchors))) * 2, progress=False)
    strong = PrefixAttackConfig(k=3, iterations=10, timesteps=3, t_schedule="grid", lr=0.01, weight_decay=0.1,
                                rand_init=False, vocabulary="roundtrip", seed=0)
    per_prompt = [x_target[[i, i + len(targets)]] for i in range(len(targets))]
    new_seeds = [s + 1000 for s in seeds]
    base_fresh = attack.draw_judged(bundle, judge, world, "church", targets, new_seeds, sampler)
    plan = plan_for(targets, per_prompt, seeds, base, base_fresh)
    pre_fresh = attack.draw_judged(erased, judge, world, "church", targets, new_seeds, sampler)
    asr, records, _ = prefix_asr(erased, judge, world, plan, strong, sampler, pre_fresh, progress=False)
    print(f"pre-attack {asr.pre_asr:.2f}, ASR {asr.asr:.2f}:", [r.get("adversarial_prompt") for r in records])
    assert asr.pre_asr <= 1 / 6  # the erasure holds without attack
    assert asr.asr >= asr.pre_asr + 2 / 6  # and the attack brings church back on at least two more prompts


def test_prefix_walkthrough_shows_every_round(tiny_world_bundle, smoke_params, monkeypatch):
    """The 08_attack lesson: every round runs (no early stop), each with its iterations' losses and sampled tokens,
    the top relaxed tokens of each slot (weights on the simplex, largest first) and the round's argmax prompt."""
    cfg = dataclasses.replace(PREFIX, iterations=3, timesteps=2)
    seen = []

    def judged(bundle, judge, world, family, prompts, seeds, sampler):
        seen.extend(prompts)
        return Judged(np.zeros((len(prompts), 2, 2, 3), np.uint8), np.ones(len(prompts), bool))

    monkeypatch.setattr(attack, "draw_judged", judged)
    walk = attack.prefix_walkthrough(tiny_world_bundle, None, None, "church", "a church",
                                     random_latents(tiny_world_bundle, 2, 0), 9, cfg, smoke_params.sample, top=4)
    assert [w["round"] for w in walk] == [1, 2] and seen == [w["prompt"] for w in walk]  # judged, yet not stopped
    for w in walk:
        assert len(w["losses"]) == cfg.iterations and len(w["sampled"]) == cfg.iterations
        assert all(len(tokens) == cfg.k for tokens in w["sampled"])
        assert len(w["top"]) == cfg.k and all(len(slot) == 4 for slot in w["top"])
        for slot in w["top"]:
            weights = [v for _, v in slot]
            assert weights == sorted(weights, reverse=True) and 0 <= sum(weights) <= 1 + 1e-6
        assert w["prompt"].endswith("a church") and w["hit"]
        assert w["prompt"].split()[: cfg.k] == [slot[0][0] for slot in w["top"]]  # the argmax tokens, typed


def test_rows_reuse_the_base_rows_verdicts(tiny_world_bundle, smoke_params, world, monkeypatch):
    """The base row judges the base model once; a row planned with its verdicts (through JSON) draws nothing of the
    base model and attacks the same items; verdicts of another attack section are refused."""
    drawn = []

    def stub(bundle, judge, world, family, prompts, seeds, sampler):
        drawn.append(len(prompts))
        return Judged(np.zeros((len(prompts), 2, 2, 3), np.uint8), np.arange(len(prompts)) % 2 == 0)

    monkeypatch.setattr(attack, "draw_judged", stub)
    pairs = Pairs("church", [f"{CHURCH} {i}" for i in range(4)], [HOUSE] * 4)
    samples = {"target_images": np.zeros((4, 32, 32, 3), np.uint8), "target_index": np.arange(4)}
    cfg = dataclasses.replace(smoke_params.attack, prompts=3, images=2)
    args = (tiny_world_bundle, None, world, pairs, samples, cfg, smoke_params.sample)
    base = attack.plan_attacks(*args)
    assert drawn == [3, 6, len(attack.inversion_prompts(world, "church", cfg)) * cfg.inversion_images]
    drawn.clear()
    row = attack.plan_attacks(*args, verdicts=BaseVerdicts.from_dict(base.base.to_dict()))
    assert drawn == [] and row.prompts == base.prompts and row.fresh_seeds == base.fresh_seeds
    for field in ("prompts", "fresh", "inversion"):
        np.testing.assert_array_equal(getattr(row.base, field), getattr(base.base, field))
    more = dataclasses.replace(cfg, images=3)
    with pytest.raises(ValueError, match="verdicts on the fresh items are 6, the attack section makes 9"):
        attack.plan_attacks(tiny_world_bundle, None, world, pairs, samples, more, smoke_params.sample,
                            verdicts=base.base)
