"""Concept-erasure methods as pure training functions over a ModelBundle.

Each method is a module `cdc.methods.<name>` with `Config` (its params.yaml section erase.<name>), `NEEDS` (the
samples it learns from) and `erase(bundle, data, cfg, ...)`. `method_module` imports one by name, so code that runs
one method loads (and, in dvc.yaml, depends on) that method's module only; adding a method adds a module.
"""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil
from pathlib import Path
from types import ModuleType

_ENTRY = ("Config", "NEEDS", "erase")  # what makes a module of this package a method


def known_methods() -> list[str]:
    """Names of the method modules in this package (those defining Config, NEEDS and erase)."""
    names = [m.name for m in pkgutil.iter_modules([str(Path(__file__).parent)])]
    return [n for n in names if all(hasattr(importlib.import_module(f"{__name__}.{n}"), a) for a in _ENTRY)]


def method_module(name: str) -> ModuleType:
    """cdc.methods.<name>, imported now; ValueError listing the known methods when `name` is not one."""
    ok = name.isidentifier() and not name.startswith("_") and importlib.util.find_spec(f"{__name__}.{name}")
    module = importlib.import_module(f"{__name__}.{name}") if ok else None
    if module is None or not all(hasattr(module, a) for a in _ENTRY):
        raise ValueError(f"unknown method {name!r} (known: {', '.join(known_methods())})")
    return module
