"""Hooks, docs and tests stay in step: every hook is documented, marked and tested.

- Documented: docs/plugins.md has a heading with its signature, e.g.
  ``#### `on_message_received(host, settings, message, conversation, contact)` ``; the arguments in
  the heading are the spec's.
- Marked: a heading ends with ``— `firstresult` `` exactly when the spec says ``firstresult=True``,
  and the "How hooks are called" list of ``firstresult`` hooks names exactly those.
- Tested: a test function named ``test_hook_<name>`` exists under tests/ (most are in
  tests/core/test_hooks.py), the datasette convention. A mention of the name is not enough.

Each check is a function of the texts it reads, so the last tests below prove each one fails.
"""

from __future__ import annotations

import ast
import re

import pluggy

from core import hookspecs
from tests.helpers import REPO

DOC = REPO / "docs" / "plugins.md"
HEADING = re.compile(
    r"^#{2,6}\s+`(?P<name>[a-z_][a-z0-9_]*)\((?P<args>[^)]*)\)`(?P<marker>\s+—\s+`firstresult`)?\s*$",
    re.MULTILINE,
)
FIRSTRESULT_LIST = re.compile(r"\*\*`firstresult` hooks\*\* \((?P<names>[^)]*)\)")


def spec_hooks() -> dict[str, tuple[list[str], bool]]:
    """Every hook in core/hookspecs.py: its arguments in declaration order, and whether it is firstresult."""
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    hooks = {}
    for name in vars(pm.hook):
        caller = getattr(pm.hook, name)
        if not name.startswith("_") and caller.has_spec():
            assert caller.spec is not None
            hooks[name] = (list(caller.spec.argnames), bool(caller.spec.opts.get("firstresult")))
    return hooks


def documented(text: str) -> dict[str, tuple[list[str], bool]]:
    """Hook headings of the docs: arguments, and whether the heading carries the firstresult marker."""
    return {
        m["name"]: ([a.strip() for a in m["args"].split(",") if a.strip()], m["marker"] is not None)
        for m in HEADING.finditer(text)
    }


def defined_functions(sources: list[str]) -> set[str]:
    """Names of every (async) function defined in these Python sources, methods included."""
    names = set()
    for source in sources:
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                names.add(node.name)
    return names


def sources_under_tests() -> list[str]:
    return [
        p.read_text(encoding="utf-8")
        for p in (REPO / "tests").rglob("test_*.py")
        if "node_modules" not in p.parts
    ]


def undocumented(
    spec: dict[str, tuple[list[str], bool]], docs: dict[str, tuple[list[str], bool]]
) -> list[str]:
    return sorted(set(spec) - set(docs))


def wrong_arguments(
    spec: dict[str, tuple[list[str], bool]], docs: dict[str, tuple[list[str], bool]]
) -> dict[str, tuple[list[str], list[str]]]:
    return {
        name: (docs[name][0], args)
        for name, (args, _) in spec.items()
        if name in docs and docs[name][0] != args
    }


def wrong_markers(spec: dict[str, tuple[list[str], bool]], text: str) -> list[str]:
    """Hooks whose firstresult marking in the docs (heading or list) differs from the spec."""
    docs = documented(text)
    problems = [
        f"{name}: spec firstresult={first}, heading {'has' if docs[name][1] else 'lacks'} the marker"
        for name, (_, first) in spec.items()
        if name in docs and docs[name][1] != first
    ]
    listed = FIRSTRESULT_LIST.search(text)
    named = set(re.findall(r"`([a-z_0-9]+)`", listed["names"])) if listed else set()
    expected = {name for name, (_, first) in spec.items() if first}
    if named != expected:
        problems.append(
            f"the list of firstresult hooks names {sorted(named)}, the spec has {sorted(expected)}"
        )
    return problems


def untested(spec: dict[str, tuple[list[str], bool]], functions: set[str]) -> list[str]:
    return sorted(name for name in spec if f"test_hook_{name}" not in functions)


def test_the_spec_is_found() -> None:
    hooks = spec_hooks()
    assert {"config_schema", "register_routes", "on_message_received", "reply_for_message"} <= set(hooks)
    assert hooks["reply_for_message"][1] and not hooks["on_message_received"][1]


def test_every_hook_is_documented_with_its_arguments() -> None:
    spec, docs = spec_hooks(), documented(DOC.read_text(encoding="utf-8"))
    missing = undocumented(spec, docs)
    assert not missing, (
        f"hooks without a `#### \\`name(args)\\`` heading in {DOC.relative_to(REPO)}: {missing}"
    )
    wrong = wrong_arguments(spec, docs)
    assert not wrong, f"documented arguments differ from core/hookspecs.py (doc, spec): {wrong}"


def test_no_documented_hook_is_missing_from_the_spec() -> None:
    stale = sorted(set(documented(DOC.read_text(encoding="utf-8"))) - set(spec_hooks()))
    assert not stale, f"{DOC.relative_to(REPO)} documents hooks that core/hookspecs.py does not have: {stale}"


def test_the_docs_mark_exactly_the_firstresult_hooks() -> None:
    problems = wrong_markers(spec_hooks(), DOC.read_text(encoding="utf-8"))
    assert not problems, (
        f"{DOC.relative_to(REPO)}: end the heading of a firstresult hook with ' — `firstresult`' and "
        f"list it under 'How hooks are called': {problems}"
    )


def test_every_hook_has_its_test_hook_function() -> None:
    missing = untested(spec_hooks(), defined_functions(sources_under_tests()))
    assert not missing, (
        "hooks without a test named test_hook_<name> under tests/ (add one to tests/core/test_hooks.py "
        f"that fires the hook through a host and checks what comes of it): {missing}"
    )


# -- the checks can fail ---------------------------------------------------------------------------

SPEC = {"on_thing": (["host", "thing"], False), "pick_one": (["host"], True)}
GOOD_DOC = """
- **`firstresult` hooks** (`pick_one`) stop at the first answer.

#### `on_thing(host, thing)`
#### `pick_one(host)` — `firstresult`
"""


def test_the_checks_accept_a_consistent_doc_and_tests() -> None:
    docs = documented(GOOD_DOC)
    assert docs == {"on_thing": (["host", "thing"], False), "pick_one": (["host"], True)}
    assert not undocumented(SPEC, docs)
    assert not wrong_arguments(SPEC, docs)
    assert not wrong_markers(SPEC, GOOD_DOC)
    assert not untested(
        SPEC, defined_functions(["def test_hook_on_thing(): ...\nasync def test_hook_pick_one(): ..."])
    )


def test_each_check_fails_on_what_it_guards() -> None:
    assert undocumented(SPEC, documented(GOOD_DOC.replace("#### `on_thing(host, thing)`", ""))) == [
        "on_thing"
    ]
    assert wrong_arguments(SPEC, documented(GOOD_DOC.replace("(host, thing)", "(host)"))) == {
        "on_thing": (["host"], ["host", "thing"])
    }
    unmarked = GOOD_DOC.replace("#### `pick_one(host)` — `firstresult`", "#### `pick_one(host)`")
    assert wrong_markers(SPEC, unmarked) == ["pick_one: spec firstresult=True, heading lacks the marker"]
    marked = GOOD_DOC.replace("#### `on_thing(host, thing)`", "#### `on_thing(host, thing)` — `firstresult`")
    assert wrong_markers(SPEC, marked) == ["on_thing: spec firstresult=False, heading has the marker"]
    unlisted = GOOD_DOC.replace("(`pick_one`)", "(`on_thing`)")
    assert wrong_markers(SPEC, unlisted) == [
        "the list of firstresult hooks names ['on_thing'], the spec has ['pick_one']"
    ]
    # A mention, a comment or a differently named test does not count as the hook's test.
    sources = [
        "# test_hook_on_thing\ndef test_on_thing_works(): 'test_hook_pick_one'",
        "def test_hook_pick_one_x(): ...",
    ]
    assert untested(SPEC, defined_functions(sources)) == ["on_thing", "pick_one"]
