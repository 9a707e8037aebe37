"""`cdc erase` on the tiny SD pipeline, the prompt builders of cdc.cli.concept, and params_sd.yaml."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from cdc.cli.concept import (
    TEMPLATES_PATH,
    concept_pairs,
    known_concept,
    parse_templates,
    prompt_file_pairs,
    read_templates,
)
from cdc.cli.main import main
from cdc.io import load_json
from cdc.methods import known_methods, method_module
from cdc.stages.params import read_yaml
from cdc.stages.schema import load_params

REPO = Path(__file__).resolve().parents[1]
# Two captions keep sampling and training at a few seconds per run.
TINY_TEMPLATES = {
    "kinds": {"object": {"captions": ["a photo of {a}", "{a} in a field"]}},
    "concepts": {"church": {"concept": "church", "anchor": "house", "kind": "object"}},
    "retain": ["a photo of a dog", "a photo of a house", "a photo of a cat"],
}


@pytest.fixture(scope="module")
def templates_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("templates") / "templates.yaml"
    path.write_text(json.dumps(TINY_TEMPLATES))  # YAML 1.2 reads JSON
    return path


def erase(tiny_sd_folder: Path, params: Path, out: Path, *extra: str) -> int:
    """`cdc erase` on the tiny SD folder, 2 steps, 1 sample per prompt, quiet, on the CPU."""
    return main(["erase", "--preset", "sd", "--model", str(tiny_sd_folder), "--params", str(params),
                 "--steps", "2", "--samples-per-prompt", "1", "--device", "cpu", "--quiet", "--out", str(out),
                 *extra])


def unet_out(unet: torch.nn.Module) -> torch.Tensor:
    """The UNet's prediction on one fixed noisy latent and context."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 16, 16, generator=g)
    ctx = torch.randn(1, 77, 32, generator=g)
    with torch.no_grad():
        return unet(x, torch.tensor([500]), encoder_hidden_states=ctx).sample


def test_advunlearn_writes_a_text_encoder_clip_loads(tiny_sd_folder, smoke_params_path, templates_file, tmp_path,
                                                    one_thread) -> None:
    from transformers import CLIPTextModel

    out = tmp_path / "encoder"
    assert erase(tiny_sd_folder, smoke_params_path, out, "--concept", "church", "--method", "advunlearn",
                 "--templates", str(templates_file), "--warmup-steps", "1") == 0
    config = load_json(out / "cdc_config.json")
    assert config["method"] == "advunlearn" and config["params"]["module"] == "text_encoder"
    assert config["params"]["warmup_steps"] == 1  # --warmup-steps is AdvUnlearn's knob too
    pairs = load_json(out / "pairs.json")
    assert pairs["sampled"] == ["target"]
    assert pairs["retain_prompts"] == ["a photo of a dog", "a photo of a cat"]  # the anchor's prompt is left out
    base = CLIPTextModel.from_pretrained(str(tiny_sd_folder), subfolder="text_encoder", local_files_only=True)
    trained = CLIPTextModel.from_pretrained(str(out), local_files_only=True)  # plain transformers, no cdc
    ids = torch.tensor([[0, 5, 9, 1]])
    with torch.no_grad():
        assert (trained(ids).last_hidden_state - base(ids).last_hidden_state).abs().max() > 1e-7


@pytest.mark.parametrize("method", ["doco", "esd", "ca", "rdc"])
def test_erase_writes_a_lora_plain_diffusers_loads(method, tiny_sd_folder, smoke_params_path, templates_file,
                                                   tmp_path, one_thread) -> None:
    from diffusers import StableDiffusionPipeline

    out = tmp_path / "lora"
    # No --anchor: church's anchor comes from the templates' concept table.
    assert erase(tiny_sd_folder, smoke_params_path, out, "--concept", "church", "--method", method,
                 "--templates", str(templates_file)) == 0
    names = {p.name for p in out.iterdir()}
    assert names == {"pytorch_lora_weights.safetensors", "cdc_config.json", "pairs.json", "history.csv",
                     "samples_grid.png"}
    config = load_json(out / "cdc_config.json")
    assert (config["method"], config["concept"], config["anchor"]) == (method, "church", "house")
    assert config["base_model"] == str(tiny_sd_folder) and config["params"]["steps"] == 2
    pairs = load_json(out / "pairs.json")
    assert pairs["target_prompts"] == ["a photo of a church", "a church in a field"]
    assert pairs["anchor_prompts"] == ["a photo of a house", "a house in a field"]
    assert pairs["sampled"] == sorted(method_module(method).NEEDS)  # the sides the method trains on
    assert len((out / "history.csv").read_text().splitlines()) == 3  # header + 2 steps

    pipe = StableDiffusionPipeline.from_pretrained(str(tiny_sd_folder), local_files_only=True)
    before = unet_out(pipe.unet)
    pipe.load_lora_weights(str(out))
    assert (unet_out(pipe.unet) - before).abs().max() > 1e-7


def test_erase_from_a_prompts_file_with_overrides(tiny_sd_folder, smoke_params_path, tmp_path, one_thread) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# mine\nAn apple on a table\na red apple\n")
    out = tmp_path / "lora"
    rc = erase(tiny_sd_folder, smoke_params_path, out, "--concept", "apple", "--anchor", "pear", "--method", "ca",
               "--prompts-file", str(prompts), "--set", "lora_rank=2 prior_weight=0", "--lr", "0.01", "--seed", "3")
    assert rc == 0
    config = load_json(out / "cdc_config.json")
    assert config["params"]["lora_rank"] == 2 and config["lora"]["rank"] == 2
    assert (config["params"]["lr"], config["params"]["seed"], config["sample_seed"]) == (0.01, 3, 3)
    assert load_json(out / "pairs.json")["anchor_prompts"] == ["A pear on a table", "a red pear"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--concept", "church", "--anchor", "house", "--method", "uce"], "--method must be one of"),
        (["--concept", "church", "--anchor", "Church"], "the anchor equals the concept"),
        (["--concept", "a made-up thing"], "--anchor is required"),
        (["--concept", "church", "--anchor", "house", "--method", "esd", "--warmup-steps", "1"], "esd has no warm-up"),
        (["--concept", "church", "--anchor", "house", "--kind", "sculpture"], "unknown kind 'sculpture'"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args, message, tiny_sd_folder, smoke_params_path, tmp_path,
                                          capsys) -> None:
    assert erase(tiny_sd_folder, smoke_params_path, tmp_path / "out", *args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("cdc erase: error:") and message in err[0]
    assert not (tmp_path / "out").exists()


def test_bad_paths_are_one_line_and_exit_2(tiny_sd_folder, smoke_params_path, tmp_path, capsys) -> None:
    a_file = tmp_path / "taken"
    a_file.write_text("x")
    assert erase(tiny_sd_folder, smoke_params_path, a_file, "--concept", "church") == 2
    full = tmp_path / "full"
    full.mkdir()
    (full / "x").write_text("x")
    assert erase(tiny_sd_folder, smoke_params_path, full, "--concept", "church") == 2
    assert main(["erase", "--preset", "sd", "--model", str(tmp_path / "no-such-model"), "--params",
                 str(smoke_params_path), "--concept", "church", "--device", "cpu", "--quiet",
                 "--out", str(tmp_path / "out")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 3 and all(ln.startswith("cdc erase: error:") for ln in lines)
    assert "directory" in lines[0] and "--overwrite" in lines[1] and "not found" in lines[2]


def test_concept_pairs_from_templates() -> None:
    t = read_templates()
    style = concept_pairs("van gogh", "painting", t, "style")
    assert style.anchor_prompts[0] == "a painting of a city street at night"
    assert style.target_prompts[0] == "a painting of a city street at night, in the style of van gogh"
    assert style.target_prompts[1].startswith("in van gogh's style, a painting of")  # forms take turns
    obj = concept_pairs("apple", "house", t)
    assert obj.target_prompts[0] == "a photo of an apple" and obj.anchor_prompts[0] == "a photo of a house"
    with pytest.raises(ValueError, match="unknown kind"):
        concept_pairs("apple", "house", t, "nope")
    with pytest.raises(ValueError, match="anchor equals"):
        concept_pairs("Apple ", "apple", t)


def test_prompt_file_pairs_swap_whole_words_and_articles() -> None:
    pairs = prompt_file_pairs("cat", "owl", ["A cat on a mat", "the cat and a cat", "two cats? no: one cat"])
    assert pairs.anchor_prompts == ["An owl on a mat", "the owl and an owl", "two cats? no: one owl"]
    with pytest.raises(ValueError, match="does not name the concept"):
        prompt_file_pairs("cat", "owl", ["a category"])


def test_templates_are_checked() -> None:
    with pytest.raises(ValueError, match="lacks its slots"):
        parse_templates({"kinds": {"object": {"captions": ["a photo"]}}})
    with pytest.raises(ValueError, match="unknown kind"):
        parse_templates({"kinds": {"object": {"captions": ["{a}"]}},
                         "concepts": {"x": {"concept": "x", "anchor": "y", "kind": "style"}}})


def test_params_sd_holds_exactly_what_the_commands_read(tmp_path) -> None:
    from cdc.cli.settings import CommandParams, load_command_params
    from cdc.errors import ParamsError

    sd = load_command_params(REPO / "params_sd.yaml")
    assert sd.sample.steps == 50 and sd.sample.guidance == 7.5 and sd.erase.doco.steps == 2000
    assert list(read_yaml(REPO / "params_sd.yaml")) == [f.name for f in dataclasses.fields(CommandParams)]
    # every method the pipeline knows has its SD settings
    assert set(sd.erase.configs) == set(known_methods())
    # the pipeline's params.yaml gives the same sections, from its own values
    world = load_command_params(REPO / "params.yaml")
    assert world.erase.doco == load_params(REPO / "params.yaml").erase.doco
    # a section the commands do not read is refused, naming it
    extra = tmp_path / "sd.yaml"
    extra.write_text((REPO / "params_sd.yaml").read_text() + "\nevaluate:\n  seed: 1\n")
    with pytest.raises(ParamsError, match="unknown section 'evaluate'"):
        load_command_params(extra)
    # every paper concept has a shipped anchor
    shipped = read_templates(TEMPLATES_PATH)
    assert all(known_concept(shipped, c) is not None
               for c in ["church", "garbage truck", "parachute", "tench", "van gogh", "nudity"])


def test_erase_on_the_world_preset(tiny_world_bundle, smoke_params_path, templates_file, tmp_path,
                                   one_thread) -> None:
    from cdc.bundle import load_bundle, save_world_bundle
    from cdc.lora_io import load_lora

    model = tmp_path / "world"
    save_world_bundle(tiny_world_bundle, model)
    out = tmp_path / "lora"
    assert main(["erase", "--model", str(model), "--params", str(smoke_params_path), "--concept", "church",
                 "--templates", str(templates_file), "--steps", "2", "--samples-per-prompt", "1",
                 "--device", "cpu", "--quiet", "--out", str(out)]) == 0
    assert load_json(out / "cdc_config.json")["preset"] == "world"
    bundle = load_bundle("world", model)
    before = unet_out_world(bundle.unet)
    load_lora(bundle.unet, out)  # the cdc loader checks the base fingerprint too
    assert (unet_out_world(bundle.unet) - before).abs().max() > 1e-7


def unet_out_world(unet: torch.nn.Module) -> torch.Tensor:
    """The world UNet's prediction on one fixed noisy latent and context."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, unet.config.in_channels, 16, 16, generator=g)
    ctx = torch.randn(1, 8, unet.config.cross_attention_dim, generator=g)
    with torch.no_grad():
        return unet(x, torch.tensor([500]), encoder_hidden_states=ctx).sample
