"""Tests for cdc.stages.params: YAML 1.2 floats, no defaults, unknown keys, wrong types, ranges, nested sections."""

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pytest

from cdc.errors import ParamsError
from cdc.stages.params import from_dict, parse_yaml, read_yaml, with_overrides
from cdc.stages.schema import Params, load_params, load_section
from cdc.stages.sections.ablate import arm_config

REPO = Path(__file__).resolve().parents[1]
NAN = "__nan__"  # stands for YAML's .nan, which JSON cannot write


@dataclass(frozen=True)
class Inner:
    lr: float
    tags: list[str]


@dataclass(frozen=True)
class Outer:
    name: str
    inner: Inner
    items: list[Inner]
    mode: Literal["a", "b"]
    limit: int | None


def committed() -> dict:
    """A fresh copy of the committed params.yaml as a dict."""
    return read_yaml(REPO / "params.yaml")


def changed(data: dict, dotted: str, value: Any) -> dict:
    """`data` with the value at the dotted key set (created if absent)."""
    *parents, last = dotted.split(".")
    node = data
    for key in parents:
        node = node[key]
    node[last] = value
    return data


def removed(data: dict, dotted: str) -> dict:
    """`data` without the dotted key."""
    *parents, last = dotted.split(".")
    node = data
    for key in parents:
        node = node[key]
    del node[last]
    return data


def write(tmp_path: Path, data: dict | str) -> Path:
    """Write a params file: a dict as JSON (YAML 1.2 reads JSON), a string as it is."""
    path = tmp_path / "params.yaml"
    text = data if isinstance(data, str) else json.dumps(data, indent=1).replace(f'"{NAN}"', ".nan")
    path.write_text(text)
    return path


def test_exponent_without_dot_is_a_float(tmp_path):
    assert parse_yaml("lr: 1e-5")["lr"] == 1e-5 and isinstance(parse_yaml("lr: 1e-5")["lr"], float)
    path = write(tmp_path, changed(committed(), "judge.lr", 1e-5))
    assert "1e-05" in path.read_text()  # JSON writes it without a dot
    params = load_params(path)
    assert isinstance(params.judge.lr, float) and params.judge.lr == 1e-5
    assert parse_yaml("a: yes")["a"] == "yes"  # YAML 1.2: not a bool


def test_missing_sections_and_keys_are_errors(tmp_path):
    with pytest.raises(ParamsError, match=r"params.yaml: missing key 'judge.steps'"):
        load_params(write(tmp_path, removed(committed(), "judge.steps")))
    with pytest.raises(ParamsError, match=r"missing key 'erase.doco.lam'"):
        load_params(write(tmp_path, removed(committed(), "erase.doco.lam")))
    with pytest.raises(ParamsError, match=r"missing key 'report'"):
        load_params(write(tmp_path, removed(committed(), "report")))
    # A partial file no longer falls back on defaults: there are none.
    with pytest.raises(ParamsError, match="missing key"):
        load_params(write(tmp_path, "judge:\n  steps: 7\n"))
    with pytest.raises(ParamsError, match="missing key"):
        load_section("judge", write(tmp_path, "judge:\n  steps: 7\n"))
    assert load_section("judge", write(tmp_path, changed(committed(), "judge.steps", 7))).steps == 7


def test_unknown_key_names_dotted_key_and_known_keys(tmp_path):
    path = write(tmp_path, changed(committed(), "judge.lrr", 0.1))
    with pytest.raises(ParamsError, match=r"params.yaml: unknown key 'judge.lrr' \(known: .*\blr\b"):
        load_params(path)


def test_unknown_section(tmp_path):
    with pytest.raises(ParamsError, match="unknown section 'eraze'"):
        load_params(write(tmp_path, changed(committed(), "eraze", {"lr": 0.1})))
    with pytest.raises(ParamsError, match="unknown params section 'nope'"):
        load_section("nope", write(tmp_path, committed()))


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("judge.steps", 1.5, r"'judge.steps': expected int, got float 1.5"),
        ("judge.steps", True, r"'judge.steps': expected int, got bool"),
        ("judge.lr", "1e-5", r"'judge.lr': expected float, got str '1e-5'"),
        ("world.styles", "twemoji", r"'world.styles': expected list\[.*\], got str"),
        ("world.styles", ["twemoji", 3], r"'world.styles\[1\]': expected one of 'twemoji', 'openmoji', got int"),
        ("pretrain.cross_attention", [1, 0, 0], r"'pretrain.cross_attention\[0\]': expected bool"),
        ("judge", 3, r"'judge': expected a mapping"),
    ],
)
def test_wrong_types_are_rejected(tmp_path, key, value, message):
    with pytest.raises(ParamsError, match=message):
        load_params(write(tmp_path, changed(committed(), key, value)))


def test_int_is_accepted_for_float(tmp_path):
    lr = load_params(write(tmp_path, changed(committed(), "judge.lr", 1))).judge.lr
    assert lr == 1.0 and isinstance(lr, float)


def test_post_init_check_becomes_params_error(tmp_path):
    with pytest.raises(ParamsError, match="cross_attention has 2 entries"):
        load_params(write(tmp_path, changed(committed(), "pretrain.cross_attention", [False, True])))
    with pytest.raises(ParamsError, match=r"'anchors.phrases': expected one of 'all', 'names', 'drawn'"):
        load_params(write(tmp_path, changed(committed(), "anchors.phrases", "aliases")))
    with pytest.raises(ParamsError, match=r"'anchors': min_drawn must be in \[0, 1\]"):
        load_params(write(tmp_path, changed(committed(), "anchors.min_drawn", 1.5)))


def _steps(data: dict, section: str) -> int:
    node = data
    for key in section.split("."):
        node = node[key]
    return node["steps"]


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("judge.steps", -1, r"'judge': steps must be >= 1, got -1"),
        ("erase.esd.steps", 0, r"'erase.esd': steps must be >= 1, got 0"),
        ("erase.doco.lr", NAN, r"'erase.doco': lr must be finite, got nan"),
        ("judge.lr", NAN, r"'judge': lr must be finite"),
        ("pretrain.ema_decay", 1.5, r"'pretrain': ema_decay must be in \[0, 1\), got 1.5"),
        ("sample.eta", 1.5, r"'sample': eta must be in \[0, 1\]"),
        ("sample.guidance", -1.0, r"'sample': guidance must be >= 0"),
        ("pretrain.warmup_steps", "steps", r"'pretrain': warmup_steps \(\d+\) must be < steps"),
        ("erase.doco.warmup_steps", "steps", r"'erase.doco': warmup_steps \(\d+\) must be < steps"),
        ("erase.concepts", [], r"'erase': concepts is empty"),
        ("erase.concepts", ["church", "fish", "church"], r"'erase': concepts lists church more than once"),
        ("erase.methods", [], r"'erase': methods is empty"),
        ("erase.methods", ["doco", "uce"], r"'erase': methods lists 'uce', which is not a method \(known: advunlearn"),
        ("erase.doco.surgery", "proj", r"'erase.doco.surgery': expected one of 'pcgrad', 'cosine', 'sum'"),
        ("erase.esd.lora_group", "everything", r"'erase.esd.lora_group': expected one of"),
    ],
)
def test_values_out_of_range_name_the_key(tmp_path, key, value, message):
    data = committed()
    if value == "steps":  # a warm-up as long as the whole run
        value = _steps(data, key.rsplit(".", 1)[0])
    with pytest.raises(ParamsError, match=message):
        load_params(write(tmp_path, changed(data, key, value)))


def test_nested_dataclasses_lists_literals_optionals():
    data = {"name": "n", "inner": {"lr": 2, "tags": []}, "items": [{"lr": 1.0, "tags": ["t"]}], "mode": "b",
            "limit": 5}
    outer = from_dict(Outer, data, "top")
    assert outer.inner == Inner(lr=2.0, tags=[]) and outer.items[0].tags == ["t"]
    assert outer.mode == "b" and outer.limit == 5
    assert from_dict(Outer, {**data, "limit": None}, "top").limit is None
    with pytest.raises(ParamsError, match=r"unknown key 'top.items\[0\].lrr'"):
        from_dict(Outer, {**data, "items": [{"lrr": 1, "tags": []}]}, "top")
    with pytest.raises(ParamsError, match=r"missing key 'top.inner.tags'"):
        from_dict(Outer, {**data, "inner": {"lr": 1.0}}, "top")
    with pytest.raises(ParamsError, match=r"'top.mode': expected one of 'a', 'b'"):
        from_dict(Outer, {**data, "mode": "c"}, "top")


def test_sections_are_frozen_and_check_replacements():
    params = load_params(REPO / "params.yaml")
    with pytest.raises(AttributeError):
        params.judge.steps = 1  # type: ignore[misc]
    with pytest.raises(ValueError, match="steps must be >= 1"):
        dataclasses.replace(params.judge, steps=0)
    with pytest.raises(ValueError, match="lr must be finite"):
        dataclasses.replace(params.erase.doco, lr=float("nan"))


def test_with_overrides_checks_like_params_yaml():
    doco = load_params(REPO / "params.yaml").erase.doco
    fast = with_overrides(doco, "steps=5 warmup_steps=1 lr=1e-4 surgery=pcgrad", "erase.doco")
    assert (fast.steps, fast.warmup_steps, fast.lr, fast.surgery) == (5, 1, 1e-4, "pcgrad")
    assert with_overrides(doco, "", "erase.doco") == doco
    with pytest.raises(ParamsError, match="unknown key 'erase.doco.stepz'"):
        with_overrides(doco, "stepz=3", "erase.doco")
    with pytest.raises(ParamsError, match="steps must be >= 1"):
        with_overrides(doco, "steps=-1", "erase.doco")
    with pytest.raises(ParamsError, match="not key=value"):
        with_overrides(doco, "steps", "erase.doco")


def test_bad_yaml_and_missing_file(tmp_path):
    with pytest.raises(ParamsError, match="params.yaml: invalid YAML"):
        load_params(write(tmp_path, "judge:\n  lr: 1\n  lr: 2\n"))  # duplicate key
    with pytest.raises(FileNotFoundError, match="params file not found"):
        load_params(tmp_path / "absent.yaml")


def test_committed_params_load():
    params = load_params(REPO / "params.yaml")
    assert isinstance(params, Params)
    assert params.erase.methods and params.erase.concepts


def test_smoke_params_file_loads(smoke_params_path, smoke_params):
    params = load_params(smoke_params_path)
    assert params == smoke_params
    smoke = read_yaml(REPO / "tests" / "smoke.yaml")["params"]
    assert params.erase.concepts == smoke["erase"]["concepts"]
    assert params.pretrain.steps == smoke["pretrain"]["steps"]
    assert params.judge.lr == load_params(REPO / "params.yaml").judge.lr  # not overridden: the committed value


@pytest.mark.parametrize(
    ("arm", "message"),
    [(("doco", "lamda=1"), r"unknown key 'ablate\.arms\.bad\.set\.lamda'"),
     (("dooc", "lam=1"), r"'ablate\.arms\.bad\.method': 'dooc' has no section erase\.dooc"),
     (("doco", "lam=-1"), r"lam must be >= 0"),
     (("doco", " "), r"'ablate\.arms\.bad\.set' is empty"),
     (("esd", "", ""), r"'ablate\.arms\.bad\.anchor': esd learns from no anchor"),
     (("doco", "lamda=1", "watermelon"), r"unknown key 'ablate\.arms\.bad\.set\.lamda'")],
)
def test_ablation_arms_are_checked_when_params_load(tmp_path, arm, message):
    spec = {"method": arm[0], "set": arm[1], "label": "x", "attack": False, "anchor": (arm + (None,))[2]}
    data = changed(committed(), "ablate.arms", {"bad": spec})
    with pytest.raises(ParamsError, match=message):
        load_params(write(tmp_path, data))


def test_an_anchor_arm_may_change_nothing_else(tmp_path):
    arm = {"method": "ca", "set": "", "label": "x", "attack": False, "anchor": ""}
    params = load_params(write(tmp_path, changed(committed(), "ablate.arms", {"ca_empty": arm})))
    assert arm_config(params.erase, params.ablate.arms["ca_empty"]) == params.erase.ca


def test_ablation_arm_names_are_slugs(tmp_path):
    arm = {"method": "doco", "set": "lam=1", "label": "x", "attack": False, "anchor": None}
    with pytest.raises(ParamsError, match="arm names are lower-case slugs"):
        load_params(write(tmp_path, changed(committed(), "ablate.arms", {"Lam 1": arm})))
    with pytest.raises(ParamsError, match=r"'ablate\.arms': expected a mapping"):
        load_params(write(tmp_path, changed(committed(), "ablate.arms", [arm])))


def test_explained_families_are_erased_families(tmp_path):
    with pytest.raises(ParamsError, match=r"'erase\.explain': 'tench' is not in erase\.concepts"):
        load_params(write(tmp_path, changed(committed(), "erase.explain", ["church", "tench"])))
    assert load_params(write(tmp_path, changed(committed(), "erase.explain", []))).erase.explain == []


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [("transfer.methods", ["doco"], r"'doco' does not train the text encoder"),
     ("transfer.pretrain", "seed=0", "changes nothing"),
     ("transfer.pretrain", "sead=1", r"unknown key 'transfer\.pretrain\.sead'")],
)
def test_transfer_section_is_checked_against_erase_and_pretrain(tmp_path, key, value, message):
    with pytest.raises(ParamsError, match=message):
        load_params(write(tmp_path, changed(committed(), key, value)))


@pytest.mark.parametrize(
    ("value", "message"),
    [(["church", "tench"], r"'paper\.grids': 'tench' is not in erase\.concepts"),
     (["church", "church"], "lists church more than once"),
     ([], "grids is empty")],
)
def test_paper_grids_are_erased_families(tmp_path, value, message):
    with pytest.raises(ParamsError, match=message):
        load_params(write(tmp_path, changed(committed(), "paper.grids", value)))


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [("tradeoff.validation_seed", 0, r"'tradeoff\.validation_seed' 0 is a seed of the evaluation split"),
     ("tradeoff.validation_seed", 777, "would tune on the test set"),
     ("tradeoff.scales", [1.0, 0.5], "scales must be increasing"),
     ("tradeoff.scales", [0.0, 1.0], r"scales must be increasing values in \(0, 10\]"),
     ("tradeoff.scales", [], "scales must be increasing"),
     ("tradeoff.methods", ["doco", "uce"], r"'tradeoff\.methods': 'uce' has no section erase\.uce")],
)
def test_tradeoff_section_keeps_validation_apart_from_evaluation(tmp_path, key, value, message):
    with pytest.raises(ParamsError, match=message):
        load_params(write(tmp_path, changed(committed(), key, value)))


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [("relearn.checkpoints", [0, 10, 10], "checkpoints must be increasing steps"),
     ("relearn.checkpoints", [0], "ending above 0"),
     ("relearn.checkpoints", [-5, 10], "increasing steps >= 0"),
     ("relearn.returned", 0.0, r"returned must be in \(0, 1\]"),
     ("relearn.lora_group", "conv", r"'relearn\.lora_group': expected one of"),
     ("multi.counts", [3, 1], "counts must be increasing"),
     ("multi.counts", [0, 3], "counts must be increasing numbers of concepts >= 1"),
     ("multi.families", ["church", "church"], "lists church more than once"),
     ("multi.methods", ["doco", "uce"], r"'multi\.methods': 'uce' has no section erase\.uce")],
)
def test_relearn_and_multi_sections_refuse_bad_values(tmp_path, key, value, message):
    with pytest.raises(ParamsError, match=message):
        load_params(write(tmp_path, changed(committed(), key, value)))


@pytest.mark.parametrize(("key", "value", "message"), [
    ("attack.harmful", ["wepon"], "'attack.harmful': 'wepon' is not a family of the world"),
    ("ablate.concepts", ["church", "chapel"], "'ablate.concepts': 'chapel' is not a family"),
    ("relearn.concepts", ["fsh"], "'relearn.concepts': 'fsh' is not a family"),
])
def test_family_names_in_lists_are_checked_when_params_load(tmp_path, key, value, message):
    with pytest.raises(ParamsError, match=message):
        load_params(write(tmp_path, changed(committed(), key, value)))


def test_style_template_without_slot_fails_when_params_load(tmp_path):
    templates = ["a house, {} style", "style"]
    with pytest.raises(ParamsError, match="'style' has no {} for the learned word"):
        load_params(write(tmp_path, changed(committed(), "attack.style_templates", templates)))
