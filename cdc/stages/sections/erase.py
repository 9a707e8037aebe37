"""params.yaml `erase`: the families and methods of the erase matrix, and one key per method (its Config)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from cdc.config import Checked, check_names
from cdc.errors import ParamsError
from cdc.methods import known_methods, method_module
from cdc.stages.params import from_dict

Method = str  # a method module of cdc.methods with its section erase.<method> (checked across sections)


def method_configs(data: Mapping, where: str) -> dict[str, Any]:
    """Each key of `data` a method (cdc.methods.<key>), its value checked as that method's Config."""
    configs = {}
    for name, value in data.items():
        try:
            cls = method_module(name).Config
        except ValueError:
            raise ParamsError(f"unknown key '{where}.{name}': not a method "
                              f"(known: {', '.join(known_methods())})") from None
        configs[name] = from_dict(cls, value, f"{where}.{name}")
    return configs


@dataclass(frozen=True)
class MethodSections:
    """A section holding one key per method, erase.<method>, each that method module's Config; read them as
    attributes (`params.erase.doco`) or with `config(method)`."""

    configs: dict[str, Any]

    def __getattr__(self, name: str) -> Any:
        """erase.<name>: the method's config."""
        configs = self.__dict__.get("configs", {})
        if name in configs:
            return configs[name]
        raise AttributeError(f"no section erase.{name} (methods with one: {', '.join(configs)})")

    def config(self, method: str) -> Any:
        """erase.<method>: the method's config, or ParamsError naming the methods that have one."""
        if method not in self.configs:
            raise ParamsError(f"no section 'erase.{method}' (methods with one: {', '.join(self.configs)})")
        return self.configs[method]

    @classmethod
    def from_mapping(cls, data: Mapping, where: str) -> MethodSections:
        """Every key of `data` as a method's section."""
        return cls(method_configs(data, where))


@dataclass(frozen=True)
class EraseLists(Checked):
    """The erase section's fixed keys."""

    concepts: list[str]  # world families (data/world/families.yaml), as slugs
    methods: list[Method]  # each has its section erase.<method>
    explain: list[str]  # families whose 06_erase notebooks also show each method up close (teaching only)


@dataclass(frozen=True)
class EraseParams(MethodSections):
    """One LoRA per (concept family, method); the families and methods are the DVC matrix of erase, evaluate and
    attack. Besides the lists, one key per method: erase.<method>, that method module's Config."""

    concepts: list[str]
    methods: list[Method]
    explain: list[str]
    FAMILY_FIELDS: ClassVar[tuple[str, ...]] = ("concepts",)

    def __post_init__(self) -> None:
        """Non-empty lists without repeats; every listed method has its section."""
        check_names("concepts", self.concepts)
        check_names("methods", self.methods)
        bad = [c for c in self.concepts if not c or c != c.strip() or " " in c]
        if bad:
            raise ValueError(f"concepts are slugs without spaces (e.g. articulated-lorry), got {bad[0]!r}")
        unknown = [c for c in self.explain if c not in self.concepts]
        if unknown:
            raise ValueError(f"'erase.explain': {unknown[0]!r} is not in erase.concepts ({', '.join(self.concepts)})")
        if missing := [m for m in self.methods if m not in self.configs]:
            known = known_methods()
            what = f"has no section erase.{missing[0]}" if missing[0] in known else f"is not a method (known: " \
                f"{', '.join(known)})"
            raise ValueError(f"methods lists {missing[0]!r}, which {what}")

    @classmethod
    def from_mapping(cls, data: Mapping, where: str) -> EraseParams:
        """The lists (EraseLists), then every other key as a method's section."""
        fixed = [f.name for f in dataclasses.fields(EraseLists)]
        lists = from_dict(EraseLists, {k: v for k, v in data.items() if k in fixed}, where)
        configs = method_configs({k: v for k, v in data.items() if k not in fixed}, where)
        try:
            return cls(configs=configs, **{k: getattr(lists, k) for k in fixed})
        except ValueError as exc:
            raise ParamsError(f"'{where}': {exc}") from exc


def check_methods(field: str, methods: list[str], loaded: Mapping[str, Any]) -> None:
    """ParamsError when a section's `methods` names one without its erase.<method> (when erase is loaded)."""
    if (erase := loaded.get("erase")) is None:
        return
    if missing := [m for m in methods if m not in erase.configs]:
        raise ParamsError(f"'{field}': {missing[0]!r} has no section erase.{missing[0]} "
                          f"(methods with one: {', '.join(erase.configs)})")
