"""dvc.yaml lists, for every stage, every project module its command imports.

DVC reruns a stage when one of its ``deps`` changes, so a module missing from them (the writer
of a published format, the config loader, a shared reader) can change without ``dvc status``
noticing: the published artifacts go stale while DVC reports them up to date. The import
closure is computed from the code (every ``import tasks.x`` / ``from tasks.x import ...``
anywhere in a module, function-level imports included, followed through the modules they
import), so this test fails, naming the stage and the module, as soon as the code and
``dvc.yaml`` drift apart.

    python tests/test_dvc_deps.py      # print the deps each stage is missing (or extra)
"""

from __future__ import annotations

import ast
import re
import sys
from functools import cache
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("tasks", "flows")


def module_file(module: str) -> Path | None:
    """The file of a project module (``tasks.score`` -> ``tasks/score.py``), else None."""
    if module.split(".")[0] not in PACKAGES:
        return None
    base = ROOT / module.replace(".", "/")
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.exists():
            return path
    return None


def _imported(path: Path) -> set[str]:
    """Project modules named by the import statements of one file (anywhere in it)."""
    found: set[str] = set()
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            # `from tasks import score` imports the module tasks.score
            names = [base, *(f"{base}.{alias.name}" for alias in node.names)]
        else:
            continue
        found.update(n for n in names if module_file(n) is not None)
    return found


@cache
def closure(module: str) -> frozenset[str]:
    """Files (relative to the root) of ``module`` and every project module it imports, transitively."""
    seen: set[str] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        path = module_file(name)
        if path is not None:
            todo.extend(_imported(path))
    files = {module_file(m) for m in seen}
    return frozenset(str(f.relative_to(ROOT)) for f in files if f is not None and not _empty_init(f))


def _empty_init(path: Path) -> bool:
    """An empty package ``__init__.py`` does nothing when imported: not a dependency."""
    return path.name == "__init__.py" and not path.read_text(encoding="utf-8").strip()


def stage_modules() -> dict[str, tuple[str, list[str]]]:
    """``stage name -> (module its cmd runs, deps that are project files)`` from dvc.yaml."""
    dvc = yaml.safe_load((ROOT / "dvc.yaml").read_text(encoding="utf-8"))
    out = {}
    for name, stage in dvc["stages"].items():
        body = stage.get("do", stage)
        match = re.search(r"python -m ((?:tasks|flows)\.[a-z_0-9.]+)", body["cmd"])
        assert match, f"stage {name}: cmd must run `python -m tasks.<module>`"
        deps = [d for d in body.get("deps", []) if d.split("/")[0] in PACKAGES]
        out[name] = (match.group(1), deps)
    return out


def missing_and_extra() -> dict[str, tuple[list[str], list[str]]]:
    report = {}
    for name, (module, deps) in stage_modules().items():
        needed = closure(module)
        report[name] = (sorted(needed - set(deps)), sorted(set(deps) - needed))
    return report


def test_package_inits_are_empty():
    """The closure skips empty ``__init__.py`` files; one that gains code must become a dep."""
    for package in PACKAGES:
        assert _empty_init(ROOT / package / "__init__.py"), f"{package}/__init__.py has code: list it in deps"


def test_closure_follows_function_level_and_transitive_imports():
    # tasks.score imports tasks.scaleout inside main(); scaleout imports tasks.accel at the top
    files = closure("tasks.score")
    assert {"tasks/score.py", "tasks/scores_pickle.py", "tasks/config.py", "tasks/io.py"} <= files
    assert "tasks/scaleout.py" in files and "tasks/accel.py" in files
    assert "tasks/encode.py" not in files  # model identity lives in tasks/models.py
    assert all(f.startswith(PACKAGES) for f in files)


def test_every_stage_depends_on_every_module_it_imports():
    problems = []
    for name, (missing, _extra) in missing_and_extra().items():
        problems += [f"stage {name!r}: dvc.yaml deps lack {m} (imported by its command)" for m in missing]
    assert not problems, "\n".join(problems)


def test_no_stage_lists_a_module_it_does_not_import():
    """A dep the command never imports reruns the stage for nothing (and hides a stale list)."""
    problems = []
    for name, (_missing, extra) in missing_and_extra().items():
        problems += [f"stage {name!r}: dvc.yaml dep {e} is not imported by its command" for e in extra]
    assert not problems, "\n".join(problems)


if __name__ == "__main__":
    bad = 0
    for stage, (missing, extra) in missing_and_extra().items():
        for m in missing:
            print(f"{stage}: missing {m}")  # noqa: T201
            bad += 1
        for e in extra:
            print(f"{stage}: extra {e}")  # noqa: T201
            bad += 1
    sys.exit(1 if bad else 0)
