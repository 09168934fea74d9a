"""Old import paths that keep working for one release, with a ``DeprecationWarning``.

Modules that moved keep a stub at their old path; names that moved out of a module are looked up
through its ``__getattr__``. Both are removed in relaydiff 0.3 (README, "Where things live").
"""

from __future__ import annotations

import importlib
import warnings
from typing import Any

REMOVED_IN = "0.3"


def warn_moved(old: str, new: str) -> None:
    """Warn that module ``old`` is now ``new`` (call from the stub's body)."""
    warnings.warn(f"{old} moved to {new}; import it from there ({old} is removed in relaydiff "
                  f"{REMOVED_IN})", DeprecationWarning, stacklevel=3)


def moved_attribute(module: str, name: str, table: dict[str, str]) -> Any:
    """``module.name`` for a name listed in ``table`` (name → its new module), with a warning;
    ``AttributeError`` for any other name (for a module-level ``__getattr__``)."""
    if name not in table:
        raise AttributeError(f"module {module!r} has no attribute {name!r}")
    target = table[name]
    warnings.warn(f"{module}.{name} moved to {target}.{name}; import it from there (the old "
                  f"name is removed in relaydiff {REMOVED_IN})", DeprecationWarning, stacklevel=3)
    return getattr(importlib.import_module(target), name)
