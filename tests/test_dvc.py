"""dvc.yaml and dvc.lock against the tree: each stage depends on exactly the cdc modules its notebook imports,
every dep exists, and every stage ran on the same world model, judge and built world.

Everything is computed from the files on disk (the notebooks, the cdc package, dvc.yaml, dvc.lock), so the
tests follow renames and splits of cdc modules; their failure messages print the dvc.yaml lines to change.
"""

from __future__ import annotations

import ast
import functools
import itertools
import json
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML

REPO = Path(__file__).resolve().parents[1]
PACKAGE = "cdc"
NOTEBOOK = re.compile(r"notebooks/[\w.-]+\.ipynb")
TEMPLATE = re.compile(r"\$\{\s*([\w.-]+)\s*\}")
# Outputs that many stages read: (producing stage, output path). Every stage that lists one as a dep must have
# been run on the version that the producer recorded.
SHARED_OUTPUTS = [("pretrain", "data/models/world"), ("judge", "data/models/judge"), ("world", "data/world/built")]


# ---------------------------------------------------------------- dvc.yaml


def read_yaml(path: Path) -> Any:
    return YAML(typ="safe", pure=True).load(path.read_text(encoding="utf-8"))


def stage_bodies() -> dict[str, dict]:
    """Stage name -> the stage's definition, the `do` body for a `foreach` stage (its deps apply to all items)."""
    stages = read_yaml(REPO / "dvc.yaml")["stages"]
    return {name: (stage["do"] if "foreach" in stage else stage) for name, stage in stages.items()}


def dep_paths(body: dict) -> list[str]:
    """The dep paths of a stage, as written (a dep may be a plain string or a one-key mapping)."""
    out = []
    for dep in body.get("deps", []) or []:
        out.extend([dep] if isinstance(dep, str) else list(dep))
    return [str(d).strip().rstrip("/") for d in out]


def stage_notebook(body: dict) -> str:
    found = NOTEBOOK.findall(" ".join(body["cmd"]) if isinstance(body["cmd"], list) else body["cmd"])
    assert found, f"no notebooks/*.ipynb in cmd {body['cmd']!r}"
    return found[0]


def is_package_dep(dep: str) -> bool:
    return dep == PACKAGE or dep.startswith(PACKAGE + "/")


def covers(dep: str, file: str) -> bool:
    """A dep covers a file when it is the file itself or a folder above it."""
    return file == dep or file.startswith(dep + "/")


# ---------------------------------------------------------------- import closure


def module_file(module: str) -> str | None:
    """cdc.x.y -> 'cdc/x/y.py' or 'cdc/x/y/__init__.py' (relative to the repository), None when neither exists."""
    base = Path(*module.split("."))
    for candidate in (base.with_name(base.name + ".py"), base / "__init__.py"):
        if (REPO / candidate).is_file():
            return candidate.as_posix()
    return None


def imported_modules(tree: ast.AST, module: str = "", is_package: bool = False) -> Iterator[str]:
    """Every cdc module imported anywhere in the tree (function bodies included), relative imports resolved
    against `module`. `from cdc.x import y` is cdc.x.y when that is a module, else cdc.x."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = module.split(".") if is_package else module.split(".")[:-1]
                parts = parts[: len(parts) - (node.level - 1)]
                base = ".".join(parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            if base.split(".")[0] != PACKAGE:
                continue
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                yield sub if alias.name != "*" and module_file(sub) else base


def with_parents(module: str) -> list[str]:
    """Importing cdc.a.b runs cdc/__init__.py and cdc/a/__init__.py too."""
    parts = module.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


def closure(roots: Iterable[str]) -> tuple[set[str], set[str]]:
    """(files of the cdc modules reachable from `roots`, modules that name no file)."""
    files: set[str] = set()
    unresolved: set[str] = set()
    todo = [m for m in roots if m.split(".")[0] == PACKAGE]
    while todo:
        for module in with_parents(todo.pop()):
            file = module_file(module)
            if file is None:
                unresolved.add(module)
                continue
            if file in files:
                continue
            files.add(file)
            tree = ast.parse((REPO / file).read_text(encoding="utf-8"), filename=file)
            found = imported_modules(tree, module, file.endswith("__init__.py"))
            todo.extend(m for m in found if m.split(".")[0] == PACKAGE)
    return files, unresolved


def notebook_imports(notebook: str) -> set[str]:
    """The cdc modules imported by the code cells of a notebook (IPython magic and shell lines dropped)."""
    cells = json.loads((REPO / notebook).read_text(encoding="utf-8"))["cells"]
    out: set[str] = set()
    for i, cell in enumerate(cells):
        if cell["cell_type"] != "code":
            continue
        source = cell["source"] if isinstance(cell["source"], str) else "".join(cell["source"])
        lines = [line for line in source.splitlines() if not line.lstrip().startswith(("%", "!"))]
        tree = ast.parse("\n".join(lines), filename=f"{notebook} cell {i}")
        out.update(m for m in imported_modules(tree) if m.split(".")[0] == PACKAGE)
    return out


def package_files() -> list[str]:
    files = (REPO / PACKAGE).rglob("*.py")
    return sorted(p.relative_to(REPO).as_posix() for p in files if "__pycache__" not in p.parts)


def folded(files: set[str], every: list[str]) -> list[str]:
    """The closure as deps: a sub-package folder where every module under it is in the closure, files otherwise."""
    folders = sorted({Path(f).parent.as_posix() for f in every} - {PACKAGE}, key=lambda d: d.count("/"))
    deps: list[str] = []
    for folder in folders:
        under = [f for f in every if covers(folder, f)]
        if all(f in files for f in under) and not any(covers(d, folder) for d in deps):
            deps.append(folder)
    deps += [f for f in files if not any(covers(d, f) for d in deps)]
    return sorted(deps)


METHOD_DEP = "cdc/methods/${item.method}.py"  # the erase stage's own-code dep: one module per method


def method_modules() -> list[str]:
    """The module each method of params.yaml's erase.methods trains with (`cdc.stages.erase.method_module`)."""
    return [f"cdc.methods.{m}" for m in read_yaml(REPO / "params.yaml")["erase"]["methods"]]


def stage_analysis(body: dict) -> dict[str, Any]:
    """What a stage imports against what its deps declare.

    A stage with the templated dep `cdc/methods/${item.method}.py` is checked once per method: its notebook's
    closure plus that method's module must be covered by the shared deps and the method's own file, and a shared
    dep is used when any method needs it.
    missing: closure files no dep covers. unused: cdc deps to drop, each with the reason. ideal: the cdc deps the
    stage should list (a folder where every module under it is imported, files otherwise), sorted.
    unresolved: imported cdc modules that name no file (the notebook would fail).
    """
    roots = notebook_imports(stage_notebook(body))
    deps = [d for d in dep_paths(body) if is_package_dep(d)]
    templated = METHOD_DEP in deps
    deps = [d for d in deps if d != METHOD_DEP]
    items = [(m, module_file(m)) for m in method_modules()] if templated else [(None, None)]
    files: set[str] = set()
    unresolved: set[str] = set()
    missing: set[str] = set()
    for module, own in items:
        found, lost = closure(roots | ({module} if module else set()))
        unresolved |= lost
        shared = found - {own}
        files |= shared
        missing |= {f for f in shared if not any(covers(d, f) for d in deps)}
    every = package_files()
    unused: dict[str, str] = {}
    for dep in deps:
        covered = [f for f in every if covers(dep, f)]
        needed = [f for f in covered if f in files]
        if not needed:
            unused[dep] = "imports no module under it" if covered else "names no module of the package"
        elif len(needed) < len(covered):
            unused[dep] = "folder also covers modules not imported: " + ", ".join(f for f in covered if f not in files)
        elif any(o != dep and covers(o, dep) for o in deps):
            unused[dep] = "already covered by a folder dep"
    ideal = folded(files, every) + ([METHOD_DEP] if templated else [])
    return {"files": files, "unresolved": sorted(unresolved), "missing": sorted(missing), "unused": unused,
            "deps": deps, "ideal": ideal}


def fix_lines(name: str, body: dict, result: dict[str, Any]) -> str:
    """The dvc.yaml edit for one stage: lines to add and to remove, then the cdc block as it should read."""
    ideal = result["ideal"]
    lines = [f"stage {name} ({stage_notebook(body)}):"]
    lines += [f"  add:    - {d}" for d in ideal if d not in result["deps"] and d != METHOD_DEP]
    for dep in result["deps"]:
        if dep not in ideal:
            why = result["unused"].get(dep) or "covered by " + " ".join(d for d in ideal if covers(d, dep))
            lines.append(f"  remove: - {dep}    # {why}")
    lines += [f"  unresolved import: {m}" for m in result["unresolved"]]
    lines += ["  cdc deps should read:"] + [f"      - {d}" for d in ideal]
    return "\n".join(lines)


def test_closure_helpers():
    """The closure resolves `from pkg import module`, includes parent packages and walks nested imports."""
    tree = ast.parse("def f():\n    from cdc.world import captions\n    import cdc.io\n"
                     "from cdc.stages.params import X\n")
    found = set(imported_modules(tree))
    assert found == {"cdc.world.captions", "cdc.io", "cdc.stages.params"}
    files, unresolved = closure(["cdc.world.captions", "cdc.nope"])
    assert {"cdc/__init__.py", "cdc/world/__init__.py", "cdc/world/captions.py"} <= files
    assert unresolved == {"cdc.nope"}
    assert covers("cdc/world", "cdc/world/captions.py") and not covers("cdc/world", "cdc/worlds.py")


@pytest.mark.slow
def test_stage_deps_cover_notebook_imports():
    failures = []
    for name, body in stage_bodies().items():
        result = stage_analysis(body)
        if result["missing"] or result["unresolved"]:
            failures.append(fix_lines(name, body, result))
    assert not failures, "cdc modules imported by a stage's notebook but not in its deps:\n" + "\n".join(failures)


@pytest.mark.slow
def test_stage_deps_have_no_unused_cdc_modules():
    failures = []
    for name, body in stage_bodies().items():
        result = stage_analysis(body)
        if result["unused"]:
            failures.append(fix_lines(name, body, result))
    assert not failures, "cdc deps that the stage's notebook does not import (needless re-runs):\n" + "\n".join(
        failures)


def out_paths(body: dict) -> list[str]:
    """The output paths of a stage (outs, metrics, plots), as written."""
    out = []
    for key in ("outs", "metrics", "plots"):
        for item in body.get(key, []) or []:
            out.extend([item] if isinstance(item, str) else list(item))
    return [str(o).strip().rstrip("/") for o in out]


def produced(dep: str, outs: list[str]) -> bool:
    """Whether another stage writes `dep`: an output, under one (a templated output's fixed prefix) or above one."""
    for out in outs:
        prefix = out.split("${")[0]
        if dep == out or dep.startswith(prefix if "${" in out else out + "/") or out.startswith(dep + "/"):
            return True
    return False


def test_deps_exist():
    outs = [o for body in stage_bodies().values() for o in out_paths(body)]
    missing = [f"{name}: {dep}" for name, body in stage_bodies().items() for dep in dep_paths(body)
               if "${" not in dep and not (REPO / dep).exists() and not produced(dep, outs)]
    assert not missing, "dvc.yaml deps that are not in the tree:\n" + "\n".join(missing)


def test_transfer_stage_depends_on_exactly_the_encoders_it_carries():
    """dvc.yaml cannot loop over params inside one stage, so its transfer deps are listed by hand: they must be
    params.yaml's transfer.concepts x transfer.methods (and each family's anchors)."""
    transfer = read_yaml(REPO / "params.yaml")["transfer"]
    deps = {d for d in dep_paths(stage_bodies()["transfer"]) if d.startswith(("data/anchors/", "data/erase/"))}
    want = {f"data/anchors/{c}" for c in transfer["concepts"]}
    want |= {f"data/erase/{c}/{m}" for c in transfer["concepts"] for m in transfer["methods"]}
    assert deps == want, f"dvc.yaml transfer deps differ from params.yaml: extra {deps - want}, missing {want - deps}"


# ---------------------------------------------------------------- dvc.lock


def template_value(value: Any, variables: dict) -> Any:
    """Resolve a whole-string `${a.b}` against the variables (params.yaml and dvc.yaml `vars`)."""
    if not isinstance(value, str):
        return value
    match = TEMPLATE.fullmatch(value.strip())
    assert match, f"cannot expand {value!r}"
    node: Any = variables
    for key in match.group(1).split("."):
        node = node[key]
    return node


def stage_instances() -> list[str]:
    """The names dvc gives the stages of dvc.yaml: `name`, `name@item` (foreach), `name@a-b` (matrix)."""
    dvc = read_yaml(REPO / "dvc.yaml")
    variables = dict(read_yaml(REPO / "params.yaml")) if (REPO / "params.yaml").exists() else {}
    for entry in dvc.get("vars", []) or []:
        variables.update(entry if isinstance(entry, dict) else read_yaml(REPO / str(entry).split(":")[0]))
    names = []
    for name, stage in dvc["stages"].items():
        if "foreach" in stage:
            items = template_value(stage["foreach"], variables)
            keys = list(items) if isinstance(items, dict) else [
                item if isinstance(item, str | int | float) else i for i, item in enumerate(items)]
            names += [f"{name}@{key}" for key in keys]
        elif "matrix" in stage:
            axes = [template_value(v, variables) for v in stage["matrix"].values()]
            names += [f"{name}@" + "-".join(str(v) for v in combo) for combo in itertools.product(*axes)]
        else:
            names.append(name)
    return names


@pytest.mark.slow
def test_lock_uses_one_world_model():
    lock = read_yaml(REPO / "dvc.lock")["stages"]
    problems = [f"{name}: in dvc.yaml but not in dvc.lock (never run)" for name in stage_instances()
                if name not in lock]
    for producer, path in SHARED_OUTPUTS:
        outs = {o["path"]: o.get("md5") for o in (lock.get(producer) or {}).get("outs", [])}
        if path not in outs:
            problems.append(f"{producer}: no output {path} in dvc.lock")
            continue
        for name, stage in lock.items():
            for dep in stage.get("deps", []):
                if dep["path"] == path and dep.get("md5") != outs[path]:
                    problems.append(f"{name}: {path} {dep.get('md5')} but {producer} made {outs[path]}")
    assert not problems, "dvc.lock stages not run on the current shared outputs:\n" + "\n".join(problems)


CONFIG_MODULES = {"cdc/stages/params.py", "cdc/config.py", "cdc/methods/config.py"}


@pytest.mark.parametrize(("module", "forbidden"), [
    ("cdc.system", CONFIG_MODULES | {"cdc/methods/__init__.py"}),
    ("cdc.attention", CONFIG_MODULES),
    ("cdc.io", CONFIG_MODULES),
    ("cdc.codec", CONFIG_MODULES),
    ("cdc.text", CONFIG_MODULES),
    ("cdc.bundle", CONFIG_MODULES),
    ("cdc.lora_io", CONFIG_MODULES | {"cdc/bundle.py"}),
])
def test_lower_layers_import_no_config(module, forbidden):
    """Layers: the lowest modules (and the model bundle, and the LoRA files) import no configuration module, even
    inside a function, so the import graph has no circle through params."""
    files, _ = closure([module])
    assert not files & forbidden, f"{module} imports {sorted(files & forbidden)}"


def test_methods_package_imports_nothing():
    """Reading one method's config must not import every method (it would make every stage depend on them)."""
    files, _ = closure(["cdc.methods.config"])
    assert files == {"cdc/__init__.py", "cdc/methods/__init__.py", "cdc/methods/config.py", "cdc/config.py",
                     "cdc/choices.py"}


# ---------------------------------------------------------------- what a change re-runs


@functools.cache
def live_stages() -> list[tuple[str, list[str], list[str]]]:
    """(name, deps, outs) of every stage that is not frozen, as DVC itself expands dvc.yaml."""
    from dvc.repo import Repo

    with Repo(str(REPO)) as repo:
        return [(s.addressing, [str(d.def_path) for d in s.deps], [str(o.def_path) for o in s.outs])
                for s in repo.index.stages if not s.frozen]


def rerun_after_touching(path: str) -> set[str]:
    """The stages `dvc repro` would run after `path` changes: those that depend on it (directly, or through an
    output of such a stage), frozen stages excepted."""
    changed: set[str] = set()
    dirty = {path}
    grew = True
    while grew:
        grew = False
        for name, deps, outs in live_stages():
            if name not in changed and any(covers(d, f) or covers(f, d) for d in deps for f in dirty):
                changed.add(name)
                dirty |= set(outs)
                grew = True
    return changed


@pytest.mark.slow
def test_a_method_change_reruns_only_that_method_and_its_readers():
    """Touching DoCo's module re-runs DoCo's erasures and the rows that read them (evaluate, attack), the report
    and the paper, not the other methods' rows nor the base model's; touching the shared core re-runs every
    erasure."""
    concepts = read_yaml(REPO / "params.yaml")["erase"]["concepts"]
    doco = rerun_after_touching("cdc/methods/doco.py")
    rows = {s for s in doco if s.split("@")[0] in ("erase", "evaluate", "attack")}
    assert rows == {f"{stage}@{c}-doco" for stage in ("erase", "evaluate", "attack") for c in concepts}
    assert {"report", "paper"} <= doco
    assert not {s for s in doco if s.split("@")[0] in ("base", "evaluate_base", "attack_base", "ablate", "tradeoff",
                                                        "relearn", "multi")}
    esd = rerun_after_touching("cdc/methods/esd.py")
    assert {s for s in esd if s.startswith("erase@")} == {f"erase@{c}-esd" for c in concepts}
    core = rerun_after_touching("cdc/bundle.py")
    methods = read_yaml(REPO / "params.yaml")["erase"]["methods"]
    assert {f"erase@{c}-{m}" for c in concepts for m in methods} <= core


@pytest.mark.slow
def test_a_params_section_change_reruns_only_the_stages_that_load_it():
    """Each params.yaml section's schema is its own module: changing the relearn section's re-runs no erase,
    evaluate or attack row, and the attack section's re-runs the attack rows and not the erasures."""
    rows = ("base", "erase", "evaluate", "evaluate_base", "attack", "attack_base")
    relearn = rerun_after_touching("cdc/stages/sections/relearn.py")
    assert relearn and not {s for s in relearn if s.split("@")[0] in rows}
    attack = {s.split("@")[0] for s in rerun_after_touching("cdc/stages/sections/attack.py")}
    assert attack == {"attack", "attack_base", "report", "paper"}


def test_frozen_stages_name_the_commits_that_made_them():
    """Every stage frozen in dvc.yaml has its made-at commits in data/frozen.yaml (which the paper prints), and
    those commits are in the history when there is one."""
    import shutil
    import subprocess

    from cdc.stages.frozen import frozen_stages, made_by

    frozen = read_yaml(REPO / "data" / "frozen.yaml")
    assert list(frozen) == frozen_stages(read_yaml(REPO / "dvc.yaml"))
    assert all(rec["commits"] and rec["dates"] for rec in frozen.values())
    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True)

    if shutil.which("git") and git("rev-parse", "--is-shallow-repository").stdout.strip() == "false":
        for commit in {c for rec in frozen.values() for c in rec["commits"]}:
            assert git("cat-file", "-e", f"{commit}^{{commit}}").returncode == 0, f"{commit} is not in the history"
    # made_by: the oldest commit of the unbroken run that carries an instance's current outputs
    sampled = {"params": {"params.yaml": {"sample": {"steps": 20}}}}  # the sampler steps an instance ran with
    lock = {"a@x": {"outs": [{"path": "o", "md5": "2"}], **sampled}, "a@y": {"outs": [{"path": "p", "md5": "1"}]}}
    older = {"a@x": {"outs": [{"path": "o", "md5": "1"}]}, "a@y": {"outs": [{"path": "p", "md5": "1"}]}}
    history = [("c3", "2026-12-03", lock), ("c2", "2026-12-02", lock), ("c1", "2026-12-01", older)]
    assert made_by(history, ["a"]) == {"a": {"commits": ["c1", "c2"], "dates": ["2026-12-01", "2026-12-02"],
                                             "sample_steps": [20]}}
