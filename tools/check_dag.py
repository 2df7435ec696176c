"""Check the package dependency DAG of ARCHITECTURE.md, and that packages meet only through public names.

Per member: its declared dependencies on siblings are exactly the allowed edges (with a version
range, never a bare name), and its sources import no sibling package outside those edges.

Private imports: a module or name whose dotted path has a part starting with one underscore
(`ft_data._gguf`, `from ft_models import _assets`) is private to its package. A member's sources and
its own tests (`packages/ft-x/tests`, `apps/tune/tests`) may import that member's privates, never
another's; the top-level `tests/` and `bench/` may import none. Run by `nox -s lint`; exits
non-zero naming each offence.
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MEMBERS = {
    "ft-models": ("packages/ft-models", "ft_models"),
    "ft-peft": ("packages/ft-peft", "ft_peft"),
    "ft-dist": ("packages/ft-dist", "ft_dist"),
    "ft-data": ("packages/ft-data", "ft_data"),
    "ft-recipes": ("packages/ft-recipes", "ft_recipes"),
    "ft-tune": ("apps/tune", "ft_tune"),
}
ALLOWED = {
    "ft-models": set(),
    "ft-peft": set(),
    "ft-dist": set(),
    "ft-data": set(),
    "ft-recipes": {"ft-models", "ft-peft", "ft-dist", "ft-data"},
    "ft-tune": {"ft-recipes"},
}
MODULE_TO_DIST = {module: dist for dist, (_, module) in MEMBERS.items()}


def _transitive(dist: str) -> set[str]:
    out: set[str] = set()
    todo = list(ALLOWED[dist])
    while todo:
        d = todo.pop()
        if d not in out:
            out.add(d)
            todo.extend(ALLOWED[d])
    return out


def _imports(src: Path) -> list[tuple[int, str]]:
    """``(line, dotted name)`` of every absolute import in ``src``; ``from m import a`` gives ``m.a``."""
    tree = ast.parse(src.read_text(), filename=str(src))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
    return found


def _private_prefix(name: str) -> str | None:
    """``ft_x._mod`` for ``ft_x._mod.thing`` (up to the first private part), None for a public name."""
    parts = name.split(".")
    for i, part in enumerate(parts[1:], start=1):
        if part.startswith("_") and not part.startswith("__"):
            return ".".join(parts[: i + 1])
    return None


def private_imports(root: Path) -> list[str]:
    """Imports of another package's private module or name under ``root`` (see the module docstring)."""
    errors: list[str] = []
    scopes: list[tuple[Path, str | None]] = [(root / "tests", None), (root / "bench", None)]
    for path, module in MEMBERS.values():
        scopes += [(root / path / "src", module), (root / path / "tests", module)]
    for folder, own in scopes:
        for src in sorted(folder.rglob("*.py")) if folder.is_dir() else []:
            for lineno, name in _imports(src):
                top = name.split(".")[0]
                private = _private_prefix(name)
                if top in MODULE_TO_DIST and top != own and private is not None:
                    where = f"{src.relative_to(root)}:{lineno}"
                    errors.append(
                        f"{where}: imports {private}, private to {MODULE_TO_DIST[top]}; use its public API"
                    )
    return errors


def check() -> list[str]:
    errors: list[str] = []
    for dist, (path, _module) in MEMBERS.items():
        pyproject = ROOT / path / "pyproject.toml"
        project = tomllib.loads(pyproject.read_text())["project"]
        declared: set[str] = set()
        for req in project.get("dependencies", []):
            name = re.split(r"[\s\[<>=!~;]", req, maxsplit=1)[0].lower().replace("_", "-")
            if name in MEMBERS:
                declared.add(name)
                if not re.search(r"[<>=~]", req):
                    errors.append(f"{pyproject}: dependency {req!r} needs a version range")
        if declared != ALLOWED[dist]:
            errors.append(
                f"{pyproject}: sibling dependencies {sorted(declared)} != allowed {sorted(ALLOWED[dist])}"
            )
        reachable = _transitive(dist)
        for src in sorted((ROOT / path / "src").rglob("*.py")):
            for lineno, name in _imports(src):
                target = MODULE_TO_DIST.get(name.split(".")[0])
                if target and target != dist and target not in reachable:
                    errors.append(f"{src.relative_to(ROOT)}:{lineno}: {dist} may not import {name}")
    errors += private_imports(ROOT)
    return errors


def main() -> int:
    errors = check()
    for error in errors:
        print(error, file=sys.stderr)
    if not errors:
        print(f"dependency DAG ok ({len(MEMBERS)} members)")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
