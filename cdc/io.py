"""Atomic writers and small readers for every file `cdc` produces."""

from __future__ import annotations

import io
import json
import os
import shutil
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from PIL import Image

# Fixed zip timestamp (the earliest zip allows) so the same arrays always give the same bytes.
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)


def _remove(path: Path) -> None:
    """Delete a file, link or directory tree if it exists."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _move_into_place(tmp: Path, path: Path) -> None:
    """Replace `path` by `tmp`; directories are swapped via a rename-away so no mix is visible."""
    if not (tmp.exists() or tmp.is_symlink()):
        raise FileNotFoundError(f"nothing was written for {path} (expected {tmp})")
    replacing_dir = path.is_dir() and not path.is_symlink()
    if not replacing_dir and not tmp.is_dir():
        os.replace(tmp, path)  # atomic for files on one filesystem
        return
    # os.replace cannot overwrite a non-empty directory: move the old one aside first, and
    # put it back if the new one cannot be moved in.
    old = path.with_name(f".{path.name}.tmp-{os.getpid()}-old")
    _remove(old)
    had_old = path.exists() or path.is_symlink()
    if had_old:
        os.replace(path, old)
    try:
        os.replace(tmp, path)
    except BaseException:
        if had_old:
            os.replace(old, path)
        raise
    if had_old:
        _remove(old)


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary sibling of `path` to write (a file or a directory); move it to `path` on success.

    The caller creates the temporary path (e.g. `save_pretrained(tmp)` or `tmp.mkdir()`). The parent
    folder of `path` is created. On any exception the temporary path is removed, so no partial
    output is ever left at `path`; an OSError (e.g. a full disk) is re-raised naming `path`.
    The temporary name is `.{name}.tmp-{pid}{suffix}`: keeping the suffix matters because PIL,
    numpy (`savez` appends `.npz`) and papermill look at the extension.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}{path.suffix}")
    _remove(tmp)  # left over from a killed run that had the same pid
    try:
        yield tmp
        _move_into_place(tmp, path)
    except OSError as exc:
        _remove(tmp)
        if str(path) in str(exc) or exc.errno is None:
            raise
        # Same errno (so ENOSPC stays ENOSPC), but the message says which output failed.
        raise OSError(exc.errno, f"could not write {path}: {exc.strerror or exc}") from exc
    except BaseException:
        _remove(tmp)
        raise


def _write_bytes(data: bytes, path: str | os.PathLike[str]) -> None:
    """Write `data` to `path` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def _json_default(obj: Any) -> Any:
    """Turn numpy/torch scalars and arrays and paths into JSON values."""
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"object of type {type(obj).__name__} is not JSON serializable")


def save_json(obj: Any, path: str | os.PathLike[str]) -> None:
    """Write `obj` as JSON (indent 2, sorted keys, UTF-8, trailing newline) atomically."""
    try:
        text = json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False, default=_json_default)
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"cannot write {path} as JSON: {exc}") from exc
    _write_bytes((text + "\n").encode("utf-8"), path)


def load_json(path: str | os.PathLike[str]) -> Any:
    """Read a JSON file; a malformed file raises ValueError naming it."""
    text = Path(path).read_text(encoding="utf-8")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: invalid JSON: {exc}") from exc


def save_text(text: str, path: str | os.PathLike[str]) -> None:
    """Write a UTF-8 text file atomically."""
    _write_bytes(text.encode("utf-8"), path)


def save_image(image: np.ndarray, path: str | os.PathLike[str]) -> None:
    """Write a uint8 (H, W, 3) array as a PNG atomically, with no time-dependent metadata."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
        got = image.dtype if isinstance(image, np.ndarray) else type(image).__name__
        raise ValueError(f"save_image({path}): expected a uint8 array, got {got}")
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"save_image({path}): expected shape (H, W, 3), got {image.shape}")
    buf = io.BytesIO()
    # Explicit format: the extension of the temporary name is not trusted. PIL writes no
    # timestamp chunk unless asked, so the same pixels give the same bytes.
    Image.fromarray(np.ascontiguousarray(image), mode="RGB").save(buf, format="PNG")
    _write_bytes(buf.getvalue(), path)


def save_npz(path: str | os.PathLike[str], **arrays: ArrayLike) -> None:
    """Write arrays to a compressed .npz atomically, byte-identical for identical arrays."""
    if not arrays:
        raise ValueError(f"save_npz({path}): no arrays given")
    buf = io.BytesIO()
    # np.savez_compressed stamps the current time into each zip entry; a fixed date keeps
    # git- and DVC-versioned datasets stable across rebuilds.
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name in sorted(arrays):
            info = zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_EPOCH)
            info.compress_type = zipfile.ZIP_DEFLATED
            with zf.open(info, "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.asanyarray(arrays[name]), allow_pickle=False)
    _write_bytes(buf.getvalue(), path)


def canonicalize_safetensors(path: str | os.PathLike[str]) -> None:
    """Rewrite a .safetensors header with sorted keys, in place: the same tensors and metadata then
    always give the same bytes (safetensors writes `__metadata__` in hash-map order, which changes
    from process to process, so DVC would see an unchanged file as changed).

    Layout: 8-byte little-endian header length n, n bytes of JSON (space-padded to a multiple of 8),
    then the tensor data, whose offsets in the header are relative to the data, so they stay valid.
    """
    path = Path(path)
    blob = path.read_bytes()
    n = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8 : 8 + n])
    if isinstance(header.get("__metadata__"), dict):
        header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    text = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(len(text).to_bytes(8, "little") + text + blob[8 + n :])


__all__ = [
    "atomic_path",
    "canonicalize_safetensors",
    "load_json",
    "save_image",
    "save_json",
    "save_npz",
    "save_text",
]
