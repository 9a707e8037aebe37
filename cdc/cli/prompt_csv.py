"""Prompt files in the UnlearnDiffAtk / I2P CSV format: one row per prompt, each with its own seed and guidance."""

from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass
from pathlib import Path

PROMPT_COLUMNS = ("prompt",)
SEED_COLUMNS = ("evaluation_seed", "sd_seed", "seed")  # UnlearnDiffAtk, I2P, plain
GUIDANCE_COLUMNS = ("evaluation_guidance", "sd_guidance", "guidance")


@dataclass(frozen=True)
class PromptRow:
    """One prompt with the seed and guidance it is drawn with."""

    prompt: str
    seed: int
    guidance: float | None  # None: the file has no guidance column (the sampler's guidance applies)


def _column(header: list[str], names: tuple[str, ...], path: Path, required: bool) -> str | None:
    """The first of `names` in the header, or a clear error naming what is accepted."""
    found = next((n for n in names if n in header), None)
    if found is None and required:
        raise ValueError(f"{path}: no {' / '.join(names)} column (columns: {', '.join(header) or 'none'})")
    return found


def read_prompt_csv(path: str | os.PathLike[str]) -> list[PromptRow]:
    """Rows of a prompt CSV: `prompt` and a seed column are required, a guidance column is optional; blank
    prompts, non-integer seeds and non-finite or negative guidance are errors naming the line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prompt CSV not found: {path}")
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        header = [h.strip() for h in reader.fieldnames or []]
        reader.fieldnames = header
        p_col = _column(header, PROMPT_COLUMNS, path, True)
        s_col = _column(header, SEED_COLUMNS, path, True)
        g_col = _column(header, GUIDANCE_COLUMNS, path, False)
        rows = []
        for line, raw in enumerate(reader, start=2):
            prompt = (raw.get(p_col) or "").strip()
            if not prompt:
                raise ValueError(f"{path}:{line}: the prompt is empty")
            try:
                seed = int(float(raw[s_col]))
                guidance = float(raw[g_col]) if g_col else None
            except (TypeError, ValueError):
                raise ValueError(f"{path}:{line}: {s_col} must be an integer"
                                 + (f" and {g_col} a number" if g_col else "")) from None
            if seed < 0 or (guidance is not None and (not math.isfinite(guidance) or guidance < 0)):
                raise ValueError(f"{path}:{line}: the seed must be >= 0 and the guidance finite and >= 0")
            rows.append(PromptRow(prompt, seed, guidance))
    if not rows:
        raise ValueError(f"{path}: no prompts")
    return rows
