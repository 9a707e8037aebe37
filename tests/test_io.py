"""Tests for cdc.io: atomic writes leave nothing partial behind, even on a full disk."""

import errno
import json
import math
import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import cdc.io
from cdc.io import (
    OutputKindError,
    atomic_path,
    canonicalize_safetensors,
    check_output,
    load_json,
    save_image,
    save_json,
    save_npz,
    save_text,
)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_exception_leaves_nothing(tmp_path):
    target = tmp_path / "out.json"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("partial")
        raise RuntimeError("boom")
    assert leftovers(tmp_path) == []


def test_exception_keeps_previous_version(tmp_path):
    target = tmp_path / "out.txt"
    save_text("old", target)
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("new")
        raise RuntimeError("boom")
    assert target.read_text() == "old" and leftovers(tmp_path) == ["out.txt"]


def test_full_disk_leaves_nothing_and_names_path(tmp_path, monkeypatch):
    def write_half_then_fail(self, data):
        with open(self, "wb") as f:
            f.write(data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", write_half_then_fail)
    target = tmp_path / "sub" / "metrics.json"
    with pytest.raises(OSError, match=r"metrics\.json.*No space left") as info:
        save_json({"a": 1}, target)
    assert info.value.errno == errno.ENOSPC
    assert leftovers(tmp_path / "sub") == []


def test_directory_is_replaced_whole(tmp_path):
    target = tmp_path / "model"
    for files in (["a.bin", "b.bin"], ["c.bin"]):
        with atomic_path(target) as tmp:
            tmp.mkdir()
            for name in files:
                (tmp / name).write_text(name)
    assert leftovers(target) == ["c.bin"] and leftovers(tmp_path) == ["model"]


def test_failed_directory_write_keeps_old_directory(tmp_path):
    target = tmp_path / "model"
    target.mkdir()
    (target / "a.bin").write_text("a")
    with pytest.raises(ValueError), atomic_path(target) as tmp:
        tmp.mkdir()
        (tmp / "half.bin").write_text("x")
        raise ValueError("bad")
    assert leftovers(target) == ["a.bin"] and leftovers(tmp_path) == ["model"]


def test_writing_nothing_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing was written"), atomic_path(tmp_path / "x"):
        pass
    assert leftovers(tmp_path) == []


def test_json_round_trip_and_format(tmp_path):
    path = tmp_path / "m.json"
    save_json({"b": np.float32(0.5), "a": np.arange(2), "name": "🔫"}, path)
    text = path.read_text(encoding="utf-8")
    assert text.endswith("}\n") and text.index('"a"') < text.index('"b"') and "🔫" in text
    assert load_json(path) == {"a": [0, 1], "b": 0.5, "name": "🔫"}
    path.write_text("{oops")
    with pytest.raises(ValueError, match="m.json: invalid JSON"):
        load_json(path)


def test_unserialisable_json_writes_nothing(tmp_path):
    with pytest.raises(TypeError, match="x.json"):
        save_json({"a": object()}, tmp_path / "x.json")
    assert leftovers(tmp_path) == []


def test_save_image_png_is_deterministic(tmp_path):
    image = np.random.default_rng(0).integers(0, 256, (8, 6, 3), dtype=np.uint8)
    save_image(image, tmp_path / "a.png")
    save_image(image, tmp_path / "b.png")
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()
    assert Image.open(tmp_path / "a.png").format == "PNG"
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "a.png")), image)


@pytest.mark.parametrize("bad", [np.zeros((4, 4, 3)), np.zeros((4, 4), np.uint8)])
def test_save_image_rejects_bad_arrays(tmp_path, bad):
    with pytest.raises(ValueError, match="bad.png"):
        save_image(bad, tmp_path / "bad.png")
    assert leftovers(tmp_path) == []


def test_save_npz_is_deterministic_and_loadable(tmp_path):
    arrays = {"images": np.arange(24, dtype=np.uint8).reshape(2, 2, 2, 3), "concept": np.array([3, 4])}
    save_npz(tmp_path / "a.npz", **arrays)
    save_npz(tmp_path / "b.npz", **arrays)
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()
    with np.load(tmp_path / "a.npz") as loaded:
        assert sorted(loaded.files) == ["concept", "images"]
        np.testing.assert_array_equal(loaded["images"], arrays["images"])
    assert json.dumps(leftovers(tmp_path)) == '["a.npz", "b.npz"]'


def _rewrite_header(path, reorder) -> None:
    """Rewrite a safetensors header through `reorder(header) -> header` (as another process might write it)."""
    blob = path.read_bytes()
    n = int.from_bytes(blob[:8], "little")
    text = json.dumps(reorder(json.loads(blob[8 : 8 + n]))).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(len(text).to_bytes(8, "little") + text + blob[8 + n :])


def test_canonical_safetensors_bytes_do_not_depend_on_header_order(tmp_path):
    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    tensors = {"b.weight": torch.arange(6.0).reshape(2, 3), "a.weight": torch.ones(4, dtype=torch.float16)}
    meta = {"format": "pt", "lora_adapter_metadata": json.dumps({"r": 4, "target_modules": ["x", "y"]})}
    files = [tmp_path / "one.safetensors", tmp_path / "two.safetensors"]
    for f in files:
        save_file(tensors, str(f), metadata=meta)
    _rewrite_header(files[1], lambda h: {k: (dict(reversed(v.items())) if k == "__metadata__" else v)
                                          for k, v in reversed(h.items())})
    assert files[0].read_bytes() != files[1].read_bytes()
    for f in files:
        canonicalize_safetensors(f)
    assert files[0].read_bytes() == files[1].read_bytes()
    loaded = load_file(str(files[1]))
    assert all(torch.equal(loaded[k], v) for k, v in tensors.items())
    with safe_open(str(files[1]), "pt") as f:
        assert f.metadata() == meta


def test_file_never_replaces_directory(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    (images / "0000.png").write_bytes(b"png")
    with pytest.raises(OutputKindError, match=r"images: it exists as a directory and the output is a file"):
        save_text("file,concept\n", images)
    assert leftovers(images) == ["0000.png"] and leftovers(tmp_path) == ["images"]


def test_directory_never_replaces_file(tmp_path):
    target = tmp_path / "report.ipynb"
    target.write_text("keep")
    with pytest.raises(OutputKindError, match=r"report\.ipynb: it exists as a file and the output is a directory"):
        with atomic_path(target) as tmp:
            tmp.mkdir()
            (tmp / "a.bin").write_text("a")
    assert target.read_text() == "keep" and leftovers(tmp_path) == ["report.ipynb"]


def test_kind_given_is_checked_before_the_body_runs(tmp_path):
    (tmp_path / "out").mkdir()
    ran = []
    with pytest.raises(OutputKindError, match="out"), atomic_path(tmp_path / "out", kind="file"):
        ran.append(True)
    assert ran == [] and leftovers(tmp_path) == ["out"]


@pytest.mark.parametrize(("existing", "kind"), [("dir", "file"), ("file", "dir")])
def test_check_output_rejects_the_other_kind(tmp_path, existing, kind):
    path = tmp_path / "x"
    path.mkdir() if existing == "dir" else path.write_text("x")
    with pytest.raises(OutputKindError, match=re.escape(str(path))):
        check_output(path, kind)


def test_check_output_accepts_same_kind_and_new_paths(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "f").write_text("x")
    assert check_output(tmp_path / "d", "dir") == tmp_path / "d"
    assert check_output(str(tmp_path / "f"), "file") == tmp_path / "f"
    assert check_output(tmp_path / "new" / "deeper" / "m.json", "file") == tmp_path / "new" / "deeper" / "m.json"
    with pytest.raises(ValueError, match="kind must be"):
        check_output(tmp_path / "d", "folder")


def test_check_output_rejects_a_file_as_parent(tmp_path):
    (tmp_path / "results").write_text("not a folder")
    with pytest.raises(OutputKindError, match=r"m\.json: .*results is a file, not a directory"):
        check_output(tmp_path / "results" / "sub" / "m.json", "file")
    with pytest.raises(OutputKindError, match=r"results is a file"):
        save_json({}, tmp_path / "results" / "m.json")
    assert leftovers(tmp_path) == ["results"]


def test_check_output_rejects_a_read_only_parent(tmp_path, monkeypatch):
    # os.access is patched: the tests may run as root, for whom every folder is writable.
    monkeypatch.setattr(cdc.io.os, "access", lambda path, mode: Path(path) != tmp_path)
    with pytest.raises(PermissionError, match=re.escape(f"{tmp_path / 'new' / 'm.json'}: {tmp_path} is not writable")):
        check_output(tmp_path / "new" / "m.json", "file")


def test_nan_is_not_written_as_json(tmp_path):
    for bad in (math.nan, np.float32("inf"), [1.0, -math.inf]):
        with pytest.raises(ValueError, match=r"cannot write .*m\.json as JSON"):
            save_json({"fid": bad}, tmp_path / "m.json")
    assert leftovers(tmp_path) == []


def test_load_json_rejects_bytes_that_are_not_utf8(tmp_path):
    path = tmp_path / "m.json"
    path.write_bytes(b'{"a": "\xff"}')
    with pytest.raises(ValueError, match="m.json: invalid JSON"):
        load_json(path)


@pytest.mark.parametrize(
    "blob",
    [b"", b"\x05\x00", (1000).to_bytes(8, "little") + b"{}", (4).to_bytes(8, "little") + b"{oop",
     (2).to_bytes(8, "little") + b"[]", (2).to_bytes(8, "little") + b"\xff\xfe"],
)
def test_corrupt_safetensors_names_the_file(tmp_path, blob):
    path = tmp_path / "model.safetensors"
    path.write_bytes(blob)
    with pytest.raises(ValueError, match=r"model\.safetensors: not a safetensors file"):
        canonicalize_safetensors(path)
    assert path.read_bytes() == blob and leftovers(tmp_path) == ["model.safetensors"]


def test_full_disk_in_a_directory_output_keeps_old_version(tmp_path, monkeypatch):
    target = tmp_path / "model"
    with atomic_path(target) as tmp:
        tmp.mkdir()
        (tmp / "old.bin").write_text("old")

    def no_space(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", no_space)
    with pytest.raises(OSError, match=r"could not write .*model: .*No space left") as info:
        with atomic_path(target) as tmp:
            tmp.mkdir()
            save_json({"a": 1}, tmp / "config.json")
    assert info.value.errno == errno.ENOSPC
    assert leftovers(tmp_path) == ["model"] and leftovers(target) == ["old.bin"]


_HOLD_TMP_UNTIL_KILLED = """
import sys, time
from pathlib import Path
from cdc.io import atomic_path
with atomic_path(sys.argv[1]) as tmp:
    if sys.argv[2] == "dir":
        tmp.mkdir()
        (tmp / "part.bin").write_bytes(b"x" * 1000)
    else:
        tmp.write_bytes(b"partial")
    print(tmp, flush=True)
    time.sleep(60)
"""


@pytest.mark.parametrize("kind", ["file", "dir"])
def test_sigterm_removes_the_temporary(tmp_path, kind):
    target = tmp_path / "out" / "model"
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLD_TMP_UNTIL_KILLED, str(target), kind],
        stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[1],
    )
    try:
        tmp = Path(proc.stdout.readline().strip())
        assert tmp.exists(), "the child did not write its temporary"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 128 + signal.SIGTERM
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
    assert leftovers(tmp_path / "out") == []


def test_sigterm_during_the_move_lets_it_finish(tmp_path, monkeypatch):
    target = tmp_path / "model"
    with atomic_path(target) as tmp:
        tmp.mkdir()
        (tmp / "old.bin").write_text("old")
    replace = os.replace

    def replace_then_sigterm(src, dst):
        replace(src, dst)
        os.kill(os.getpid(), signal.SIGTERM)  # handled right after this call returns

    monkeypatch.setattr(cdc.io.os, "replace", replace_then_sigterm)
    with pytest.raises(SystemExit) as info, atomic_path(target) as tmp:
        tmp.mkdir()
        (tmp / "new.bin").write_text("new")
    assert info.value.code == 128 + signal.SIGTERM
    assert leftovers(tmp_path) == ["model"] and leftovers(target) == ["new.bin"]


def _marker_handler(signum, frame):
    """A SIGTERM handler that is recognisable when restored."""


def test_sigterm_handlers_nest_and_are_restored(tmp_path):
    before = signal.signal(signal.SIGTERM, _marker_handler)
    try:
        with atomic_path(tmp_path / "outer") as outer:
            handler = signal.getsignal(signal.SIGTERM)
            assert handler is not _marker_handler
            outer.mkdir()
            with atomic_path(outer / "inner.txt") as inner:
                inner.write_text("x")
            assert signal.getsignal(signal.SIGTERM) is handler
            with pytest.raises(RuntimeError), atomic_path(outer / "failed.txt") as inner:
                raise RuntimeError("boom")
            assert signal.getsignal(signal.SIGTERM) is handler
        assert signal.getsignal(signal.SIGTERM) is _marker_handler
    finally:
        signal.signal(signal.SIGTERM, before)
    assert leftovers(tmp_path / "outer") == ["inner.txt"]


def test_atomic_path_works_outside_the_main_thread(tmp_path):
    errors: list[BaseException] = []

    def write() -> None:
        try:
            save_text("x", tmp_path / "t.txt")
        except BaseException as exc:  # reported to the main thread
            errors.append(exc)

    before = signal.getsignal(signal.SIGTERM)
    thread = threading.Thread(target=write)
    thread.start()
    thread.join()
    assert errors == [] and (tmp_path / "t.txt").read_text() == "x"
    assert signal.getsignal(signal.SIGTERM) is before


def test_output_that_appears_meanwhile_is_not_replaced(tmp_path):
    """replace=False (a command without --overwrite): what another run put at the path while this one worked
    stays, and this run's output is kept beside it under a name the error gives."""
    out = tmp_path / "out"
    with pytest.raises(FileExistsError, match="appeared while this command ran") as err:
        with cdc.io.atomic_path(out, replace=False) as tmp:
            tmp.mkdir()
            (tmp / "mine.txt").write_text("mine")
            out.mkdir()
            (out / "theirs.txt").write_text("theirs")
    assert (out / "theirs.txt").read_text() == "theirs" and not (out / "mine.txt").exists()
    kept = tmp_path / f"out.{os.getpid()}"
    assert str(kept) in str(err.value) and (kept / "mine.txt").read_text() == "mine"


def test_file_output_that_appears_meanwhile_is_not_replaced(tmp_path):
    out = tmp_path / "table.csv"
    with pytest.raises(FileExistsError):
        with cdc.io.atomic_path(out, replace=False) as tmp:
            tmp.write_text("mine")
            out.write_text("theirs")
    assert out.read_text() == "theirs"
    assert (tmp_path / f"table.csv.{os.getpid()}").read_text() == "mine"


def test_no_replace_still_fills_an_empty_folder(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    with cdc.io.atomic_path(out, replace=False) as tmp:
        tmp.mkdir()
        (tmp / "a.txt").write_text("a")
    assert (out / "a.txt").read_text() == "a"
