"""tools/check_dag.py's private-import rule, on a small tree laid out like the workspace.

Every file below holds one import; the ones marked as offences must be reported (file, line and the
private module), the others (public names, a package's own privates in its sources and tests) must not.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("check_dag", ROOT / "tools" / "check_dag.py")
assert spec is not None
assert spec.loader is not None
check_dag = importlib.util.module_from_spec(spec)
spec.loader.exec_module(check_dag)

# path -> (source, the private module reported, or None when the import is allowed)
FILES = {
    "tests/test_a.py": ("from ft_data._gguf import read_gguf_metadata\n", "ft_data._gguf"),
    "tests/test_b.py": ("import ft_data\nfrom ft_data import read_gguf_metadata\n", None),
    "tests/test_c.py": ("from ft_recipes import _train\n", "ft_recipes._train"),
    "tests/test_d.py": ("from ft_models import __version__, smollm2_gguf_path\n", None),
    "bench/bench_x.py": ("import ft_models._assets as assets\n", "ft_models._assets"),
    "apps/tune/src/ft_tune/cli.py": (
        "def f():\n    from ft_recipes._run import prepare\n",
        "ft_recipes._run",
    ),
    "apps/tune/tests/test_cli.py": ("from ft_recipes.runner import prepare\n", None),
    "packages/ft-recipes/src/ft_recipes/m.py": ("from ft_recipes._setup import pick_device\n", None),
    "packages/ft-recipes/src/ft_recipes/n.py": ("from ft_data._gguf import load_gguf\n", "ft_data._gguf"),
    "packages/ft-recipes/tests/test_own.py": ("from ft_recipes.config._edit import COMPONENT\n", None),
    "packages/ft-models/tests/test_other.py": (
        "from ft_data._bpe import BytePairTokenizer\n",
        "ft_data._bpe",
    ),
    "packages/ft-models/tests/test_own.py": ("import ft_models._gguf\n", None),
}


def _tree(root: Path) -> None:
    for rel, (source, _) in FILES.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source)


def test_private_imports_across_packages_are_reported(tmp_path: Path) -> None:
    _tree(tmp_path)
    found = sorted(check_dag.private_imports(tmp_path))
    expected = []
    for rel, (source, private) in FILES.items():
        if private is not None:
            line = next(i for i, text in enumerate(source.splitlines(), 1) if private.split(".")[0] in text)
            expected.append(f"{rel}:{line}: imports {private}, private to ")
    assert len(found) == len(expected), found
    for message, prefix in zip(found, sorted(expected), strict=True):
        assert message.startswith(prefix), (message, prefix)
        assert message.endswith("; use its public API")


def test_the_same_tree_without_its_offences_passes(tmp_path: Path) -> None:
    _tree(tmp_path)
    for rel, (_, private) in FILES.items():
        if private is not None:
            (tmp_path / rel).unlink()
    assert check_dag.private_imports(tmp_path) == []
