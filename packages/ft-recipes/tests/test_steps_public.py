"""`ft_recipes.steps` names every shared recipe step publicly: nothing a copied recipe needs stays private."""

from __future__ import annotations

from ft_recipes import _preference_steps, _setup, _train, _training_setup, steps


def test_every_shared_step_has_its_public_name() -> None:
    modules = (_train, _setup, _training_setup, _preference_steps)
    assert set(steps.__all__) == set().union(*(m.__all__ for m in modules))
    for name in steps.__all__:  # the same objects, not copies
        implementation = next(getattr(m, name) for m in modules if name in m.__all__)
        assert getattr(steps, name) is implementation, name
