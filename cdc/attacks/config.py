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
RANDOM_INIT = "random"  # init_token value: start from a Gaussian with the vocabulary's per-dimension mean/std


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

    steps: int = bounded(1)  # optimiser updates
    lr: float = bounded(0, lo_open=True)  # AdamW learning rate (constant)
    weight_decay: float = bounded(0)  # AdamW decoupled weight decay on the learned vector
    batch_size: int = bounded(1)  # examples (latent, template, noise, t) per update
    init_token: str  # a word that is ONE token of the encoder's vocabulary, or "random"
    templates: list[str]  # training prompts, each with one "{}", e.g. ["a {}", "an emoji of {}"]
    seed: int = bounded(0)  # example order, templates, noise, t and the random init

    def __post_init__(self) -> None:
        """Field checks, then: templates non-empty, each with one placeholder; init_token non-empty."""
        super().__post_init__()
        if isinstance(self.templates, str) or not self.templates:
            raise ValueError("templates must be a non-empty list of prompts")
        for t in self.templates:
            check_template(t)
        if not self.init_token.strip():
            raise ValueError("init_token is empty")
