"""`ft_recipes.steps` names every shared recipe step publicly: nothing a copied recipe needs stays private."""

from __future__ import annotations

from ft_recipes import _setup, _train, steps


def test_every_shared_step_has_its_public_name() -> None:
    assert set(steps.__all__) == set(_train.__all__) | set(_setup.__all__)
    for name in steps.__all__:  # the same objects, not copies
        implementation = getattr(_train, name, None) or getattr(_setup, name)
        assert getattr(steps, name) is implementation, name
