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


SAFETENSORS_MAX_HEADER = 100_000_000  # safetensors refuses larger headers itself


def check_safetensors(path: Path) -> None:
    """Refuse a file that is not a whole safetensors file, reading only its header: an 8-byte little-endian
    header length, that many bytes of JSON, and the tensors' data, whose offsets must cover the rest exactly (a
    truncated or padded file does not)."""
    import json

    size = path.stat().st_size
    bad = f"{path} is not a whole safetensors file (truncated or corrupt?)"
    with path.open("rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ValueError(f"{bad}: {size} bytes, shorter than the 8-byte header length")
        n = int.from_bytes(head, "little")
        if n > min(size - 8, SAFETENSORS_MAX_HEADER):
            raise ValueError(f"{bad}: its header length says {n} bytes, but {size - 8} follow")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, ValueError):
            raise ValueError(f"{bad}: its {n}-byte header is not JSON") from None
    if not isinstance(header, dict):
        raise ValueError(f"{bad}: its header is not a JSON object")
    end = 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if (not isinstance(offsets, list) or len(offsets) != 2 or not all(isinstance(o, int) for o in offsets)
                or not 0 <= offsets[0] <= offsets[1]):
            raise ValueError(f"{bad}: tensor {name!r} has no valid data_offsets")
        end = max(end, offsets[1])
    data = size - 8 - n
    if end != data:
        raise ValueError(f"{bad}: its tensors need {end} bytes of data after the header, the file has {data}")


def check_erasure_files(value: str, flag: str) -> Path:
    """What `cdc.erased.erased_model` can apply, checked before any model loads: a text encoder folder (it holds
    config.json) or a LoRA folder or .safetensors file; every safetensors file it would read is checked whole."""
    from cdc.lora_io import WEIGHT_NAME

    path = Path(value)
    if path.is_dir():
        if (path / "config.json").is_file():  # a transformers text encoder folder (AdvUnlearn), as erased_model
            files = sorted(path.glob("*.safetensors"))
        else:
            files = [path / WEIGHT_NAME]
            if not files[0].is_file():
                raise FileNotFoundError(f"{flag} {path} is neither a LoRA folder (no {WEIGHT_NAME}) nor a text "
                                        "encoder folder (no config.json)")
    elif path.is_file():
        files = [path]
    else:
        raise FileNotFoundError(f"{flag} {path} not found (a LoRA folder or .safetensors file, or a text encoder "
                                "folder from `cdc erase --method advunlearn`)")
    for f in files:
        check_safetensors(f)
    return path


def check_free_space(out: Path, needed: int, what: str) -> None:
    """Refuse to start work whose output (`needed` bytes, described by `what`) would not fit on the filesystem
    of `out` (measured at its nearest existing parent)."""
    import shutil

    where = out.absolute()
    while not where.exists() and where != where.parent:
        where = where.parent
    free = shutil.disk_usage(where).free
    if free < needed:
        raise OSError(f"not enough free space for --out {out}: {_mib(needed)} needed ({what}), "
                      f"{_mib(free)} free on the filesystem of {where}")


def _mib(n: int) -> str:
    """Bytes as KiB, MiB or (from 10 GiB on) GiB, for messages."""
    if n < 2**20:
        return f"{n / 2**10:.0f} KiB"
    return f"{n / 2**30:.1f} GiB" if n >= 10 * 2**30 else f"{n / 2**20:.0f} MiB"
