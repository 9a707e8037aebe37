"""Ring-A-Bell (black box: the ORIGINAL text encoder only): concept direction, sequence layout, the genetic
search's descent and determinism, config checks, and the found prompt typed to a tiny model whose concept word
was erased (it draws the concept again) and to one that never knew the concept (nothing comes back).

MiniLM runs at max_length 8 here (every prompt below is at most 6 tokens): its context is the same rows as at
the world's 24, less pad rows that are zero, and each generation's batched encode costs a third.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from conftest import REPO
from helpers import random_latents, teach

from cdc.attacks.ringabell import (
    RingABellConfig,
    concept_direction,
    decode,
    ring_a_bell,
    sequence_objective,
    sequence_tokens,
    target_context,
    vocabulary_of,
)
from cdc.embeddings import candidate_ids
from cdc.losses import add_noise, mse, target_for, unet_pred
from cdc.stages.params import read_yaml
from cdc.text import MiniLMEncoder, TextEncoder, Tokens

pytestmark = pytest.mark.usefixtures("one_thread")

CHURCH, HOUSE, FISH = "a small church", "a small house", "a fish"
WITH = [CHURCH, "a church on a hill", "a church by the sea", "an old church"]
WITHOUT = [p.replace("church", "house") for p in WITH]  # the same prompts with the anchor instead of the concept
# world-like words: a candidate set small enough for a short search to reach its good sequences
WORDS = ("a an the small old big red church chapel cathedral house home fish car tree on by hill sea of with "
         "religious steeple abbey bell tower").split()
CFG = RingABellConfig(k=0, eta=3.0, population=32, generations=15, elite=2, crossover=0.5, mutation=0.5,
                      vocabulary="roundtrip", seed=0)


@pytest.fixture(scope="module")
def text() -> MiniLMEncoder:
    """The world's MiniLM context (its pooled_scale) at max_length 8."""
    return MiniLMEncoder(8, read_yaml(REPO / "params.yaml")["pretrain"]["pooled_scale"])


@pytest.fixture(scope="module")
def direction(text) -> torch.Tensor:
    return concept_direction(text, WITH, WITHOUT)  # (L, D)


@pytest.fixture(scope="module")
def candidates(text) -> torch.Tensor:
    return candidate_ids(text, "roundtrip")


@pytest.fixture(scope="module")
def attacked(text, direction, candidates):
    """CFG against CHURCH over the whole roundtrip vocabulary: the one black-box search every model below gets."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    result = ring_a_bell(text, CHURCH, direction, CFG, candidates=candidates)
    torch.set_num_threads(n)
    return result


class WordSwap(TextEncoder):
    """The erased model's encoder: the concept word's token is read as the anchor's (its conditioning is gone)."""

    def __init__(self, inner: TextEncoder, word: str, anchor: str) -> None:
        super().__init__(inner.tokenizer, inner.model, inner.max_length)
        self.inner = inner
        self.word, self.anchor = inner.tokenizer.convert_tokens_to_ids([word, anchor])

    def _context(self, tokens: Tokens) -> torch.Tensor:
        ids = tokens.input_ids.masked_fill(tokens.input_ids == self.word, self.anchor)
        return self.inner._context(Tokens(ids, tokens.attention_mask))


@pytest.fixture(scope="module")
def models(tiny_world_bundle, text):
    """Tiny world UNets taught 100 steps on MiniLM-8 contexts: `knew` draws latents X for CHURCH, Y for HOUSE and
    Z for FISH; `never` only Y and Z. Returns (knew UNet, never UNet, X)."""
    bundle = dataclasses.replace(tiny_world_bundle, text=text)
    x, y, z = (random_latents(bundle, n=1, seed=s) for s in (1, 2, 3))
    knew = teach(bundle, [CHURCH, HOUSE, FISH], torch.cat([x, y, z]), steps=100)
    never = teach(bundle, [HOUSE, FISH], torch.cat([y, z]), steps=100)
    return knew.unet, never.unet, x


def _x_loss(unet, scheduler, encoder: TextEncoder, prompt: str, x: torch.Tensor) -> float:
    """The UNet's denoising MSE on latent x (1, C, h, w) for the typed prompt, over 32 fixed draws (t >= 400,
    where the text matters): lower = the prompt draws x more."""
    gen = torch.Generator().manual_seed(123)
    xs = x.expand(32, -1, -1, -1)  # (32, C, h, w)
    noise, t = torch.randn(xs.shape, generator=gen), torch.randint(400, 1000, (32,), generator=gen)
    ctx = encoder.encode([prompt]).expand(32, -1, -1)  # (32, L, D)
    with torch.no_grad():
        pred = unet_pred(unet, add_noise(scheduler, xs, noise, t), t, ctx)
    return float(mse(pred, target_for(scheduler, xs, noise, t)))


def _random_prompts(text: TextEncoder, candidates: torch.Tensor, k: int, n: int = 8) -> list[str]:
    """n prompts of k random candidate tokens: the chance level of a typed prompt."""
    gen = torch.Generator().manual_seed(9)
    return [decode(text, candidates[torch.randint(0, len(candidates), (k,), generator=gen)].tolist())
            for _ in range(n)]


@pytest.fixture(scope="module")
def measured(text, tiny_world_bundle, models, attacked, candidates) -> dict[str, dict]:
    """X losses per model: the un-erased prompt (`base`), and through the erased encoder (CHURCH's word read as
    HOUSE's) the plain prompt, the Ring-A-Bell prompt and 8 random 3-token prompts."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    sched, erased = tiny_world_bundle.scheduler, WordSwap(text, "church", "house")
    knew, never, x = models
    out = {}
    for name, unet in (("knew", knew), ("never", never)):
        out[name] = {"base": _x_loss(unet, sched, text, CHURCH, x), "plain": _x_loss(unet, sched, erased, CHURCH, x),
                     "attack": _x_loss(unet, sched, erased, attacked.prompt, x),
                     "random": [_x_loss(unet, sched, erased, p, x) for p in _random_prompts(text, candidates, 3)]}
    torch.set_num_threads(n)
    return out


def test_config_and_inputs_are_checked(text, direction):
    for bad in ({"k": -1}, {"eta": -0.5}, {"eta": math.nan}, {"population": 1}, {"generations": 0},
                {"elite": 17}, {"crossover": 1.5}, {"mutation": -0.1}, {"vocabulary": "some"}, {"seed": -1}):
        with pytest.raises(ValueError):
            dataclasses.replace(CFG, **bad)
    with pytest.raises(ValueError, match="paired"):
        concept_direction(text, WITH, WITHOUT[:-1])
    with pytest.raises(TypeError):
        concept_direction(text, CHURCH, HOUSE)
    with pytest.raises(ValueError, match="does not match"):
        ring_a_bell(text, CHURCH, direction[:-1], CFG)
    with pytest.raises(ValueError, match="do not fit"):
        ring_a_bell(text, CHURCH, direction, dataclasses.replace(CFG, k=7))
    with pytest.raises(ValueError, match="no candidate"):
        ring_a_bell(text, CHURCH, direction, CFG, candidates=torch.empty(0, dtype=torch.long))
    with pytest.raises(dataclasses.FrozenInstanceError):
        CFG.eta = 1.0  # type: ignore[misc]


def test_direction_target_and_sequence_layout(text, direction, candidates):
    ctx = text.encode(WITH + WITHOUT)  # (8, L, D)
    torch.testing.assert_close(direction, (ctx[:4] - ctx[4:]).mean(0))
    assert direction.shape == (text.max_length + 1, text.dim) and direction.norm() > 1
    assert torch.equal(concept_direction(text, WITH, WITH), torch.zeros_like(direction))
    torch.testing.assert_close(target_context(text, CHURCH, direction, 0.0), text.encode([CHURCH])[0])
    torch.testing.assert_close(target_context(text, CHURCH, direction, 2.0) - text.encode([CHURCH])[0], 2 * direction)
    # a sequence is laid out as the tokenizer lays out its decoded text, and scored as its encoding
    ids = candidates[torch.tensor([[5, 500, 5000], [7, 70, 7000]])]  # (2, 3)
    typed = text.tokenize([decode(text, row.tolist()) for row in ids])
    got = sequence_tokens(text, ids)
    assert torch.equal(got.input_ids, typed.input_ids) and torch.equal(got.attention_mask, typed.attention_mask)
    target = target_context(text, CHURCH, direction, 1.0)
    want = ((text.encode([decode(text, row.tolist()) for row in ids]) - target) ** 2).sum((1, 2))
    torch.testing.assert_close(sequence_objective(text, ids, target), want)
    church = text.tokenizer(CHURCH, add_special_tokens=False)["input_ids"]
    assert sequence_objective(text, torch.tensor([church]), target_context(text, CHURCH, direction, 0.0)) < 1e-6
    assert vocabulary_of(text, [CHURCH, "a red house"]).tolist() == sorted(
        set(text.tokenizer("a small church red house", add_special_tokens=False)["input_ids"]))


@pytest.mark.slow
def test_search_descends_below_a_random_population(text, direction, candidates, attacked):
    res = attacked
    assert len(res.objectives) == CFG.generations and len(res.token_ids) == 3  # k = 0: CHURCH's own 3 tokens
    assert all(b <= a for a, b in zip(res.objectives, res.objectives[1:]))  # elite 2: the best never rises
    target = target_context(text, CHURCH, direction, CFG.eta)
    gen = torch.Generator().manual_seed(77)  # an independent random population of the same size
    rand = sequence_objective(text, candidates[torch.randint(0, len(candidates), (CFG.population, 3), generator=gen)],
                              target)
    print(f"best {res.objectives[0]:.0f} -> {res.objectives[-1]:.0f} ({res.prompt!r}); random population: min "
          f"{float(rand.min()):.0f} mean {float(rand.mean()):.0f}; the prompt itself {res.prompt_objective:.0f}")
    assert res.objectives[-1] < float(rand.min()) - 200 and res.objectives[-1] < 0.85 * float(rand.mean())
    assert res.objectives[-1] < res.objectives[0] - 200 and res.objectives[-1] < 0.85 * res.initial_mean
    # what is typed is what was scored
    assert res.retokenizes and res.tokens == res.prompt.split()
    typed = float(((text.encode([res.prompt])[0] - target) ** 2).sum())
    assert typed == pytest.approx(res.objectives[-1], rel=1e-4)
    assert res.seconds > 0


@pytest.mark.parametrize("seed", [0, 1])
def test_found_embedding_is_closer_to_the_target_than_the_prompt(text, direction, seed):
    """Over world-like words, eta 3: the search ends nearer E(p) + eta c than E(p) itself (6 of 6 seeds do)."""
    words = vocabulary_of(text, WORDS)
    res = ring_a_bell(text, CHURCH, direction, dataclasses.replace(CFG, seed=seed), candidates=words)
    target = target_context(text, CHURCH, direction, CFG.eta)
    found = float(((text.encode([res.prompt])[0] - target) ** 2).sum())
    plain = float(((text.encode([CHURCH])[0] - target) ** 2).sum())
    print(f"seed {seed}: {res.prompt!r} {found:.0f} vs the prompt {plain:.0f} (eta^2 |c|^2 = "
          f"{CFG.eta ** 2 * float(direction.norm()) ** 2:.0f})")
    assert plain == pytest.approx(res.prompt_objective, rel=1e-4)
    assert found < plain and set(res.token_ids) <= set(words.tolist())


def test_deterministic_for_a_seed(text, direction, candidates):
    cfg = dataclasses.replace(CFG, population=8, generations=3, k=2)
    strip = lambda r: dataclasses.replace(r, seconds=0.0)  # noqa: E731
    a, b = (strip(ring_a_bell(text, CHURCH, direction, cfg, candidates=candidates)) for _ in range(2))
    assert a == b
    given = ring_a_bell(text, CHURCH, direction, cfg, torch.Generator().manual_seed(cfg.seed), candidates=candidates)
    assert strip(given) == a  # the generator drives every draw; None means one seeded cfg.seed
    other = strip(ring_a_bell(text, CHURCH, direction, dataclasses.replace(cfg, seed=1), candidates=candidates))
    assert other.objectives != a.objectives
    elite0 = ring_a_bell(text, CHURCH, direction, dataclasses.replace(cfg, elite=0), candidates=candidates)
    assert elite0.objectives[0] == a.objectives[0]  # same random start; later generations may differ


@pytest.mark.slow
def test_revives_a_model_whose_concept_word_was_erased(measured, attacked):
    """The taught model with CHURCH's word read as HOUSE's forgets X; the black-box prompt, found without ever
    seeing that model, draws X again: most of the gap back, and better than every random prompt."""
    m = measured["knew"]
    recovered = (m["plain"] - m["attack"]) / (m["plain"] - m["base"])
    print(f"X loss: base {m['base']:.4f}, erased {m['plain']:.4f}, Ring-A-Bell {m['attack']:.4f} "
          f"({attacked.prompt!r}): {recovered:.0%} of the gap back; random prompts mean {np.mean(m['random']):.4f} "
          f"min {min(m['random']):.4f}")
    assert m["plain"] > m["base"] + 0.01  # the erasure took X away
    assert m["attack"] < m["plain"] and m["attack"] < min(m["random"]) and recovered > 0.5


@pytest.mark.slow
def test_does_not_succeed_on_a_model_that_never_knew_the_concept(measured):
    """The same prompt and measure on a model never taught X: no better than random prompts, while on the model
    that knew X it beats them by far (the measure does move here: the plain prompt, read as HOUSE, pushes X away)."""
    gain = {name: float(np.mean(m["random"])) - m["attack"] for name, m in measured.items()}
    never = measured["never"]
    print(f"gain of Ring-A-Bell over random prompts: knew {gain['knew']:+.4f}, never {gain['never']:+.4f}; "
          f"never, plain prompt vs random {never['plain'] - np.mean(never['random']):+.4f}")
    assert never["plain"] - np.mean(never["random"]) > 0.002  # the measure sees a prompt's effect on this model
    assert gain["knew"] > 0.004 and gain["never"] < 0.15 * gain["knew"]


def test_runs_on_clip(tiny_sd_bundle):
    text = tiny_sd_bundle.text
    c = concept_direction(text, ["a cat", "a red cat"], ["a", "a red"])
    cfg = dataclasses.replace(CFG, k=2, population=4, generations=2, elite=1, vocabulary="all")
    res = ring_a_bell(text, "a cat", c, cfg)
    assert len(res.token_ids) == 2 and np.isfinite(res.objectives).all()
    assert not set(res.token_ids) & set(text.tokenizer.all_special_ids)
    assert sequence_tokens(text, torch.tensor([res.token_ids])).input_ids.shape == (1, text.max_length)
