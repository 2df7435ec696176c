"""Order of the tests: files marked ``long`` (minutes each: the llama.cpp build of
``tests/llama_cpp_support.py``, real fine-tunes, 4-process launches) are collected first, so that with
several test processes (pytest-xdist, in collection order) they run beside the short ones instead of
leaving one process busy after the others are done."""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: item.get_closest_marker("long") is None)  # stable: the rest keep their order
