"""Tests for cdc.params: YAML 1.2 floats, unknown keys, wrong types, nested sections."""

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from cdc.errors import ParamsError
from cdc.params import (
    JudgeParams,
    Params,
    PretrainParams,
    from_dict,
    load_params,
    load_section,
    parse_yaml,
)

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Inner:
    lr: float = 1.0
    tags: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Outer:
    name: str = "x"
    inner: Inner = field(default_factory=Inner)
    by_key: dict[str, Inner] = field(default_factory=dict)
    shape: tuple[int, int] = (1, 2)
    limit: int | None = None


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(text)
    return path


def test_exponent_without_dot_is_a_float(tmp_path):
    params = load_params(write(tmp_path, "judge:\n  lr: 1e-5\n"))
    assert isinstance(params.judge.lr, float) and params.judge.lr == 1e-5
    assert parse_yaml("a: yes")["a"] == "yes"  # YAML 1.2: not a bool


def test_missing_sections_and_keys_use_defaults(tmp_path):
    params = load_params(write(tmp_path, "judge:\n  steps: 7\n"))
    assert params.judge == JudgeParams(steps=7)
    assert params.pretrain == PretrainParams()
    assert load_section("judge", tmp_path / "params.yaml").steps == 7


def test_unknown_key_names_dotted_key_and_known_keys(tmp_path):
    path = write(tmp_path, "judge:\n  lrr: 0.1\n")
    with pytest.raises(ParamsError, match=r"params.yaml: unknown key 'judge.lrr' \(known: .*\blr\b"):
        load_params(path)


def test_unknown_section(tmp_path):
    with pytest.raises(ParamsError, match="unknown section 'eraze'"):
        load_params(write(tmp_path, "eraze:\n  lr: 0.1\n"))
    with pytest.raises(ParamsError, match="unknown params section 'nope'"):
        load_section("nope", write(tmp_path, "{}\n"))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("judge:\n  steps: 1.5\n", r"'judge.steps': expected int, got float 1.5"),
        ("judge:\n  steps: true\n", r"'judge.steps': expected int, got bool"),
        ("judge:\n  lr: '1e-5'\n", r"'judge.lr': expected float, got str '1e-5'"),
        ("world:\n  styles: twemoji\n", r"'world.styles': expected list\[str\], got str"),
        ("world:\n  styles: [twemoji, 3]\n", r"'world.styles\[1\]': expected str, got int"),
        ("pretrain:\n  cross_attention: [1, 0, 0]\n", r"'pretrain.cross_attention\[0\]': expected bool"),
        ("judge: 3\n", r"'judge': expected a mapping"),
    ],
)
def test_wrong_types_are_rejected(tmp_path, text, message):
    with pytest.raises(ParamsError, match=message):
        load_params(write(tmp_path, text))


def test_int_is_accepted_for_float(tmp_path):
    lr = load_params(write(tmp_path, "judge:\n  lr: 1\n")).judge.lr
    assert lr == 1.0 and isinstance(lr, float)


def test_post_init_check_becomes_params_error(tmp_path):
    with pytest.raises(ParamsError, match="cross_attention has 2 entries"):
        load_params(write(tmp_path, "pretrain:\n  cross_attention: [false, true]\n"))
    with pytest.raises(ParamsError, match="'anchors'.*phrases must be 'all', 'names' or 'drawn'"):
        load_params(write(tmp_path, "anchors:\n  phrases: aliases\n"))
    with pytest.raises(ParamsError, match="min_drawn must lie in"):
        load_params(write(tmp_path, "anchors:\n  min_drawn: 1.5\n"))


def test_nested_dataclasses_dicts_tuples_optionals():
    data = {"inner": {"lr": 2}, "by_key": {"a": {"tags": ["t"]}}, "shape": [3, 4], "limit": 5}
    outer = from_dict(Outer, data, "top")
    assert outer.inner == Inner(lr=2.0) and outer.by_key["a"].tags == ["t"]
    assert outer.shape == (3, 4) and outer.limit == 5
    assert from_dict(Outer, {"limit": None}, "top").limit is None
    with pytest.raises(ParamsError, match=r"unknown key 'top.by_key.a.lrr'"):
        from_dict(Outer, {"by_key": {"a": {"lrr": 1}}}, "top")
    with pytest.raises(ParamsError, match=r"'top.shape': expected 2 items"):
        from_dict(Outer, {"shape": [1, 2, 3]}, "top")


def test_sections_are_frozen():
    with pytest.raises(AttributeError):
        Params().judge.steps = 1  # type: ignore[misc]


def test_bad_yaml_and_missing_file(tmp_path):
    with pytest.raises(ParamsError, match="params.yaml: invalid YAML"):
        load_params(write(tmp_path, "judge:\n  lr: 1\n  lr: 2\n"))  # duplicate key
    with pytest.raises(FileNotFoundError, match="params file not found"):
        load_params(tmp_path / "absent.yaml")


@pytest.mark.parametrize("name", ["params.yaml", "tests/params_smoke.yaml"])
def test_repo_params_files_load(name):
    path = REPO / name
    if not path.exists():
        pytest.skip(f"{name} does not exist yet")
    assert isinstance(load_params(path), Params)
