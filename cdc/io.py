"""Atomic writers and small readers for every file `cdc` produces."""

from __future__ import annotations

import errno
import io
import json
import os
import shutil
import signal
import threading
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike
from PIL import Image

# Fixed zip timestamp (the earliest zip allows) so the same arrays always give the same bytes.
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)


OutputKind = Literal["file", "dir"]


class OutputKindError(FileExistsError):
    """An output path, or one of its parent folders, exists as the wrong kind (file vs directory)."""


def _existing_kind(path: Path) -> OutputKind | None:
    """What `path` is now, links followed: "dir", "file", or None if nothing is there."""
    if path.is_dir():
        return "dir"
    return "file" if path.exists() else None


def _kind_error(path: Path, existing: OutputKind, new: OutputKind) -> OutputKindError:
    """The error for writing a `new` output over an `existing` one of the other kind."""
    what = {"dir": "a directory", "file": "a file"}
    return OutputKindError(
        f"cannot write {path}: it exists as {what[existing]} and the output is {what[new]}; "
        f"refusing to replace it (choose another path or remove it)"
    )


def _nearest_existing_parent(path: Path) -> Path:
    """The closest ancestor of `path` that exists; it must be a directory."""
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise OutputKindError(f"cannot write {path}: {parent} is a file, not a directory")
    return parent


def check_output(path: str | os.PathLike[str], kind: OutputKind) -> Path:
    """Raise unless `path` can be written as a `kind` output; run before any expensive work."""
    if kind not in ("file", "dir"):
        raise ValueError(f"check_output({path}): kind must be 'file' or 'dir', got {kind!r}")
    path = Path(path)
    existing = _existing_kind(path)
    if existing is not None and existing != kind:
        raise _kind_error(path, existing, kind)
    parent = _nearest_existing_parent(path)
    if not os.access(parent, os.W_OK):
        raise PermissionError(f"cannot write {path}: {parent} is not writable")
    return path


def _remove(path: Path) -> None:
    """Delete a file, link or directory tree if it exists."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _move_into_place(tmp: Path, path: Path, replace: bool = True) -> None:
    """Replace `path` by `tmp`; directories are swapped via a rename-away so no mix is visible.

    replace=False: `path` must still be absent (or an empty folder) when the move happens; what another
    process put there meanwhile stays, and this run's output is kept beside it (FileExistsError names both).
    """
    if not (tmp.exists() or tmp.is_symlink()):
        raise FileNotFoundError(f"nothing was written for {path} (expected {tmp})")
    existing, new = _existing_kind(path), _existing_kind(tmp) or "file"
    # A file must never wipe out a directory (e.g. an image folder given as a CSV output), nor the
    # other way round; only a directory refreshes a directory.
    if existing is not None and existing != new:
        raise _kind_error(path, existing, new)
    if not replace:
        _move_without_replacing(tmp, path)
        return
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


def _move_without_replacing(tmp: Path, path: Path) -> None:
    """Move `tmp` to `path` only if nothing is there (an empty folder counts as nothing): a folder by rename,
    which the kernel refuses onto a non-empty folder; a file by a hard link, which refuses any existing name."""
    try:
        if tmp.is_dir():
            os.rename(tmp, path)
        else:
            os.link(tmp, path)
            tmp.unlink()
        return
    except OSError as exc:
        if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
            raise
    kept = path.with_name(f"{path.name}.{os.getpid()}")
    os.rename(tmp, kept)
    raise FileExistsError(f"{path} appeared while this command ran (another run?); it was left as it is, and "
                          f"this run's output is at {kept}")


# While an output is being moved into place (main thread only), SIGTERM is recorded, not raised.
_sigterm_hold = {"depth": 0, "pending": False}


def _exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    """Turn SIGTERM into SystemExit so `atomic_path` removes its temporary before the process ends."""
    # A second SIGTERM must not interrupt the cleanup; the previous handler is restored after it.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if _sigterm_hold["depth"]:
        _sigterm_hold["pending"] = True
        return
    raise SystemExit(128 + signal.SIGTERM)


@contextmanager
def _hold_sigterm() -> Iterator[None]:
    """Delay SIGTERM's SystemExit to the end of the block, so a directory swap is never left half done."""
    if threading.current_thread() is not threading.main_thread():
        yield  # the handler runs in the main thread; a worker's move cannot be told apart
        return
    _sigterm_hold["depth"] += 1
    try:
        yield
    finally:
        _sigterm_hold["depth"] -= 1
        if _sigterm_hold["depth"] == 0 and _sigterm_hold["pending"]:
            _sigterm_hold["pending"] = False
            raise SystemExit(128 + signal.SIGTERM)


@contextmanager
def _sigterm_raises() -> Iterator[None]:
    """Within the block, SIGTERM raises SystemExit (main thread only); the previous handler is restored."""
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread may set signal handlers
        return
    previous = signal.getsignal(signal.SIGTERM)
    if previous is None:
        yield  # a handler installed outside Python could not be put back
        return
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def atomic_path(path: str | os.PathLike[str], kind: OutputKind | None = None, *,
                replace: bool = True) -> Iterator[Path]:
    """Yield a temporary sibling of `path` to write (a file or a directory); move it to `path` on success.

    The caller creates the temporary path (e.g. `save_pretrained(tmp)` or `tmp.mkdir()`). The parent
    folder of `path` is created. On any exception, SIGTERM included, the temporary path is removed, so
    no partial output is ever left at `path`; an OSError (e.g. a full disk) is re-raised naming `path`.
    A file never replaces a directory nor a directory a file (OutputKindError, `path` untouched);
    with `kind` given this is checked up front by `check_output`, else when moving into place.
    replace=False: never replace what is at `path` when the move happens (a command's output that the user
    did not ask to overwrite; see `_move_without_replacing`).
    The temporary name is `.{name}.tmp-{pid}{suffix}`: keeping the suffix matters because PIL,
    numpy (`savez` appends `.npz`) and papermill look at the extension.
    """
    path = Path(path)
    if kind is not None:
        check_output(path, kind)
    else:
        _nearest_existing_parent(path)  # a clear message rather than mkdir's bare "File exists"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}{path.suffix}")
    with _sigterm_raises():
        _remove(tmp)  # left over from a killed run that had the same pid
        try:
            yield tmp
            with _hold_sigterm():
                _move_into_place(tmp, path, replace)
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
    """Write `obj` as strict JSON (indent 2, sorted keys, UTF-8, trailing newline) atomically."""
    try:
        # allow_nan=False: `NaN`/`Infinity` are not JSON, and strict readers (jq, browsers) reject them.
        text = json.dumps(
            obj, indent=2, sort_keys=True, ensure_ascii=False, allow_nan=False, default=_json_default
        )
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"cannot write {path} as JSON: {exc}") from exc
    _write_bytes((text + "\n").encode("utf-8"), path)


def load_json(path: str | os.PathLike[str]) -> Any:
    """Read a JSON file; a malformed file raises ValueError naming it."""
    data = Path(path).read_bytes()
    try:
        return json.loads(data.decode("utf-8"))
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
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
    header, n = _safetensors_header(path, blob)
    if isinstance(header.get("__metadata__"), dict):
        header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    text = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    text += b" " * (-len(text) % 8)
    _write_bytes(len(text).to_bytes(8, "little") + text + blob[8 + n :], path)


def _safetensors_header(path: Path, blob: bytes) -> tuple[dict[str, Any], int]:
    """The JSON header of a .safetensors file and its length; a malformed file raises ValueError naming it."""
    if len(blob) < 8:
        raise ValueError(f"{path}: not a safetensors file ({len(blob)} bytes, too short for a header)")
    n = int.from_bytes(blob[:8], "little")
    if n > len(blob) - 8:
        raise ValueError(f"{path}: not a safetensors file (header of {n} bytes in a {len(blob)}-byte file)")
    try:
        header = json.loads(blob[8 : 8 + n].decode("utf-8"))
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
        raise ValueError(f"{path}: not a safetensors file (invalid header: {exc})") from exc
    if not isinstance(header, dict):
        raise ValueError(f"{path}: not a safetensors file (header is {type(header).__name__}, not an object)")
    return header, n


__all__ = [
    "OutputKind",
    "OutputKindError",
    "atomic_path",
    "canonicalize_safetensors",
    "check_output",
    "load_json",
    "save_image",
    "save_json",
    "save_npz",
    "save_text",
]
