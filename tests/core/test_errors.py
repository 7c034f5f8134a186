"""The error tree drawn in core/errors.py's docstring is the real class tree.

The real tree is every subclass of ``ZaphubError`` defined in ``core`` and ``plugins``, found by
importing each of their modules and walking ``__subclasses__()``.
"""

from __future__ import annotations

import importlib
import pkgutil
import re

import core
import core.errors
import plugins
from core.errors import ZaphubError

LINE = re.compile(r"^(?P<indent>(?:│   |    )*)(?P<branch>[├└]── )?(?P<name>[A-Za-z_]\w*)")


def drawn_tree(docstring: str) -> dict[str, str | None]:
    """Each class of the docstring's drawing with its drawn parent (``None`` for the root)."""
    drawing = docstring.split("```")[1].strip("\n")
    parents: dict[str, str | None] = {}
    stack: list[str] = []  # the current path from the root
    for line in drawing.splitlines():
        match = LINE.match(line)
        assert match, f"not a line of the tree: {line!r}"
        depth = len(match["indent"]) // 4 + (1 if match["branch"] else 0)
        assert depth <= len(stack), f"{match['name']} is drawn deeper than its parent: {line!r}"
        del stack[depth:]
        parents[match["name"]] = stack[-1] if stack else None
        stack.append(match["name"])
    return parents


def real_tree() -> dict[str, str | None]:
    """Each ``ZaphubError`` subclass of ``core`` and ``plugins`` with its parent class."""
    for package in (core, plugins):
        for module in pkgutil.walk_packages(package.__path__, f"{package.__name__}."):
            # __main__ runs a command; migrations run inside Alembic only.
            if not module.name.endswith(".__main__") and not module.name.startswith("core.migrations"):
                importlib.import_module(module.name)
    parents: dict[str, str | None] = {ZaphubError.__name__: None}
    todo = [ZaphubError]
    while todo:
        cls = todo.pop()
        for sub in cls.__subclasses__():
            if sub.__module__.split(".")[0] in ("core", "plugins"):  # not the tests' own
                assert sub.__name__ not in parents, f"two error classes named {sub.__name__}"
                parents[sub.__name__] = cls.__name__
                todo.append(sub)
    return parents


def differences(drawn: dict[str, str | None], real: dict[str, str | None]) -> list[str]:
    problems = [
        f"{name} is not drawn (its parent is {real[name]})" for name in sorted(set(real) - set(drawn))
    ]
    problems += [f"{name} is drawn but no such class exists" for name in sorted(set(drawn) - set(real))]
    problems += [
        f"{name} is drawn under {drawn[name]}, but its parent is {real[name]}"
        for name in sorted(set(drawn) & set(real))
        if drawn[name] != real[name]
    ]
    return problems


def test_the_docstring_draws_the_real_error_tree() -> None:
    assert core.errors.__doc__ is not None
    problems = differences(drawn_tree(core.errors.__doc__), real_tree())
    assert not problems, f"fix the tree in core/errors.py's docstring: {problems}"


def test_the_walk_finds_errors_defined_outside_core_errors() -> None:
    real = real_tree()
    assert real["SendVetoed"] == "ApiError"
    assert real["StorageError"] == "ZaphubError"
    assert real["WebhookPayloadError"] == "ZaphubError"  # plugins.whatsapp.models


def test_a_drawing_that_differs_is_reported() -> None:
    real = {"ZaphubError": None, "ApiError": "ZaphubError", "SendVetoed": "ApiError", "Other": "ZaphubError"}
    # The drawing before this test existed: SendVetoed beside ApiError instead of under it.
    old = """```
ZaphubError
├── ApiError           an answer to a CRM client
│   └── NotFoundError          404 not_found
└── SendVetoed         422 send_vetoed
```"""
    assert differences(drawn_tree(old), real) == [
        "Other is not drawn (its parent is ZaphubError)",
        "NotFoundError is drawn but no such class exists",
        "SendVetoed is drawn under ZaphubError, but its parent is ApiError",
    ]
