"""`cdc generate` and `cdc judge` on tiny models, including bad input."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cdc.bundle import save_world_bundle
from cdc.cli.main import build_parser, main, sampler_settings
from cdc.stages.schema import load_section

FAST: list[str] = []  # set by the autouse fixture below: the smoke params, 2 sampler steps, quiet, CPU


@pytest.fixture(autouse=True)
def fast(smoke_params_path: Path) -> None:
    FAST[:] = ["--params", str(smoke_params_path), "--steps", "2", "--quiet", "--device", "cpu"]


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


@pytest.mark.slow
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
    # an existing --out is kept unless --overwrite says otherwise
    out.write_text("mine\n")
    args = ["judge", "--judge", str(judge_dir), "--images", str(imgs), "--out", str(out), "--quiet", "--device", "cpu"]
    assert main(args) == 2 and out.read_text() == "mine\n"
    assert main([*args, "--overwrite"]) == 0 and out.read_text().startswith("file,concept")


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


def test_generate_defaults_are_the_sample_section() -> None:
    args = build_parser().parse_args(["generate", "--prompt", "a", "--out", "o"])
    assert args.params == "params.yaml"
    assert sampler_settings(args) == load_section("sample", "params.yaml")
    args = build_parser().parse_args(["generate", "--prompt", "a", "--out", "o", "--steps", "7", "--eta", "0"])
    cfg = sampler_settings(args)
    assert (cfg.steps, cfg.eta, cfg.guidance) == (7, 0.0, load_section("sample", "params.yaml").guidance)


@pytest.mark.slow
def test_generate_without_sampler_flags_is_the_pipeline_sampler(
    world_dir: Path, smoke_params_path: Path, smoke_params, tmp_path: Path
) -> None:
    from cdc.bundle import load_bundle
    from cdc.sampler import sample

    out = tmp_path / "gen"
    args = ["generate", "--model", str(world_dir), "--params", str(smoke_params_path), "--prompt", "a church",
            "--prompt", "a fish", "--n", "2", "--quiet", "--device", "cpu", "--out", str(out)]
    assert main(args) == 0
    seed = smoke_params.sample.seed
    expected = sample(load_bundle("world", world_dir), ["a church"] * 2 + ["a fish"] * 2,
                      [seed, seed + 1] * 2, smoke_params.sample, progress=False)
    files = [r["file"] for r in json.loads((out / "prompts.json").read_text())["images"]]
    got = np.stack([np.asarray(Image.open(out / f)) for f in files])
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize(("flags", "message"), [
    (["--guidance", "nan"], "guidance must be finite"),
    (["--guidance", "inf"], "guidance must be finite"),
    (["--guidance", "-1"], "guidance must be >= 0"),
    (["--eta", "5"], "eta must be in [0, 1]"),
    (["--steps", "0"], "steps must be >= 1"),
    (["--device", "cdu"], "unknown device"),
    (["--device", "cuda:7"], "not available"),
])
def test_generate_refuses_values_that_cannot_run(
    world_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], message: str
) -> None:
    out = tmp_path / "gen"
    assert main(["generate", "--model", str(world_dir), "--prompt", "a", "--out", str(out), *FAST, *flags]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_generate_refuses_out_that_is_a_file_before_sampling(
    world_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "notes.txt"
    out.write_text("mine")
    assert main(["generate", "--model", str(world_dir), "--prompt", "a", "--out", str(out), *FAST]) == 2
    assert "notes.txt" in capsys.readouterr().err and out.read_text() == "mine"


def _cdc_lora(bundle, folder: Path, nan: bool = False) -> None:
    """A LoRA saved by cdc (with its config) for `bundle`'s UNet, non-zero, optionally NaN."""
    import copy

    import torch

    from cdc.lora import add_lora, lora_parameters
    from cdc.lora_io import save_lora

    unet = add_lora(copy.deepcopy(bundle.unet), "xattn-kv", 2, None, 0)
    with torch.no_grad():
        for p in lora_parameters(unet):
            p.fill_(float("nan") if nan else 0.1)
    save_lora(unet, folder, {"method": "test"})


@pytest.mark.slow
def test_generate_refuses_a_lora_for_other_base_weights(
    tiny_world_bundle, world_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import copy

    import torch

    other = copy.deepcopy(tiny_world_bundle)
    with torch.no_grad():
        for p in other.unet.parameters():
            p.add_(0.01)
    _cdc_lora(other, tmp_path / "lora")
    args = ["generate", "--model", str(world_dir), "--prompt", "a", "--n", "1", "--lora", str(tmp_path / "lora"), *FAST]
    assert main([*args, "--out", str(tmp_path / "a")]) == 2
    assert "other base weights" in capsys.readouterr().err and not (tmp_path / "a").exists()
    with pytest.warns(UserWarning, match="loading it anyway"):
        assert main([*args, "--out", str(tmp_path / "b"), "--allow-other-base"]) == 0


def test_generate_refuses_a_nan_lora(
    tiny_world_bundle, world_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _cdc_lora(tiny_world_bundle, tmp_path / "lora", nan=True)
    out = tmp_path / "gen"
    args = ["generate", "--model", str(world_dir), "--prompt", "a", "--lora", str(tmp_path / "lora"), "--out", str(out)]
    assert main([*args, *FAST]) == 2
    assert "non-finite" in capsys.readouterr().err and not out.exists()


def test_judge_out_naming_the_image_folder_deletes_nothing(
    judge_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(folder / "a.png")
    args = ["judge", "--judge", str(judge_dir), "--images", str(folder), "--out", str(folder), "--quiet"]
    assert main([*args, "--device", "cpu"]) == 2
    assert str(folder) in capsys.readouterr().err
    assert [p.name for p in folder.iterdir()] == ["a.png"]


def test_sd_hub_id_offline_fails_at_once(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch) -> None:
    import time

    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    start = time.perf_counter()
    args = ["generate", "--preset", "sd", "--model", "nobody/no-such-model", "--prompt", "a",
            "--out", str(tmp_path / "o")]
    assert main([*args, *FAST]) == 2
    assert "not in the Hugging Face cache" in capsys.readouterr().err
    assert time.perf_counter() - start < 10


def test_judge_refuses_a_decompression_bomb(
    judge_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch
) -> None:
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(folder / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 32 x 32 is then over twice the limit
    args = ["judge", "--judge", str(judge_dir), "--images", str(folder), "--quiet", "--device", "cpu"]
    assert main(args) == 2
    assert "big.png is too large to decode" in capsys.readouterr().err


def test_judge_names_a_corrupt_judge(judge_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import shutil

    broken = tmp_path / "judge"
    shutil.copytree(judge_dir, broken)
    weights = next(p for p in broken.iterdir() if p.suffix == ".safetensors")
    weights.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{broken}")
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(folder / "a.png")
    assert main(["judge", "--judge", str(broken), "--images", str(folder), "--quiet", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert f"judge at {broken} could not be read" in err and len(err.strip().splitlines()) == 1
