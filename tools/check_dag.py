"""Check the package dependency DAG of DESIGN.md.

Two checks per member: its declared dependencies on siblings are exactly the allowed
edges (with a version range, never a bare name), and its sources import no sibling
package outside those edges. Run by `nox -s lint`; exits non-zero naming the offence.
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
            tree = ast.parse(src.read_text(), filename=str(src))
            for node in ast.walk(tree):
                names: list[str] = []
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    names = [node.module]
                for name in names:
                    target = MODULE_TO_DIST.get(name.split(".")[0])
                    if target and target != dist and target not in reachable:
                        errors.append(f"{src.relative_to(ROOT)}:{node.lineno}: {dist} may not import {name}")
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
