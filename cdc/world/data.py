"""The built world on disk: images.npz (renders and their labels) + concepts.json (names, phrases, families, prompts).

images.npz carries everything a classifier of the renders needs (concept keys and style names included),
so the judge stage depends on it alone and a caption change in concepts.json does not retrain the judge.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cdc.io import atomic_path, load_json, save_json, save_npz


@dataclass
class World:
    """Renders of every concept in every style, with the concept table and the prompt sets."""

    images: np.ndarray  # (N, S, S, 3) uint8 on white, N = n_concepts * n_styles
    concept: np.ndarray  # (N,) int64 index into concepts
    style: np.ndarray  # (N,) int64 index into styles
    concepts: list[dict]  # {"id", "key", "emoji", "codepoint", "aliases", "phrases", "category", "family"}
    styles: list[str]
    targets: dict[str, dict]  # family -> {"kind", "members", "anchor", "umbrella", "neighbours"}
    out_of_set: dict[str, list[str]]  # family -> prompts never used in training
    templates: list[str]  # caption templates ("{a}" = phrase with article, "{p}" = bare phrase)

    @property
    def keys(self) -> list[str]:
        """Concept keys in id order."""
        return [c["key"] for c in self.concepts]

    def index(self, key: str) -> int:
        """Concept id of a key, with a clear error for an unknown concept."""
        for c in self.concepts:
            if c["key"] == key:
                return c["id"]
        raise KeyError(f"unknown concept {key!r}: not in the world (see data/world/concepts.json)")


def save_world(world: World, folder: Path) -> None:
    """Write images.npz and concepts.json into folder, atomically as a whole."""
    with atomic_path(folder) as tmp:
        tmp.mkdir(parents=True)
        save_npz(tmp / "images.npz", images=world.images, concept=world.concept, style=world.style,
                 keys=np.asarray(world.keys), styles=np.asarray(world.styles))
        meta = {k: getattr(world, k) for k in ("concepts", "styles", "targets", "out_of_set", "templates")}
        save_json(meta, tmp / "concepts.json")


@dataclass
class Renders:
    """The labelled renders of a built world, without captions or prompts (what the judge learns from)."""

    images: np.ndarray  # (N, S, S, 3) uint8
    concept: np.ndarray  # (N,) int64
    style: np.ndarray  # (N,) int64
    keys: list[str]  # concept keys in id order
    styles: list[str]


def _world_file(folder: str | Path, name: str) -> Path:
    """Path of one file of a built world, with the error that names the stage when it is missing."""
    path = Path(folder) / name
    if not path.exists():
        raise FileNotFoundError(f"no built world in {folder}: run `dvc repro world` first")
    return path


def load_renders(folder: str | Path) -> Renders:
    """Read only images.npz of a built world."""
    path = _world_file(folder, "images.npz")
    arrays = np.load(path)
    if "keys" not in arrays:
        raise ValueError(f"{path} has no concept keys: it was built by an older cdc, run `dvc repro world`")
    return Renders(arrays["images"], arrays["concept"], arrays["style"],
                   [str(k) for k in arrays["keys"]], [str(s) for s in arrays["styles"]])


def load_world(folder: str | Path) -> World:
    """Read a world written by save_world."""
    arrays = np.load(_world_file(folder, "images.npz"))
    meta = load_json(_world_file(folder, "concepts.json"))
    return World(arrays["images"], arrays["concept"], arrays["style"], **meta)


def other_concepts(world: World, n: int, seed: int) -> list[str]:
    """A seeded sample of n concepts outside every target family (for accuracy on 'everything else')."""
    members = {m for f in world.targets.values() for m in f["members"]}
    rest = [c["key"] for c in world.concepts if c["key"] not in members]
    rng = np.random.default_rng(seed)
    return sorted(rng.choice(rest, size=min(n, len(rest)), replace=False).tolist())
