"""Reading params.yaml (YAML 1.2) into the frozen dataclasses of its sections, validated by pydantic.

params.yaml is the one source of every value: no field has a default, so a missing section or key is an error.
Each section is a frozen `cdc.config.Checked` dataclass in its own module (`cdc.stages.sections.<name>`, or
`cdc.config` for the sections the core reads), so a stage depends on the schemas of the sections it loads and on
nothing else. pydantic checks the types (strictly: `1.5` is not an int, `true` not a number, `"1e-5"` not a
float) and unknown keys; the dataclasses check ranges and cross-field rules in `__post_init__`, and a section
whose rules span sections says so in `cross_check`. Every failure is one ParamsError line naming the dotted key.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import os
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Literal, TypeVar

from pydantic import TypeAdapter, ValidationError
from pydantic_core import SchemaValidator
from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

from cdc.errors import ParamsError

T = TypeVar("T")

# params.yaml's sections in file order: one per DVC stage (same name as the stage and its notebook), plus
# `sample`, `evaluate` and `report`, which several stages read.
SECTIONS = ("world", "judge", "pretrain", "sample", "base", "anchors", "erase", "evaluate", "attack", "ablate",
            "transfer", "tradeoff", "relearn", "multi", "report", "paper")
# The world's concept families; a section's family-valued fields (its FAMILY_FIELDS) are checked against it.
FAMILIES_FILE = Path(__file__).resolve().parents[2] / "data" / "world" / "families.yaml"


# --------------------------------------------------------------------------------------------
# YAML 1.2 reading (the parser DVC uses: `1e-5` is a float, `yes` is a string)


def parse_yaml(text: str, where: str = "<string>") -> Any:
    """Parse YAML 1.2 text; syntax errors and duplicate keys raise ParamsError naming `where`."""
    try:
        return YAML(typ="safe", pure=True).load(text)  # pure Python: the same behaviour with or without the C parser
    except YAMLError as exc:
        # Drop ruamel's advice on switching the duplicate-key check off; name the file, not the stream.
        detail = str(exc).split("\n\nTo suppress")[0].replace('"<unicode string>"', f'"{where}"')
        raise ParamsError(f"{where}: invalid YAML: {detail}") from exc


def read_yaml(path: str | os.PathLike[str]) -> Any:
    """Read a YAML 1.2 file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"params file not found: {path}")
    return parse_yaml(path.read_text(encoding="utf-8"), where=str(path))


# --------------------------------------------------------------------------------------------
# Validation: pydantic, with strict scalars and no extra keys


def _tighten(node: Any) -> None:
    """Make a pydantic core schema strict where YAML values could be coerced (int, float, bool, str) and closed
    to unknown dataclass keys; containers stay lax so that nested sections are read from mappings."""
    if isinstance(node, dict):
        if node.get("type") in ("int", "float", "bool", "str"):
            node["strict"] = True  # a strict float still takes an int: `lr: 1` is 1.0
        elif node.get("type") == "dataclass-args":
            node["extra_behavior"] = "forbid"
        for value in node.values():
            _tighten(value)
    elif isinstance(node, list):
        for value in node:
            _tighten(value)


@functools.cache
def _validator(cls: type) -> SchemaValidator:
    """pydantic's validator of the dataclass `cls`, tightened."""
    schema = copy.deepcopy(TypeAdapter(cls).core_schema)
    _tighten(schema)
    return SchemaValidator(schema)


def _strip(tp: Any) -> Any:
    """The annotation without Optional[...] or Annotated[...]."""
    while True:
        if typing.get_origin(tp) is typing.Annotated:
            tp = typing.get_args(tp)[0]
            continue
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if typing.get_origin(tp) in (typing.Union, types.UnionType) and len(args) == 1:
            tp = args[0]
            continue
        return tp


def _type_at(cls: type, loc: tuple) -> Any:
    """The annotation at pydantic error location `loc` inside dataclass `cls` (None when it leaves the schema)."""
    tp: Any = cls
    for part in loc:
        tp = _strip(tp)
        if dataclasses.is_dataclass(tp) and isinstance(part, str):
            tp = typing.get_type_hints(tp).get(part)
        elif typing.get_origin(tp) is list and isinstance(part, int):
            tp = typing.get_args(tp)[0]
        elif typing.get_origin(tp) is dict:
            tp = typing.get_args(tp)[1]
        else:
            return None
    return tp


def _dotted(where: str, loc: tuple) -> str:
    """'erase.doco' + ('lr',) -> 'erase.doco.lr'; list indices as [i]."""
    out = where
    for part in loc:
        out = f"{out}[{part}]" if isinstance(part, int) else (f"{out}.{part}" if out else str(part))
    return out


def _describe(value: Any) -> str:
    """Short 'type value' text for error messages."""
    text = repr(value)
    return f"{type(value).__name__} {text[:57] + '...' if len(text) > 60 else text}"


def _type_name(tp: Any) -> str:
    """Readable name of a type annotation."""
    return tp.__name__ if isinstance(tp, type) else str(tp).replace("typing.", "")


def _message(cls: type, error: Mapping[str, Any], where: str) -> str:
    """One pydantic error as the line a user reads."""
    loc, kind, value = tuple(error["loc"]), error["type"], error.get("input")
    key = _dotted(where, loc)
    if kind == "missing":
        return f"missing key '{key}'"
    if kind in ("unexpected_keyword_argument", "extra_forbidden"):
        parent = _strip(_type_at(cls, loc[:-1]))
        known = ", ".join(sorted(f.name for f in dataclasses.fields(parent))) if dataclasses.is_dataclass(parent) \
            else "none"
        return f"unknown key '{key}' (known: {known})"
    if kind == "value_error":  # a range or cross-field rule of the dataclass at loc
        detail = str(error["ctx"]["error"]) if "ctx" in error else error["msg"]
        return f"'{key or '<top level>'}': {detail}"
    tp = _strip(_type_at(cls, loc))
    if kind == "literal_error" or typing.get_origin(tp) is Literal:
        choices = ", ".join(repr(a) for a in typing.get_args(tp))
        return f"'{key}': expected one of {choices}, got {_describe(value)}"
    if kind in ("dataclass_type", "dict_type", "model_type"):
        return f"'{key or '<top level>'}': expected a mapping, got {_describe(value)}"
    if kind == "bool_type":
        return f"'{key}': expected bool (true/false), got {_describe(value)}"
    hint = " (write numbers unquoted, e.g. 1.0e-5)" if kind == "float_type" and isinstance(value, str) else ""
    return f"'{key}': expected {_type_name(tp)}, got {_describe(value)}{hint}"


def from_dict(cls: type[T], data: Any, where: str = "") -> T:
    """Build the frozen dataclass `cls` from a mapping; `where` is the dotted key prefix for errors.

    Unknown, missing and mistyped keys and values out of range raise ParamsError (the first, unknown keys first).
    A class with `from_mapping` (a section whose keys are not all fixed: erase has one per method) builds itself.
    """
    if not isinstance(data, Mapping):
        raise ParamsError(f"'{where or '<top level>'}': expected a mapping, got {_describe(data)}")
    if hasattr(cls, "from_mapping"):
        return cls.from_mapping(data, where)
    try:
        return _validator(cls).validate_python(data)
    except ValidationError as exc:
        errors = sorted(exc.errors(), key=lambda e: e["type"] != "unexpected_keyword_argument")
        raise ParamsError(_message(cls, errors[0], where)) from None


def with_overrides(cfg: T, overrides: str, where: str) -> T:
    """`cfg` with space-separated 'key=value' pairs applied, checked as params.yaml is (unknown keys and
    wrong types are ParamsError); values are YAML 1.2, so 0.5, 1e-4, [64, 128] and true work."""
    data = dataclasses.asdict(cfg)
    for pair in overrides.split():
        key, sep, value = pair.partition("=")
        if not sep:
            raise ParamsError(f"override {pair!r} is not key=value")
        data[key] = parse_yaml(value, f"{where}.{key}")
    return from_dict(type(cfg), data, where)


# --------------------------------------------------------------------------------------------
# Loading sections


def check_families(sections: Mapping[str, Any], families_file: str | os.PathLike[str] = FAMILIES_FILE) -> None:
    """ParamsError naming the first family-valued entry (a section's FAMILY_FIELDS) that is not a family of the
    world, as a slug; nothing to check when the file does not exist."""
    if not Path(families_file).is_file():
        return
    known = [name.replace(" ", "-") for name in read_yaml(families_file)["targets"]]
    for name, section in sections.items():
        for key in getattr(section, "FAMILY_FIELDS", ()):
            if unknown := [f for f in getattr(section, key) if f not in known]:
                raise ParamsError(f"'{name}.{key}': {unknown[0]!r} is not a family of the world "
                                  f"(known: {', '.join(known)})")


def load_sections(path: str | os.PathLike[str] = "params.yaml",
                  families: str | os.PathLike[str] | None = FAMILIES_FILE, **classes: type) -> SimpleNamespace:
    """Read the params file and validate the sections named as keywords, each as its class
    (`load_sections(path, sample=SampleParams)`); returns them as attributes (`.sample`).

    Unknown top-level sections are errors, as are the rules that tie the loaded sections together (a section's
    `cross_check(loaded)`); family names are checked against `families` (None: not checked, for a file that
    names no world families). Every error is a ParamsError starting with the file's path.
    """
    try:
        data = read_yaml(path)
        if not isinstance(data, Mapping):
            raise ParamsError(f"'<top level>': expected a mapping, got {_describe(data)}")
        if unknown := [k for k in data if k not in SECTIONS]:
            raise ParamsError(f"unknown section '{unknown[0]}' (known: {', '.join(sorted(SECTIONS))})")
        if asked := [k for k in classes if k not in SECTIONS]:
            raise ParamsError(f"unknown params section '{asked[0]}' (known: {', '.join(SECTIONS)})")
        loaded = {}
        for name, cls in classes.items():
            if name not in data:
                raise ParamsError(f"missing key '{name}'")
            loaded[name] = from_dict(cls, data[name], name)
        if families is not None:
            check_families(loaded, families)
        for section in loaded.values():
            if hasattr(section, "cross_check"):
                section.cross_check(loaded)
        return SimpleNamespace(**loaded)
    except ParamsError as exc:
        if str(exc).startswith(f"{path}: "):
            raise
        raise ParamsError(f"{path}: {exc}") from None
