"""Tests for cdc.io: atomic writes leave nothing partial behind, even on a full disk."""

import errno
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cdc.io import atomic_path, canonicalize_safetensors, load_json, save_image, save_json, save_npz, save_text


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
    torch = pytest.importorskip("torch")
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
