"""`cdc generate` and `cdc judge` on tiny models, including bad input."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cdc.bundle import save_world_bundle
from cdc.cli import main

FAST = ["--steps", "2", "--quiet", "--device", "cpu"]


@pytest.fixture(scope="module")
def world_dir(tiny_world_bundle, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("models") / "world"
    save_world_bundle(tiny_world_bundle, path)
    return path


@pytest.fixture(scope="module")
def judge_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch

    from cdc.judge import JudgeNet, save_judge

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("models") / "judge"
    save_judge(JudgeNet(4, 2, width=8), path, ["church", "fish", "bomb", "house"], ["twemoji", "openmoji"])
    return path


def test_generate_writes_images_grid_and_index(world_dir: Path, tmp_path: Path) -> None:
    prompts_file = tmp_path / "p.txt"
    prompts_file.write_text("# comment\n\na fish\n")
    out = tmp_path / "gen"
    rc = main(
        [
            "generate",
            "--model",
            str(world_dir),
            "--prompt",
            "a church!",
            "--prompts-file",
            str(prompts_file),
            "--n",
            "2",
            "--seed",
            "5",
            "--out",
            str(out),
            *FAST,
        ]
    )
    assert rc == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == [
        "0000_a-church_s5.png",
        "0001_a-church_s6.png",
        "0002_a-fish_s5.png",
        "0003_a-fish_s6.png",
        "grid.png",
        "prompts.json",
    ]
    assert np.asarray(Image.open(out / "0000_a-church_s5.png")).shape == (32, 32, 3)
    grid = np.asarray(Image.open(out / "grid.png"))
    assert grid.shape[0] > 2 * 64 and grid.shape[1] > 2 * 64  # 2 x 2 cells at scale 2
    index = json.loads((out / "prompts.json").read_text())
    assert [r["prompt"] for r in index["images"]] == ["a church!", "a church!", "a fish", "a fish"]
    # Refuses to overwrite a non-empty folder unless asked.
    assert main(["generate", "--model", str(world_dir), "--prompt", "x", "--out", str(out), *FAST]) == 2
    assert (
        main(
            [
                "generate",
                "--model",
                str(world_dir),
                "--prompt",
                "x",
                "--n",
                "1",
                "--out",
                str(out),
                "--overwrite",
                *FAST,
            ]
        )
        == 0
    )
    assert sorted(p.name for p in out.iterdir()) == ["0000_x_s0.png", "grid.png", "prompts.json"]


def test_generate_bad_input(world_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "gen"
    assert main(["generate", "--model", str(world_dir), "--out", str(out), *FAST]) == 2
    assert "no prompts given" in capsys.readouterr().err
    assert main(["generate", "--model", str(world_dir), "--prompt", " ", "--out", str(out), *FAST]) == 2
    assert "prompt 1 is empty" in capsys.readouterr().err
    assert main(["generate", "--model", str(tmp_path / "missing"), "--prompt", "a", "--out", str(out), *FAST]) == 2
    assert "dvc repro pretrain" in capsys.readouterr().err
    assert main(["generate", "--preset", "dalle", "--prompt", "a", "--out", str(out), *FAST]) == 2
    assert "unknown preset" in capsys.readouterr().err
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_generate_with_lora(tiny_world_bundle, save_random_lora, world_dir: Path, tmp_path: Path) -> None:
    save_random_lora(tiny_world_bundle.unet, tmp_path / "lora")
    base, lora = tmp_path / "base", tmp_path / "with-lora"
    args = ["generate", "--model", str(world_dir), "--prompt", "a church", "--n", "1", *FAST]
    assert main([*args, "--out", str(base)]) == 0
    assert main([*args, "--out", str(lora), "--lora", str(tmp_path / "lora")]) == 0
    a, b = (np.asarray(Image.open(d / "0000_a-church_s0.png")) for d in (base, lora))
    assert not np.array_equal(a, b)
    assert json.loads((lora / "prompts.json").read_text())["lora"] == str(tmp_path / "lora")


def test_generate_sd_preset(tiny_sd_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "sd"
    rc = main(
        [
            "generate",
            "--preset",
            "sd",
            "--model",
            str(tiny_sd_folder),
            "--prompt",
            "a church",
            "--n",
            "2",
            "--guidance",
            "7.5",
            "--out",
            str(out),
            *FAST,
        ]
    )
    assert rc == 0 and (out / "grid.png").is_file() and (out / "0001_a-church_s1.png").is_file()


def test_judge_folder(judge_dir: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(imgs / f"{i}.png")
    out = tmp_path / "res.csv"
    assert (
        main(
            ["judge", "--judge", str(judge_dir), "--images", str(imgs), "--out", str(out), "--quiet", "--device", "cpu"]
        )
        == 0
    )
    rows = list(csv.DictReader(out.open()))
    assert [r["file"] for r in rows] == ["0.png", "1.png", "2.png"]
    assert all(
        r["concept"] in {"church", "fish", "bomb", "house"} and r["style"] in {"twemoji", "openmoji"} for r in rows
    )
    assert all(0 < float(r["concept_conf"]) <= 1 and 0.5 <= float(r["style_conf"]) <= 1 for r in rows)


def test_judge_generate_folder(
    judge_dir: Path, world_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gen = tmp_path / "gen"
    assert (
        main(["generate", "--model", str(world_dir), "--prompt", "a fish", "--n", "2", "--out", str(gen), *FAST]) == 0
    )
    capsys.readouterr()
    assert main(["judge", "--judge", str(judge_dir), "--images", str(gen), "--quiet", "--device", "cpu"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == "file,concept,concept_conf,style,style_conf" and len(lines) == 3  # grid/json skipped


def test_judge_bad_input(judge_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "mixed"
    folder.mkdir()
    judge = ["judge", "--judge", str(judge_dir), "--quiet", "--device", "cpu", "--images", str(folder)]
    assert main(judge) == 2
    assert "no images in" in capsys.readouterr().err
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(folder / "a.png")
    (folder / "b_notes.txt").write_text("hello")
    (folder / "c_more.csv").write_text("x")
    assert main(judge) == 2
    err = capsys.readouterr().err
    assert "b_notes.txt is not an image" in err and "c_more" not in err
    (folder / "b_notes.txt").unlink()
    (folder / "c_more.csv").unlink()
    (folder / "d_broken.png").write_bytes(b"not a png")
    assert main(judge) == 2
    assert "d_broken.png is not a readable image" in capsys.readouterr().err
    assert main(["judge", "--judge", str(tmp_path / "nojudge"), "--images", str(folder), "--quiet"]) == 2
    assert "dvc repro judge" in capsys.readouterr().err
