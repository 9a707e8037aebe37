"""The knobs of the attacks (params.yaml section `attack`): pure config, no torch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from cdc.config import Checked, bounded

Vocabulary = Literal["all", "roundtrip"]
TSchedule = Literal["grid", "random"]


@dataclass(frozen=True)
class PrefixAttackConfig(Checked):
    """Knobs of the prefix attack (released: k 5 nudity / 3 objects and style, 40 iterations, lr 0.01, wd 0.1)."""

    k: int = bounded(1)  # adversarial prefix tokens
    iterations: int = bounded(1)  # Adam steps per round
    timesteps: int = bounded(1)  # rounds; round i uses t_i = T//n//2 + i*T//n (n = timesteps)
    t_schedule: TSchedule  # grid: t fixed per round (released); random: t ~ U{0..T-1} per step
    lr: float = bounded(0, lo_open=True)  # Adam learning rate on the simplex weights
    weight_decay: float = bounded(0)  # Adam (L2) weight decay, as released
    rand_init: bool  # start from projected U(0, 1) weights instead of uniform 1/C (released default: False)
    vocabulary: Vocabulary  # candidate tokens (see `candidate_ids`)
    seed: int = bounded(0)  # token draws, noise and random t


PLACEHOLDER = "{}"  # where the learned token goes in templates and generation prompts
RANDOM_INIT = "random"  # a start of inversion: a Gaussian with the vocabulary's per-dimension mean/std


def check_template(prompt: str) -> None:
    """A template / prompt must hold the placeholder "{}" exactly once."""
    if prompt.count(PLACEHOLDER) != 1:
        raise ValueError(f"prompt {prompt!r} must contain the placeholder {PLACEHOLDER!r} exactly once")


def fill(prompt: str, word: str) -> str:
    """The prompt's text with `word` in place of the placeholder (the baseline: the init word itself)."""
    check_template(prompt)
    return prompt.replace(PLACEHOLDER, word)


@dataclass(frozen=True)
class InversionConfig(Checked):
    """Knobs of concept inversion (released: 5000 steps, lr 0.08, wd 1e-2, batch 16, init = the concept word)."""

    steps: int = bounded(1)  # optimiser updates of each start
    lr: float = bounded(0, lo_open=True)  # AdamW learning rate (constant)
    weight_decay: float = bounded(0)  # AdamW decoupled weight decay on the learned vector
    batch_size: int = bounded(1)  # examples (latent, template, noise, t) per update
    starts: list[str]  # one inversion from each: a word that is ONE token of the vocabulary, or "random"
    templates: list[str]  # training prompts, each with one "{}", e.g. ["a {}", "an emoji of {}"]
    seed: int = bounded(0)  # example order, templates, noise, t and the random init

    def __post_init__(self) -> None:
        """Field checks, then: templates non-empty, each with one placeholder; starts non-empty and distinct."""
        super().__post_init__()
        if isinstance(self.templates, str) or not self.templates:
            raise ValueError("templates must be a non-empty list of prompts")
        for t in self.templates:
            check_template(t)
        if isinstance(self.starts, str) or not self.starts or any(not s.strip() for s in self.starts):
            raise ValueError("starts must be a non-empty list of words (or 'random')")
        if len(set(self.starts)) != len(self.starts):
            raise ValueError(f"starts repeat a start: {self.starts}")


@dataclass(frozen=True)
class RingABellConfig(Checked):
    """Knobs of Ring-A-Bell (released: 16 tokens, eta 3 for nudity, population 200, 3000 generations,
    mutation 0.25, crossover 0.5, no elite)."""

    k: int = bounded(0)  # tokens searched; 0: as many as the attacked prompt has
    eta: float = bounded(0)  # concept strength in the target e* = E(p) + eta * c
    population: int = bounded(2)  # sequences per generation (scored in one batched encode)
    generations: int = bounded(1)  # scored generations (the first is the random start)
    elite: int = bounded(0)  # best survivors copied unmutated into the next generation (0 = released)
    crossover: float = bounded(0, 1)  # probability a survivor is crossed with another (two children)
    mutation: float = bounded(0, 1)  # probability an individual gets one random slot re-drawn
    vocabulary: Vocabulary  # candidate tokens (see `candidate_ids`)
    seed: int = bounded(0)  # the generator's seed when the caller passes none

    def __post_init__(self) -> None:
        """Field checks, then: the elite fits among the population // 2 survivors."""
        super().__post_init__()
        if self.elite > self.population // 2:
            raise ValueError(f"elite {self.elite} exceeds the {self.population // 2} survivors of a generation")


@dataclass(frozen=True)
class ContextAttackConfig(Checked):
    """Knobs of the white-box context attack: the whole text context, free in the encoder's output space, fitted
    to the concept's images through the erased UNet (an upper bound on any prompt, learned or typed)."""

    steps: int = bounded(1)  # Adam updates
    lr: float = bounded(0, lo_open=True)  # Adam learning rate on the context
    batch_size: int = bounded(1)  # (latent, noise, t) examples per update
    seed: int = bounded(0)  # example order, noise and t
