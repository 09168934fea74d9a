"""The layout's import rules (README, "Where things live"), read from the source with ``ast``.

Data flows one way: data → training → checkpoints → stages → cascade → sample folders →
metrics → report, with the command line on top. The rules below fail on any import (at module
level or inside a function) that runs against that flow.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import relaydiff

ROOT = Path(relaydiff.__file__).parent
MATH = {"ops", "schedules", "precond", "losses", "samplers"}
# Stubs that keep the old import paths alive for one release (relaydiff._deprecated).
ENTRY_POINT = "__main__"  # ``python -m relaydiff``: the command line's entry, on top like app
DEPRECATED_STUBS = {"cli", "generate", "demo", "report", "data.files", "data.images",
                    "training.distributed"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports(path: Path) -> list[tuple[int, str]]:
    """``(line, target)`` of every import: a relaydiff module relative to the package (``""`` is
    the package ``__init__``; ``from pkg import name`` counts as importing ``pkg`` unless
    ``pkg.name`` is a module) or ``"ext:<module>"`` for anything outside relaydiff."""
    name = module_name(path)
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.append((node.lineno, alias.name.removeprefix("relaydiff").lstrip(".")
                              if alias.name.split(".")[0] == "relaydiff" else "ext:" + alias.name))
        elif isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            if node.level == 0 and mod.split(".")[0] != "relaydiff":
                found.append((node.lineno, "ext:" + mod))
                continue
            if node.level == 0:
                base = mod.removeprefix("relaydiff").lstrip(".")
            else:
                base = ".".join(package[: len(package) - (node.level - 1)] + ([mod] if mod else []))
            for alias in node.names:
                sub = ".".join(filter(None, [base, alias.name]))
                found.append((node.lineno, sub if sub in MODULES else base))
    return found


MODULES = {module_name(p): p for p in ROOT.rglob("*.py")}


def violations(rule) -> list[str]:
    bad = []
    for name, path in sorted(MODULES.items()):
        if name in DEPRECATED_STUBS:
            continue
        for line, target in imports(path):
            why = rule(name, target)
            if why:
                bad.append(f"{path.relative_to(ROOT.parent)}:{line} imports {target}: {why}")
    return bad


def under(target: str, *roots: str) -> bool:
    return any(target == r or target.startswith(r + ".") for r in roots)


def test_the_math_imports_no_io_data_training_metrics_or_app():
    def rule(name, target):
        if name in MATH and not target.startswith("ext:") and not under(target, *MATH):
            return "the math modules import only each other"
    assert violations(rule) == []


def test_metrics_import_no_networks_samplers_cascade_or_training():
    def rule(name, target):
        if under(name, "metrics") and under(target, "networks", "samplers", "cascade", "stage",
                                            "pretrained", "training", "app"):
            return "metrics stand alone: they read image sets, never models"
    assert violations(rule) == []


def test_nothing_below_the_app_imports_the_app_or_click():
    def rule(name, target):
        if not under(name, "app", ENTRY_POINT) and (under(target, "app") or target == "ext:click"):
            return "only relaydiff.app (the command line) may import it"
    assert violations(rule) == []


def test_training_imports_no_command_line():
    def rule(name, target):
        if under(name, "training") and (under(target, "app") or target.startswith("ext:click")):
            return "the training loop is a library"
    assert violations(rule) == []


def test_no_module_imports_the_package_init():
    def rule(name, target):
        if target == "" and name != "":
            return "import the module that defines the name (relaydiff.version for __version__)"
    assert violations(rule) == []


def test_io_imports_nothing_else_of_relaydiff():
    def rule(name, target):
        if under(name, "io") and not target.startswith("ext:") and not under(target, "io"):
            return "io is the floor everything stands on"
    assert violations(rule) == []


@pytest.mark.parametrize("stub", sorted(DEPRECATED_STUBS))
def test_old_module_paths_still_import_with_a_deprecation_warning(stub):
    import importlib
    import sys

    sys.modules.pop(f"relaydiff.{stub}", None)
    with pytest.warns(DeprecationWarning, match="moved to relaydiff"):
        importlib.import_module(f"relaydiff.{stub}")


def test_old_names_in_cascade_still_resolve_with_a_deprecation_warning():
    import relaydiff.cascade as cascade
    import relaydiff.pretrained as pretrained
    import relaydiff.stage as stage

    with pytest.warns(DeprecationWarning, match="relaydiff.stage.StageConfig"):
        assert cascade.StageConfig is stage.StageConfig
    with pytest.warns(DeprecationWarning, match="relaydiff.pretrained.pretrained_path"):
        assert cascade.pretrained_path is pretrained.pretrained_path
    with pytest.raises(AttributeError):
        cascade.no_such_name  # noqa: B018


def test_the_rules_see_a_violation(tmp_path):
    """The reader itself: imports of the package init, of a sibling and of torch are found."""
    fake = ROOT / "fake_module.py"
    source = "from . import __version__\nfrom .ops import heat_blur\nimport torch\n"
    try:
        fake.write_text(source)
        MODULES["fake_module"] = fake
        assert {t for _, t in imports(fake)} == {"", "ops", "ext:torch"}
    finally:
        fake.unlink()
        MODULES.pop("fake_module")
    assert under("data.datasets", "data") and not under("database", "data")


def test_every_docs_citation_in_the_code_names_a_page_and_section_that_exist():
    """Docstrings cite ``docs/<page>.md §n``; each page must ship and each section be a heading."""
    import re

    docs = ROOT.parents[1] / "docs"
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
