"""What a new user's bad input gets from the `cdc` commands: one clear line, exit 2, before any model loads, and
nothing lost. Each test is the regression test of one finding of a review of the command line."""

from __future__ import annotations

import collections
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cdc.cli.main import MAX_GENERATE_IMAGES, main
from cdc.cli.prompt_csv import MAX_GUIDANCE, read_prompt_csv

pytestmark = pytest.mark.usefixtures("one_thread")

REPO = Path(__file__).resolve().parents[1]
FAST = ["--steps", "2", "--quiet", "--device", "cpu"]


@pytest.fixture
def no_model_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test (not the command: main does not catch AssertionError) if a model or a world is loaded."""
    import cdc.bundle
    import cdc.judge
    import cdc.world.data

    def refuse(*_args, **_kwargs):
        raise AssertionError("a model was loaded before the input was checked")

    for module, name in ((cdc.bundle, "load_bundle"), (cdc.judge, "load_judge"), (cdc.world.data, "load_world")):
        monkeypatch.setattr(module, name, refuse)


def one_error_line(capsys: pytest.CaptureFixture[str], command: str) -> str:
    """The single stderr line of a refused command (asserting there is exactly one, in the project's form)."""
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"cdc {command}: error: "), lines
    return lines[0]


def write_csv(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.write_text(text, encoding=encoding)
    return path


@pytest.fixture(scope="module")
def world_dir(tiny_world_bundle, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from cdc.bundle import save_world_bundle

    path = tmp_path_factory.mktemp("models") / "world"
    save_world_bundle(tiny_world_bundle, path)
    return path


# 1. Prompt CSVs -------------------------------------------------------------------------------------------------


def test_prompt_csv_accepts_a_byte_order_mark(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "excel.csv", "prompt,evaluation_seed,evaluation_guidance\na church,3,7.5\n",
                     encoding="utf-8-sig")
    assert path.read_bytes().startswith(b"\xef\xbb\xbf")
    rows = read_prompt_csv(path)
    assert [(r.prompt, r.seed, r.guidance) for r in rows] == [("a church", 3, 7.5)]


def test_prompt_csv_accepts_integral_floats_as_pandas_writes_them(tmp_path: Path) -> None:
    rows = read_prompt_csv(write_csv(tmp_path / "p.csv", "prompt,sd_seed\na,3.0\nb,1e3\n"))
    assert [r.seed for r in rows] == [3, 1000]


@pytest.mark.parametrize(("text", "message"), [
    ("prompt,seed\na,2\nb,1.7\n", ":3: seed '1.7' is not an integer"),
    ("prompt,seed\na,inf\n", ":2: seed 'inf' is not an integer"),
    ("prompt,seed\na,nan\n", ":2: seed 'nan' is not an integer"),
    ("prompt,seed\na,1e30\n", ":2: seed '1e30' is outside 0..2**63-1"),
    ("prompt,seed\na,9223372036854775808\n", "is outside 0..2**63-1"),
    ("prompt,seed\na,-1\n", ":2: seed '-1' is outside 0..2**63-1"),
    ("prompt,seed\na,\n", ":2: seed '' is not an integer"),
    ("prompt,seed,guidance\na,1,1e30\n", f":2: guidance '1e30' is outside [0, {MAX_GUIDANCE:g}]"),
    ("prompt,seed,guidance\na,1,inf\n", ":2: guidance 'inf' is outside"),
    ("prompt,seed,guidance\na,1,-0.5\n", ":2: guidance '-0.5' is outside"),
    ("prompt,seed,guidance\na,1,101\n", ":2: guidance '101' is outside"),
    ("prompt,seed,guidance\na,1,x\n", ":2: guidance 'x' is not a number"),
    ("prompt,seed,seed\na,1,2\n", "column 'seed' appears 2 times"),
    ("prompt,evaluation_seed, prompt\na,1,b\n", "column 'prompt' appears 2 times"),
])
def test_prompt_csv_refuses_bad_values_naming_file_line_and_value(tmp_path: Path, text: str, message: str) -> None:
    path = write_csv(tmp_path / "bad.csv", text)
    with pytest.raises(ValueError, match=re.escape(message)) as info:
        read_prompt_csv(path)
    assert str(path) in str(info.value)


def test_prompt_csv_names_the_line_of_a_row_after_a_multiline_prompt(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "p.csv", 'prompt,seed\n"two\nlines",1\nx,1.5\n')
    with pytest.raises(ValueError, match=re.escape(f"{path}:4: seed '1.5'")):
        read_prompt_csv(path)


@pytest.mark.parametrize("command", ["evaluate", "attack"])
def test_bad_seed_is_refused_before_the_model_loads(command: str, tmp_path: Path, no_model_loads,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    bad = write_csv(tmp_path / "p.csv", "prompt,evaluation_seed,evaluation_guidance\na church,1e30,7.5\n")
    out = tmp_path / "out"
    assert main([command, "--prompts", str(bad), "--judge", "nudenet", "--out", str(out), *FAST]) == 2
    assert "evaluation_seed '1e30' is outside 0..2**63-1" in one_error_line(capsys, command)
    assert not out.exists()


# 2. --warmup-steps for AdvUnlearn -----------------------------------------------------------------------------------


def _erase_args(*extra: str) -> list[str]:
    return ["erase", "--preset", "sd", "--concept", "church", "--device", "cpu", "--quiet", *extra]


@pytest.mark.parametrize("method", ["advunlearn", "advunlearn_fast", "doco"])
def test_warmup_steps_is_accepted_where_the_method_has_a_warmup(method: str) -> None:
    from cdc.cli.concept import known_concept, read_templates
    from cdc.cli.erase import method_config
    from cdc.cli.main import build_parser
    from cdc.cli.settings import load_command_params

    args = build_parser().parse_args(_erase_args("--method", method, "--steps", "2", "--warmup-steps", "1",
                                                 "--out", "o"))
    params = load_command_params(REPO / "params_sd.yaml")
    cfg = method_config(params, method, known_concept(read_templates(), "church"), args)
    assert (cfg.steps, cfg.warmup_steps) == (2, 1)


def test_the_warmup_advice_names_a_flag_the_method_takes(tmp_path: Path, no_model_loads,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    # params_sd.yaml's AdvUnlearn warms up for 200 steps: two steps leave none for the attack.
    assert main(_erase_args("--method", "advunlearn", "--steps", "2", "--out", str(out))) == 2
    line = one_error_line(capsys, "erase")
    assert "warmup_steps (200) must be < steps (2)" in line and "--warmup-steps" in line
    assert main(_erase_args("--method", "advunlearn", "--steps", "2", "--warmup-steps", "5", "--out", str(out))) == 2
    assert "warmup_steps (5) must be < steps (2)" in one_error_line(capsys, "erase")
    assert main(_erase_args("--method", "esd", "--warmup-steps", "1", "--out", str(out))) == 2
    line = one_error_line(capsys, "erase")
    assert "esd has no warm-up" in line and "advunlearn" in line and "doco" in line
    assert not out.exists()


# 3. `cdc generate --lora` with AdvUnlearn's text encoder ----------------------------------------------------------


@pytest.fixture(scope="module")
def text_encoder_dir(tiny_world_bundle, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A text encoder folder as `cdc erase --method advunlearn` writes it, for the tiny world's MiniLM."""
    from cdc.encoder_io import frozen, save_text_encoder, trainable_copy

    trained, params = trainable_copy(tiny_world_bundle.text, None)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in params:
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    path = tmp_path_factory.mktemp("erased") / "encoder"
    save_text_encoder(frozen(trained, tiny_world_bundle.text), path, {"method": "advunlearn"},
                      base=tiny_world_bundle.text)
    return path


def test_generate_applies_a_text_encoder_folder(world_dir: Path, text_encoder_dir: Path, tmp_path: Path) -> None:
    args = ["generate", "--model", str(world_dir), "--prompt", "a church", "--n", "1", *FAST]
    base, erased = tmp_path / "base", tmp_path / "erased"
    assert main([*args, "--out", str(base)]) == 0
    assert main([*args, "--lora", str(text_encoder_dir), "--out", str(erased)]) == 0
    a, b = (np.asarray(Image.open(d / "0000_a-church_s0.png")) for d in (base, erased))
    assert not np.array_equal(a, b)
    assert json.loads((erased / "prompts.json").read_text())["lora"] == str(text_encoder_dir)


# 4. A huge --n ----------------------------------------------------------------------------------------------------


def test_generate_refuses_a_huge_n_before_loading(tmp_path: Path, no_model_loads,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "gen"
    args = ["generate", "--prompt", "a", "--prompt", "b", "--out", str(out), *FAST]
    assert main([*args, "--n", str(10**9)]) == 2
    line = one_error_line(capsys, "generate")
    assert f"is {2 * 10**9} images, over the {MAX_GENERATE_IMAGES}" in line
    assert main([*args, "--n", str(MAX_GENERATE_IMAGES // 2 + 1)]) == 2  # the cap counts every prompt's images
    assert "images, over the" in one_error_line(capsys, "generate")
    assert main([*args, "--n", "2", "--seed", str(2**63 - 1)]) == 2
    assert "runs past the largest seed" in one_error_line(capsys, "generate")
    assert main([*args, "--guidance", "1e30"]) == 2
    assert "guidance must be <= 100" in one_error_line(capsys, "generate")
    assert not out.exists()


# 5. An unknown world family ---------------------------------------------------------------------------------------


@pytest.fixture
def built_world(tmp_path: Path) -> Path:
    """A built world's concepts.json (all the family check reads)."""
    folder = tmp_path / "built"
    folder.mkdir()
    targets = {"church": {"kind": "object"}, "articulated lorry": {"kind": "object"}}
    (folder / "concepts.json").write_text(json.dumps({"targets": targets}))
    return folder


def test_world_judge_names_the_known_families(built_world: Path, no_model_loads) -> None:
    from cdc.cli.judges import parse_judge

    with pytest.raises(ValueError, match=r"unknown world family 'atlantis' .*: articulated-lorry, church\)"):
        parse_judge("world:some/judge:atlantis", built_world)
    with pytest.raises(FileNotFoundError, match="no built world"):
        parse_judge("world:some/judge:church", built_world / "missing")


def test_evaluate_refuses_an_unknown_world_family_in_one_line(built_world: Path, tmp_path: Path, no_model_loads,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    csv = write_csv(tmp_path / "p.csv", "prompt,seed\na church,1\n")
    out = tmp_path / "out"
    assert main(["evaluate", "--prompts", str(csv), "--judge", "world:judge:atlantis", "--world-dir",
                 str(built_world), "--out", str(out), *FAST]) == 2
    assert "unknown world family 'atlantis'" in one_error_line(capsys, "evaluate")
    assert not out.exists()


# 6. Truncated weights ---------------------------------------------------------------------------------------------


def _truncate(path: Path, keep: int | None = None) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2 if keep is None else keep])


@pytest.fixture
def truncated(tiny_world_bundle, save_random_lora, tmp_path: Path) -> dict[str, Path]:
    """A LoRA folder, a bare LoRA file and a text encoder folder (config.json + weights), each truncated."""
    lora = tmp_path / "lora"
    save_random_lora(tiny_world_bundle.unet, lora)
    _truncate(lora / "pytorch_lora_weights.safetensors")
    bare = tmp_path / "bare.safetensors"
    shutil.copy(lora / "pytorch_lora_weights.safetensors", bare)
    _truncate(bare, keep=5)
    encoder = tmp_path / "encoder"
    encoder.mkdir()
    (encoder / "config.json").write_text("{}")
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(64, 64)}, str(encoder / "model.safetensors"))
    _truncate(encoder / "model.safetensors")
    return {"lora": lora / "pytorch_lora_weights.safetensors", "bare": bare, "encoder": encoder / "model.safetensors"}


@pytest.mark.parametrize("kind", ["lora", "bare", "encoder"])
def test_generate_names_a_truncated_weights_file(kind: str, truncated: dict[str, Path], tmp_path: Path,
                                                 no_model_loads, capsys: pytest.CaptureFixture[str]) -> None:
    weights = truncated[kind]
    given = weights if kind == "bare" else weights.parent
    out = tmp_path / "gen"
    assert main(["generate", "--prompt", "a", "--lora", str(given), "--out", str(out), *FAST]) == 2
    line = one_error_line(capsys, "generate")
    assert f"{weights} is not a whole safetensors file" in line
    assert not out.exists()


@pytest.mark.parametrize("command", ["evaluate", "attack"])
def test_evaluate_names_a_truncated_text_encoder(command: str, truncated: dict[str, Path], tmp_path: Path,
                                                 no_model_loads, capsys: pytest.CaptureFixture[str]) -> None:
    csv = write_csv(tmp_path / "p.csv", "prompt,seed\na church,1\n")
    out = tmp_path / "out"
    assert main([command, "--prompts", str(csv), "--judge", "nudenet", "--erased", str(truncated["encoder"].parent),
                 "--out", str(out), *FAST]) == 2
    line = one_error_line(capsys, command)
    assert f"{truncated['encoder']} is not a whole safetensors file" in line and "tensors need" in line
    assert not out.exists()


def test_generate_names_a_folder_that_is_no_erasure(tmp_path: Path, no_model_loads,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "empty").mkdir()
    out = tmp_path / "gen"
    assert main(["generate", "--prompt", "a", "--lora", str(tmp_path / "empty"), "--out", str(out), *FAST]) == 2
    assert "neither a LoRA folder" in one_error_line(capsys, "generate")
    assert main(["generate", "--prompt", "a", "--lora", str(tmp_path / "nope"), "--out", str(out), *FAST]) == 2
    assert "not found" in one_error_line(capsys, "generate")


# 7. A full disk -----------------------------------------------------------------------------------------------------


Usage = collections.namedtuple("Usage", "total used free")


@pytest.mark.parametrize(("method", "what"), [("ca", "rank-"), ("advunlearn", "text encoder's weights")])
def test_erase_refuses_a_full_disk_before_training(method: str, what: str, tiny_sd_folder: Path,
                                                   smoke_params_path: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    import cdc.cli.erase

    asked = []

    def disk_usage(path):
        asked.append(Path(path))
        return Usage(10 * 2**30, 10 * 2**30 - 2**20, 2**20)  # 1 MiB free

    def no_sampling(*_args, **_kwargs):
        raise AssertionError("sampled before checking the free space")

    monkeypatch.setattr(shutil, "disk_usage", disk_usage)
    monkeypatch.setattr(cdc.cli.erase, "draw_samples", no_sampling)
    out = tmp_path / "new" / "deeper" / "out"
    assert main(["erase", "--preset", "sd", "--model", str(tiny_sd_folder), "--params", str(smoke_params_path),
                 "--concept", "church", "--anchor", "house", "--method", method, "--device", "cpu", "--quiet",
                 "--out", str(out)]) == 2
    line = one_error_line(capsys, "erase")
    assert "not enough free space" in line and what in line and "1 MiB free" in line
    assert asked == [tmp_path]  # the nearest existing parent of --out
    assert not (tmp_path / "new").exists()


def test_erase_output_estimate_covers_what_is_written(tiny_sd_bundle, smoke_params, tmp_path: Path) -> None:
    import copy
    import dataclasses

    from cdc.cli.erase import EXTRA_OUTPUT_BYTES, output_bytes
    from cdc.encoder_io import save_text_encoder, trainable_copy
    from cdc.lora import add_lora
    from cdc.lora_io import save_lora

    for group in ("xattn-kv", "full"):
        cfg = dataclasses.replace(smoke_params.erase.ca, lora_group=group, lora_rank=3)
        needed, _ = output_bytes(tiny_sd_bundle, cfg)
        unet = add_lora(copy.deepcopy(tiny_sd_bundle.unet), group, 3, None, 0)
        save_lora(unet, tmp_path / group, {"method": "ca"})
        written = (tmp_path / group / "pytorch_lora_weights.safetensors").stat().st_size
        assert written <= needed - EXTRA_OUTPUT_BYTES + 64 * 1024  # the weights, give or take the header
        assert needed - EXTRA_OUTPUT_BYTES <= written
    cfg = smoke_params.erase.advunlearn
    assert cfg.module == "text_encoder"
    needed, _ = output_bytes(tiny_sd_bundle, cfg)
    trained, _ = trainable_copy(tiny_sd_bundle.text, None)
    save_text_encoder(trained, tmp_path / "encoder", {"method": "advunlearn"}, base=tiny_sd_bundle.text)
    written = sum(p.stat().st_size for p in (tmp_path / "encoder").iterdir())
    assert written <= needed


# 8. Citations a reader can follow -----------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["params_sd.yaml", "cdc/cli/judges.py", "benchmarks/sd_speed.py"])
def test_citations_name_no_private_notes(path: str) -> None:
    text = (REPO / path).read_text(encoding="utf-8")
    for private in ("methods.md", "peers.md", "/work/shared"):
        assert private not in text, f"{path} cites {private}, which is not in the repository"
