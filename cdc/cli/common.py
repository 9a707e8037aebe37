"""What every command shares: reading prompts and claiming an output folder."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


def read_prompts(prompts: Sequence[str] | None, prompts_file: str | None) -> list[str]:
    """--prompt values, then non-blank, non-# lines of --prompts-file; blank prompts are refused."""
    out = list(prompts or [])
    if prompts_file:
        path = Path(prompts_file)
        if not path.is_file():
            raise FileNotFoundError(f"prompts file not found: {path}")
        lines = path.read_text(encoding="utf-8").splitlines()
        out += [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    for i, p in enumerate(out):
        if not p.strip():
            raise ValueError(f"prompt {i + 1} is empty (give text; the empty prompt is only the CFG baseline)")
    if not out:
        raise ValueError("no prompts given: use --prompt TEXT (repeatable) or --prompts-file FILE")
    return out


def check_out_dir(out: Path, overwrite: bool) -> None:
    """Refuse to replace a non-empty output folder unless asked, or to write where a folder cannot go."""
    from cdc.io import check_output

    check_output(out, "dir")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"--out {out} exists and is not empty (pass --overwrite to replace it)")
