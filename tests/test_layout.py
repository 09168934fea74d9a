"""The layout (README, "Where things live"): its import rules and its map of the package.

The README's rule table is the one place the import rules live: a row names top-level modules or
packages of ``src/relaydiff`` and what they may import; a row may also reach whatever the rows it
lists may, so the table's closure is what each module may *reach*. These tests read every import
of the package with ``ast`` (module level, inside functions and ``TYPE_CHECKING`` blocks, relative
and absolute), follow them transitively (importing ``a.b.c`` runs ``a/__init__.py`` and
``a/b/__init__.py`` too) and fail on any module that reaches what its row does not allow, naming
the path. Whatever modules exist are checked; the README's tree must name exactly what ships.
"""

from __future__ import annotations

import ast
import re
from collections import deque
from collections.abc import Collection, Iterable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ROOT = REPO / "src" / "relaydiff"
README = REPO / "README.md"
INIT = "__init__"  # the package's own __init__.py: no row lists it, so nothing may import it
EXT = "ext:"  # graph nodes for packages outside relaydiff: "ext:click"

Graph = dict[str, set[str]]
Table = dict[str, set[str]]


# --- reading the code -------------------------------------------------------------------------


def module_name(path: Path, root: Path = ROOT) -> str:
    """``data.datasets`` for ``root/data/datasets.py``, ``data`` for ``root/data/__init__.py`` and
    :data:`INIT` for ``root/__init__.py``."""
    parts = path.relative_to(root).with_suffix("").parts
    if parts == (INIT,):
        return INIT
    return ".".join(parts[:-1] if parts[-1] == INIT else parts)


def find_modules(root: Path = ROOT) -> dict[str, Path]:
    """Every module of the package under ``root``, by name."""
    return {module_name(p, root): p for p in sorted(root.rglob("*.py")) if "__pycache__" not in p.parts}


def imports_of(name: str, path: Path, modules: Collection[str], package: str = "relaydiff") -> set[str]:
    """What module ``name`` (the file ``path``) imports anywhere in its source: relaydiff modules by
    name, with the ``__init__`` of every package on the way (``a.b.c`` adds ``a.b`` and ``a``), and
    ``ext:<top-level name>`` for anything outside relaydiff. ``from relaydiff import x`` and the
    top level's ``from . import x`` read ``x`` through the package ``__init__`` (:data:`INIT`),
    whether or not ``x`` is a module; ``import relaydiff.x`` names the module itself."""
    here = [] if name == INIT else name.split(".")
    package_parts = here if path.name == "__init__.py" else here[:-1]
    found: set[str] = set()

    def add(parts: list[str]) -> None:
        for i in range(1, len(parts) + 1):
            dotted = ".".join(parts[:i])
            if dotted in modules or i == len(parts):
                found.add(dotted)

    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                top, *rest = alias.name.split(".")
                if top != package:
                    found.add(EXT + top)
                elif rest:
                    add(rest)
                else:
                    found.add(INIT)
        elif isinstance(node, ast.ImportFrom):
            mod = node.module.split(".") if node.module else []
            if node.level == 0:
                if mod[0] != package:
                    found.add(EXT + mod[0])
                    continue
                base = mod[1:]
            else:
                up = node.level - 1
                if up > len(package_parts):
                    raise ValueError(f"{path}:{node.lineno}: relative import beyond the package")
                base = package_parts[: len(package_parts) - up] + mod
            if not base:
                found.add(INIT)
            else:
                add(base)
            for alias in node.names:
                sub = ".".join([*base, alias.name])
                if sub in modules:
                    add([*base, alias.name])
    return found


def import_graph(root: Path = ROOT) -> Graph:
    """Module name → what it imports directly (:func:`imports_of`), for every module under root."""
    modules = find_modules(root)
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


# --- reading the README -----------------------------------------------------------------------


def layout_section(readme: Path = README) -> str:
    """The README's "Where things live" section."""
    text = readme.read_text(encoding="utf-8")
    start = text.index("## Where things live")
    end = text.find("\n## ", start + 1)
    return text[start:] if end < 0 else text[start:end]


def rule_table(section: str) -> Table:
    """The rule table: each name of a row's first column → the names (in backticks) of its second
    column; a row without backticked names (the header, the rule under it) is skipped."""
    table: Table = {}
    for line in section.splitlines():
        if not line.startswith("|"):
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        names = re.findall(r"`([^`]+)`", cells[0])
        allowed = set(re.findall(r"`([^`]+)`", cells[1])) if len(cells) > 1 else set()
        for name in names:
            assert name not in table, f"README's rule table has two rows for `{name}`"
            table[name] = allowed
    return table


def row_of(node: str) -> str:
    """The table row that rules a graph node: its top-level module or package, or the external
    package's name."""
    return node.removeprefix(EXT) if node.startswith(EXT) else node.split(".")[0]


def may_reach(table: Table) -> Table:
    """Each row → every name it may reach: itself, its listed names, theirs, and so on."""
    reach: Table = {}
    for row in table:
        seen, todo = {row}, [row]
        while todo:
            for nxt in table.get(todo.pop(), ()):
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        reach[row] = seen
    return reach


def ruled_externals(table: Table, graph: Graph) -> set[str]:
    """External packages the table rules on: the names in it that are no module or package of
    relaydiff (``click``, which has a row of its own and is listed only where it may be used)."""
    return set(table).union(*table.values()) - {row_of(name) for name in graph}


def ruled_name(node: str, table: Table, graph: Graph) -> str | None:
    """The table's name for a graph node: its row, or a ruled external package; ``None`` for an
    external package the table says nothing about (``ext:torch``, the standard library's ``io``)."""
    if node.startswith(EXT):
        name = node.removeprefix(EXT)
        return name if name in ruled_externals(table, graph) else None
    return row_of(node)


def violations(graph: Graph, table: Table, starts: Iterable[str] | None = None) -> list[str]:
    """``"a → b → c: `a` may not reach `c`"`` for each module (of ``starts``, default all) and each
    name (row or ruled external) in its transitive import closure that its row does not allow,
    by a shortest path to it."""
    reach, ruled = may_reach(table), ruled_externals(table, graph)
    bad = []
    for start in sorted(graph if starts is None else starts):
        row = row_of(start)
        if row not in table:
            bad.append(f"{start}: no row for `{row}` in README's rule table")
            continue
        parent: dict[str, str | None] = {start: None}
        reported: set[str] = set()  # one path per forbidden name is enough
        queue = deque([start])
        while queue:
            node = queue.popleft()
            for nxt in sorted(graph.get(node, ())):
                if nxt in parent:
                    continue
                parent[nxt] = node
                queue.append(nxt)
                target = row_of(nxt)
                allowed = target in reach[row] or (nxt.startswith(EXT) and target not in ruled)
                if allowed or target in reported:
                    continue
                reported.add(target)
                path, at = [], nxt
                while at is not None:
                    path.append(at)
                    at = parent[at]
                bad.append(f"{' → '.join(reversed(path))}: `{row}` may not reach `{target}`")
    return bad


def readme_tree(section: str) -> tuple[set[str], set[str]]:
    """``(named, at_root)``: what the tree block names under ``src/relaydiff/`` (paths relative to
    it, folders ending in ``/``; the ``x.py`` names in a folder's description are its files) and
    what it names at the repository's root.

    An entry line starts with its names at an indent of 2 per level (0: the repository's root),
    followed by two or more spaces and a description; lines indented 8 or more continue it."""
    block = re.search(r"```\n(src/relaydiff/\n.*?)```", section, re.S)
    assert block, "README's layout section has no tree block starting with src/relaydiff/"
    named: set[str] = set()
    at_root: set[str] = set()
    folders: list[str] = []  # the folder entries above this line, one per level
    descriptions: dict[str, str] = {}
    current: str | None = None  # the folder whose description a continuation line extends
    for line in block.group(1).splitlines()[1:]:
        indent = len(line) - len(line.lstrip(" "))
        if not line.strip():
            continue
        if indent >= 8:
            if current is not None:
                descriptions[current] += " " + line.strip()
            continue
        names, *description = re.split(r"\s{2,}", line.strip(), maxsplit=1)
        current = None
        if indent == 0:
            at_root.update(names.split())
            continue
        depth = indent // 2
        folders = folders[: depth - 1]
        prefix = "".join(folders)
        for name in names.split():
            assert name.endswith((".py", "/")), f"README's tree: {name!r} is no file.py or folder/"
            named.add(prefix + name)
            if name.endswith("/"):
                current = prefix + name
                folders = [*folders[: depth - 1], name]
                descriptions[current] = description[0] if description else ""
    for folder, text in descriptions.items():
        named.update(folder + file for file in re.findall(r"(?<![\w./])(\w+\.py)\b", text))
    return named, at_root


def shipped(root: Path = ROOT) -> set[str]:
    """What the tree must name: every module but ``__init__.py``, every folder holding modules and
    every top-level folder (``configs/``, ``pretrained/``), as :func:`readme_tree` writes them."""
    found = set()
    for path in root.rglob("*"):
        if "__pycache__" in path.parts:
            continue
        rel = path.relative_to(root)
        if path.is_dir() and (len(rel.parts) == 1 or any(path.rglob("*.py"))):
            found.add(rel.as_posix() + "/")
        elif path.suffix == ".py" and path.name != "__init__.py":
            found.add(rel.as_posix())
    return found


SECTION = layout_section()
TABLE = rule_table(SECTION)
GRAPH = import_graph()


# --- the rules ----------------------------------------------------------------------------------


def test_the_rule_table_names_every_module_and_package_once_and_nothing_else():
    rows = {row_of(name) for name in GRAPH}
    imported = {row_of(t) for targets in GRAPH.values() for t in targets if t.startswith(EXT)}
    assert len(TABLE) > 15, "README's rule table was not found"
    assert sorted(rows - set(TABLE)) == [], "modules or packages with no row in README's rule table"
    assert sorted(set(TABLE) - rows - imported) == [], "rows in README's rule table for nothing that exists"
    unknown = sorted(ruled_externals(TABLE, GRAPH) - imported)
    assert unknown == [], "names in the table that are no row and no package relaydiff imports (typos?)"


def test_the_rule_table_has_no_cycle():
    """Data flows one way: no row may reach a row that may reach it back."""
    reach = may_reach(TABLE)
    assert sorted(r for r in TABLE if any(r in reach[a] for a in TABLE[r] if a in TABLE)) == []


def test_no_module_reaches_what_its_row_does_not_allow():
    assert violations(GRAPH, TABLE) == []


def test_the_rule_table_is_as_tight_as_the_code():
    """Every name a row lists is imported directly by some module of that row (else drop it)."""
    unused = []
    for row, allowed in TABLE.items():
        direct = {ruled_name(t, TABLE, GRAPH) for name, targets in GRAPH.items() if row_of(name) == row
                  for t in targets}
        unused += [f"`{row}` lists `{name}`" for name in sorted(allowed - direct)]
    assert unused == []


OURS = sorted(set(TABLE) - ruled_externals(TABLE, GRAPH))


@pytest.mark.parametrize("row", OURS)
def test_each_rule_catches_a_forbidden_import_direct_or_indirect(row):
    """For every name ``row`` may not reach, a scratch copy of the import graph with one more edge
    fails the rule: ``m → target`` from a module of the row, and ``m → via → target`` through a
    scratch module of a row it may import (or of its own), so only the transitive path breaks."""
    reach = may_reach(TABLE)[row]
    externals = ruled_externals(TABLE, GRAPH)
    targets = [EXT + name if name in externals else name
               for name in sorted(set(TABLE).union(*TABLE.values())) if name not in reach]
    assert targets, f"`{row}` may reach everything: the rule cannot fail"
    start = min((name for name in GRAPH if row_of(name) == row), default=row)
    via = min((name for name in TABLE[row] if name in OURS), default=row) + "._scratch"
    for target in targets:
        direct = {**GRAPH, start: GRAPH.get(start, set()) | {target}}
        found = violations(direct, TABLE, [start])
        assert any(line.startswith(f"{start} → {target}: ") for line in found), found
        indirect = {**GRAPH, start: GRAPH.get(start, set()) | {via}, via: {target}}
        found = violations(indirect, TABLE, [start])
        assert any(line.startswith(f"{start} → {via} → {target}: ") for line in found), found


def test_the_reader_sees_every_kind_of_import(tmp_path):
    """Module level and inside functions, relative and absolute, through the package init."""
    pkg = tmp_path / "relaydiff"
    (pkg / "sub").mkdir(parents=True)
    for name in ("__init__.py", "a.py", "b.py", "sub/__init__.py", "sub/c.py"):
        (pkg / name).write_text("")
    (pkg / "a.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "import click.testing\n"
        "from . import __version__\n"
        "from .sub.c import f\n"
        "if TYPE_CHECKING:\n    import torch\n"
        "def g():\n    import relaydiff.b as b\n    from .sub import thing\n"
    )
    (pkg / "sub" / "c.py").write_text("from .. import b\nfrom . import missing\nimport relaydiff\n")
    graph = import_graph(pkg)
    assert graph["a"] == {"ext:typing", "ext:click", "ext:torch", INIT, "sub", "sub.c", "b"}
    assert graph["sub.c"] == {INIT, "b", "sub"}
    assert graph[INIT] == graph["b"] == graph["sub"] == set()
    table = {INIT: set(), "a": {"sub", "click"}, "b": set(), "sub": {"b"}, "click": set()}
    # a may reach b through sub, and click; torch and typing are no business of the table
    assert violations(graph, table) == ["a → __init__: `a` may not reach `__init__`",
                                        "sub.c → __init__: `sub` may not reach `__init__`"]
    table["a"] = {"sub"}
    assert violations(graph, table)[:2] == ["a → __init__: `a` may not reach `__init__`",
                                            "a → ext:click: `a` may not reach `click`"]
    assert row_of("data.datasets") == "data" and ruled_name("ext:io", TABLE, GRAPH) is None


# --- the map ------------------------------------------------------------------------------------


def test_the_readme_tree_names_exactly_what_ships():
    named, at_root = readme_tree(SECTION)
    actual = shipped()
    assert sorted(actual - named) == [], "in src/relaydiff but not in README's tree"
    assert sorted(named - actual) == [], "in README's tree but not in src/relaydiff"
    assert sorted(p for p in at_root if not (REPO / p).exists()) == []


def test_the_tree_reader_fails_on_a_stale_tree():
    """A file added or removed without the README shows up in one of the two differences."""
    section = ("```\nsrc/relaydiff/\n  ops.py gone.py    the math\n  io/   files.py and\n"
               "          images.py\n    deep/     x.py\n  app/   cli.py\nbench/ nowhere/\n```\n")
    named, at_root = readme_tree(section)
    assert named == {"ops.py", "gone.py", "io/", "io/files.py", "io/images.py", "io/deep/",
                     "io/deep/x.py", "app/", "app/cli.py"}
    assert at_root == {"bench/", "nowhere/"}
    assert named - shipped() == {"gone.py", "io/deep/", "io/deep/x.py"}
    assert {"cascade.py", "io/tensors.py", "app/commands/", "configs/"} <= shipped() - named


def test_every_docs_citation_in_the_code_names_a_page_and_section_that_exist():
    """Docstrings cite ``docs/<page>.md §n``; each page must ship and each section be a heading."""
    docs = REPO / "docs"
    cited = 0
    for path in ROOT.rglob("*.py"):
        for page, section in re.findall(r"docs/([\w.-]+\.md)(?: §(\d+(?:\.\d+)?))?", path.read_text()):
            assert (docs / page).is_file(), f"{path.name} cites docs/{page}, which does not exist"
            if section:
                heads = re.findall(r"^#+ (\d+(?:\.\d+)?)\.? ", (docs / page).read_text(), re.M)
                assert section in heads, f"{path.name} cites docs/{page} §{section}: no such section"
            cited += 1
    assert cited > 20  # the rule must see the citations
    assert "DESIGN" not in "".join(p.read_text() for p in ROOT.rglob("*.py"))
