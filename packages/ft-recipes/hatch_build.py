"""Build hook: put the shipped configs into the wheel as ``ft_recipes/_configs``.

From a checkout they are the repository's top-level ``configs/``; from an sdist they are the
``configs/`` the sdist carries beside this file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface


class CustomBuildHook(BuildHookInterface):  # type: ignore[type-arg]
    """Adds the configs directory to the wheel's force-included files."""

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        root = Path(self.root)
        for candidate in (root / "configs", root.parent.parent / "configs"):
            if candidate.is_dir():
                build_data["force_include"][str(candidate)] = "ft_recipes/_configs"
                return
        raise FileNotFoundError(f"{root}: no configs/ directory to package")
