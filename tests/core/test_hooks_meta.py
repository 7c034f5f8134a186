"""Hooks, docs and tests stay in step: every hook is documented and exercised by a test.

A hook is documented when docs/plugins.md has a heading with its signature, e.g.
``#### `on_message_received(host, settings, message, conversation, contact)` ``; the arguments in
the heading must be the spec's. A hook is tested when its name appears in a test file (other than
this one), which in practice means a plugin object in a test implements it.
"""

from __future__ import annotations

import re
from pathlib import Path

import pluggy

from core import hookspecs
from tests.helpers import REPO

DOC = REPO / "docs" / "plugins.md"
HEADING = re.compile(r"^#{2,6}\s+`(?P<name>[a-z_][a-z0-9_]*)\((?P<args>[^)]*)\)`", re.MULTILINE)


def spec_arguments() -> dict[str, list[str]]:
    """Every hook in core/hookspecs.py with its arguments, in declaration order."""
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    hooks = {}
    for name in vars(pm.hook):
        caller = getattr(pm.hook, name)
        if not name.startswith("_") and caller.has_spec():
            assert caller.spec is not None
            hooks[name] = list(caller.spec.argnames)
    return hooks


def documented() -> dict[str, list[str]]:
    text = DOC.read_text(encoding="utf-8")
    return {m["name"]: [a.strip() for a in m["args"].split(",") if a.strip()] for m in HEADING.finditer(text)}


def test_the_spec_is_found() -> None:
    hooks = spec_arguments()
    assert {"config_schema", "register_routes", "on_message_received", "reply_for_message"} <= set(hooks)


def test_every_hook_is_documented_with_its_arguments() -> None:
    spec, docs = spec_arguments(), documented()
    missing = sorted(set(spec) - set(docs))
    assert not missing, (
        f"hooks without a `#### \\`name(args)\\`` heading in {DOC.relative_to(REPO)}: {missing}"
    )
    wrong = {name: (docs[name], args) for name, args in spec.items() if docs[name] != args}
    assert not wrong, f"documented arguments differ from core/hookspecs.py (doc, spec): {wrong}"


def test_no_documented_hook_is_missing_from_the_spec() -> None:
    stale = sorted(set(documented()) - set(spec_arguments()))
    assert not stale, f"{DOC.relative_to(REPO)} documents hooks that core/hookspecs.py does not have: {stale}"


def test_every_hook_is_exercised_by_a_test() -> None:
    this = Path(__file__).resolve()
    sources = [
        p.read_text(encoding="utf-8")
        for p in (REPO / "tests").rglob("*.py")
        if p.resolve() != this and "node_modules" not in p.parts
    ]
    untested = sorted(
        name for name in spec_arguments() if not any(re.search(rf"\b{name}\b", text) for text in sources)
    )
    assert not untested, (
        f"hooks that no test under tests/ mentions (add a test that implements them): {untested}"
    )
