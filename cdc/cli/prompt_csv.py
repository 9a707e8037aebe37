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
MAX_SEED = 2**63 - 1  # torch.Generator.manual_seed takes any int64 >= 0; the files' seeds are small
# Classifier-free guidance a prompt file may ask for. The field's files use 7.5 (I2P, UnlearnDiffAtk) and SD users
# rarely go past 30; far beyond that the sampler draws saturated noise that a judge would still score.
MAX_GUIDANCE = 100.0


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


def parse_seed(text: str | None, where: str, column: str) -> int:
    """A seed cell as an int in 0..MAX_SEED: "3" or "3.0" (as pandas writes a float column), never "1.7"."""
    value = (text or "").strip()
    try:
        seed = int(value)
    except ValueError:
        seed = None
    if seed is None:
        try:
            number = float(value)
        except ValueError:
            number = math.nan
        if not math.isfinite(number) or not number.is_integer():
            raise ValueError(f"{where}: {column} {value!r} is not an integer")
        seed = int(number)
    if not 0 <= seed <= MAX_SEED:
        raise ValueError(f"{where}: {column} {value!r} is outside 0..2**63-1")
    return seed


def parse_guidance(text: str | None, where: str, column: str) -> float:
    """A guidance cell as a finite float in [0, MAX_GUIDANCE]."""
    value = (text or "").strip()
    try:
        guidance = float(value)
    except ValueError:
        raise ValueError(f"{where}: {column} {value!r} is not a number") from None
    if not math.isfinite(guidance) or not 0 <= guidance <= MAX_GUIDANCE:
        raise ValueError(f"{where}: {column} {value!r} is outside [0, {MAX_GUIDANCE:g}] (the classifier-free "
                         "guidance scale; the field's prompt files use 7.5)")
    return guidance


def read_prompt_csv(path: str | os.PathLike[str]) -> list[PromptRow]:
    """Rows of a prompt CSV (UTF-8, with or without a byte-order mark): `prompt` and a seed column are required,
    a guidance column is optional; duplicate column names, blank prompts, seeds that are not integers in
    0..2**63-1 and guidance that is not a number in [0, MAX_GUIDANCE] are errors naming the file, line and value."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prompt CSV not found: {path}")
    with path.open(newline="", encoding="utf-8-sig") as f:  # utf-8-sig: Excel's "CSV UTF-8" starts with a BOM
        reader = csv.DictReader(f)
        header = [h.strip() for h in reader.fieldnames or []]
        twice = sorted({h for h in header if h and header.count(h) > 1})
        if twice:
            raise ValueError(f"{path}: column {twice[0]!r} appears {header.count(twice[0])} times in the header "
                             "(which one is meant? keep one)")
        reader.fieldnames = header
        p_col = _column(header, PROMPT_COLUMNS, path, True)
        s_col = _column(header, SEED_COLUMNS, path, True)
        g_col = _column(header, GUIDANCE_COLUMNS, path, False)
        rows = []
        for raw in reader:
            where = f"{path}:{reader.line_num}"  # the row's (last) line: blank lines skipped, quoted newlines counted
            prompt = (raw.get(p_col) or "").strip()
            if not prompt:
                raise ValueError(f"{where}: the prompt is empty")
            seed = parse_seed(raw.get(s_col), where, s_col)
            guidance = parse_guidance(raw.get(g_col), where, g_col) if g_col else None
            rows.append(PromptRow(prompt, seed, guidance))
    if not rows:
        raise ValueError(f"{path}: no prompts")
    return rows
