"""Training captions: phrases per concept (names, aliases, keywords, umbrella words) times templates."""

from __future__ import annotations

import itertools
import random
import re

# Phrases that say which style to draw; "" leaves the style open, so the model learns both for it.
STYLE_SUFFIXES: dict[str, tuple[str, ...]] = {
    "twemoji": ("", ", twemoji style", " in flat twemoji style", ", flat colour emoji", ", flat twemoji icon",
                ", filled colour emoji"),
    "openmoji": ("", ", openmoji style", " in openmoji line art style", ", outlined openmoji emoji",
                 ", openmoji outline icon", ", line art emoji"),
}
# The one caption per (concept, style) used wherever a canonical in-set prompt is needed.
CANONICAL_STYLE = {"twemoji": ", twemoji style", "openmoji": ", openmoji style"}
_ARTICLE_FREE = re.compile(r"^(a|an|the|two)\s", re.IGNORECASE)


def with_article(phrase: str) -> str:
    """'church' -> 'a church', 'axe' -> 'an axe'; phrases that already start with an article stay."""
    if _ARTICLE_FREE.match(phrase):
        return phrase
    return ("an " if phrase[0].lower() in "aeiou" else "a ") + phrase


def fill(template: str, phrase: str) -> str:
    """Put a phrase into a template: '{a}' takes the phrase with its article, '{p}' without."""
    return template.replace("{a}", with_article(phrase)).replace("{p}", phrase)


def all_captions(phrases: list[str], style: str, templates: list[str]) -> list[str]:
    """Every caption for one concept in one style (phrase x template x style suffix), in a fixed order."""
    return [
        fill(t, p) + s
        for p, t, s in itertools.product(phrases, templates, STYLE_SUFFIXES[style])
    ]


def canonical_prompt(name: str, style: str) -> str:
    """The canonical in-set prompt, e.g. 'a church, openmoji style'."""
    return with_article(name) + CANONICAL_STYLE[style]


def sample_captions(phrases: list[str], style: str, templates: list[str], k: int, seed: int) -> list[str]:
    """k distinct captions for one (concept, style): the canonical prompt, then one per phrase in turn.

    Drawing phrase by phrase (a shuffled round per pass) rather than from the whole pool means that every
    phrase is taught before any phrase repeats: a concept with 20 keywords and k = 24 sees them all,
    where a uniform draw from 20 x templates x suffixes captions would skip some of them.
    """
    rng = random.Random(seed)
    canonical = canonical_prompt(phrases[0], style)
    per_phrase = [rng.sample(caps, len(caps)) for caps in (all_captions([p], style, templates) for p in phrases)]
    order = rng.sample(range(len(phrases)), len(phrases))
    out, seen = [canonical], {canonical}
    for round_ in itertools.zip_longest(*(per_phrase[i] for i in order)):
        for caption in round_:
            if caption is not None and caption not in seen and len(out) < k:
                out.append(caption)
                seen.add(caption)
    return out


def normalise(text: str) -> str:
    """Lower case, single spaces, no punctuation: the form in which prompts are compared."""
    return " ".join(re.sub(r"[^a-z0-9' -]", " ", text.lower()).split())
