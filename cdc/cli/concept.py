"""A concept given as text -> paired target/anchor prompts, from shipped templates or the user's own prompts.

Used by `cdc erase` only (the DVC pipeline builds the world's pairs from its captions in cdc.anchors).
The template file's format is described at the top of data/prompts/templates.yaml.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cdc.anchors import Pairs
from cdc.world.captions import fill, with_article

TEMPLATES_PATH = Path(__file__).resolve().parents[2] / "data" / "prompts" / "templates.yaml"


@dataclass(frozen=True)
class TemplateSet:
    """Caption templates for one kind of concept and, optionally, how a target prompt wraps a caption."""

    captions: list[str]  # "{a}": phrase with article, "{p}": bare phrase
    target: list[str] = field(default_factory=list)  # "{caption}" plus "{a}"/"{p}" of the concept; [] = refill


@dataclass(frozen=True)
class KnownConcept:
    """A shipped concept: its text, anchor, template kind, and per-method `key=value` overrides."""

    concept: str
    anchor: str
    kind: str
    overrides: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Templates:
    """The template sets by kind and the shipped concepts by slug."""

    kinds: dict[str, TemplateSet]
    concepts: dict[str, KnownConcept]
    retain: list[str]  # AdvUnlearn's retain prompts (the released code's COCO object prompts); may be empty


def slug(text: str) -> str:
    """'Van Gogh' -> 'van-gogh': how shipped concepts are named."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _strings(value: Any, where: str) -> list[str]:
    """A non-empty list of non-blank strings, or ValueError naming `where`."""
    if not isinstance(value, list) or not value or not all(isinstance(s, str) and s.strip() for s in value):
        raise ValueError(f"{where} must be a non-empty list of non-blank strings")
    return list(value)


def parse_templates(data: Any, where: str = "templates") -> Templates:
    """Check and build Templates from the YAML mapping {kinds: ..., concepts: ...}."""
    if not isinstance(data, Mapping) or not isinstance(data.get("kinds"), Mapping) or not data["kinds"]:
        raise ValueError(f"{where}: expected a mapping with a non-empty 'kinds' mapping")
    unknown = set(data) - {"kinds", "concepts", "retain"}
    if unknown:
        raise ValueError(f"{where}: unknown key {sorted(unknown)[0]!r} (known: kinds, concepts, retain)")
    kinds = {}
    for name, raw in data["kinds"].items():
        at = f"{where}: kinds.{name}"
        if not isinstance(raw, Mapping) or set(raw) - {"captions", "target"}:
            raise ValueError(f"{at} must be a mapping with 'captions' and optionally 'target'")
        captions = _strings(raw.get("captions"), f"{at}.captions")
        target = _strings(raw["target"], f"{at}.target") if "target" in raw else []
        # Without a slot the concept (or anchor) would be missing from its own prompt.
        bad = [c for c in captions if "{a}" not in c and "{p}" not in c]
        bad += [t for t in target if "{caption}" not in t or ("{a}" not in t and "{p}" not in t)]
        if bad:
            raise ValueError(f"{at}: template {bad[0]!r} lacks its slots "
                             "({a} or {p}; target forms also {caption})")
        kinds[str(name)] = TemplateSet(captions, target)
    concepts = {}
    for name, raw in (data.get("concepts") or {}).items():
        at = f"{where}: concepts.{name}"
        keys = {"concept", "anchor", "kind", "overrides"}
        if not isinstance(raw, Mapping) or set(raw) - keys or not {"concept", "anchor", "kind"} <= set(raw):
            raise ValueError(f"{at} must be a mapping with concept, anchor, kind and optionally overrides")
        if raw["kind"] not in kinds:
            raise ValueError(f"{at}: unknown kind {raw['kind']!r} (known: {', '.join(kinds)})")
        overrides = dict(raw.get("overrides") or {})
        concepts[str(name)] = KnownConcept(str(raw["concept"]), str(raw["anchor"]), str(raw["kind"]),
                                           {str(k): str(v) for k, v in overrides.items()})
    retain = _strings(data["retain"], f"{where}: retain") if "retain" in data else []
    return Templates(kinds, concepts, retain)


def retain_prompts(templates: Templates, concept: str, anchor: str) -> list[str]:
    """The shipped retain prompts without any that name the concept or the anchor (as the released code filters
    its retain set), or ValueError if none is left."""
    words = {w for text in (concept, anchor) for w in re.findall(r"[a-z0-9]+", text.lower())}
    kept = [p for p in templates.retain if not words & set(re.findall(r"[a-z0-9]+", p.lower()))]
    if not kept:
        raise ValueError(f"no retain prompt is left for {concept!r} -> {anchor!r}: add prompts to the templates' "
                         "`retain` list")
    return kept


def read_templates(path: str | os.PathLike[str] = TEMPLATES_PATH) -> Templates:
    """Read and check a templates YAML file (data/prompts/templates.yaml by default)."""
    from cdc.stages.params import read_yaml

    return parse_templates(read_yaml(path), where=str(path))


def known_concept(templates: Templates, concept: str) -> KnownConcept | None:
    """The shipped concept named by slug ('garbage-truck') or text ('garbage truck'), else None."""
    key = slug(concept)
    if key in templates.concepts:
        return templates.concepts[key]
    return next((k for k in templates.concepts.values() if slug(k.concept) == key), None)


def _check_words(concept: str, anchor: str) -> tuple[str, str]:
    """Stripped, non-blank, and different (else the erasure would map the concept onto itself)."""
    concept, anchor = concept.strip(), anchor.strip()
    if not concept or not anchor:
        raise ValueError("the concept and the anchor must be non-blank text")
    if concept.lower() == anchor.lower():
        raise ValueError(f"the anchor equals the concept ({concept!r}): pick another anchor")
    return concept, anchor


def concept_pairs(concept: str, anchor: str, templates: Templates, kind: str = "object") -> Pairs:
    """Paired prompts from the `kind` templates: anchor = caption(anchor), target = caption(concept) or the
    kind's target form around the anchor caption (caption i uses form i mod n)."""
    concept, anchor = _check_words(concept, anchor)
    if kind not in templates.kinds:
        raise ValueError(f"unknown kind {kind!r} (known: {', '.join(templates.kinds)})")
    ts = templates.kinds[kind]
    anchors = [fill(c, anchor) for c in ts.captions]
    if ts.target:
        targets = [fill(ts.target[i % len(ts.target)].replace("{caption}", a), concept) for i, a in enumerate(anchors)]
    else:
        targets = [fill(c, concept) for c in ts.captions]
    return Pairs(concept, targets, anchors)


def prompt_file_pairs(concept: str, anchor: str, lines: Sequence[str]) -> Pairs:
    """Pairs from the user's target prompts: each names the concept; its anchor prompt is the same line
    with the concept (and its article, "an apple" -> "a house") replaced by the anchor."""
    concept, anchor = _check_words(concept, anchor)
    if not lines:
        raise ValueError("the prompts file has no prompts")
    # Whole words only, case-insensitive; an article right before the concept is redone for the anchor.
    pattern = re.compile(rf"(?<!\w)(?:(an?|the)\s+)?{re.escape(concept)}(?!\w)", re.IGNORECASE)

    def swap(m: re.Match[str]) -> str:
        article = m.group(1)
        if not article:
            return anchor
        if article.lower() == "the":
            return f"{article} {anchor}"
        full = with_article(anchor)  # the anchor's own article, or the anchor as given if it has one
        return full[0].upper() + full[1:] if article[0].isupper() else full

    targets, anchors = [], []
    for i, line in enumerate(lines):
        swapped, n = pattern.subn(swap, line)
        if n == 0:
            raise ValueError(f"prompt {i + 1} ({line!r}) does not name the concept {concept!r}")
        targets.append(line)
        anchors.append(swapped)
    return Pairs(concept, targets, anchors)
