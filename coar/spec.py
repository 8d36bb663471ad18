"""Objects named by spec strings, ``"package.module:name"`` (or ``"package.module"`` plus a default name).

Tasks, output functions and the start-up config checks all name code this way; this module is
the one place that reads such a string. It imports nothing heavy, so the config checks can use
it before any torch import.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable


def parse_spec(spec: str, default_attr: str | None = None, kind: str = "object") -> tuple[str, str]:
    """``(module name, attribute name)`` of ``spec``; a ValueError naming ``kind`` if it is malformed."""
    module_name, sep, attr = spec.partition(":")
    if not sep:
        attr = default_attr or ""
    if not module_name or not attr.isidentifier():
        form = "'package.module:function'" + (" or 'package.module'" if default_attr else "")
        raise ValueError(f"bad {kind} spec {spec!r}: expected {form}")
    return module_name, attr


def module_exists(module_name: str) -> bool:
    """Whether ``module_name`` can be found on the path, without running the module itself.

    Parent packages are imported (that is how Python finds a submodule); a missing parent or a
    malformed name counts as not found.
    """
    try:
        return importlib.util.find_spec(module_name) is not None
    except (ImportError, ValueError):
        return False


def import_object(spec: str, default_attr: str | None = None, kind: str = "object") -> Callable:
    """The callable named by ``"package.module:name"`` (or ``"package.module"`` with ``default_attr``).

    Errors name the spec and tell a missing module apart from a module that raised on import.
    """
    module_name, attr = parse_spec(spec, default_attr, kind)
    try:
        module = importlib.import_module(module_name)
    except Exception as error:
        missing = error.name if isinstance(error, ModuleNotFoundError) else None
        if missing and (module_name + ".").startswith(missing + "."):  # the module or a parent package
            reason = f"no such module {module_name!r}"
        else:
            reason = f"importing module {module_name!r} raised {error!r}"
        raise ImportError(f"{kind} spec {spec!r}: {reason}") from error
    try:
        obj = getattr(module, attr)
    except AttributeError:
        raise ImportError(f"{kind} spec {spec!r}: module {module_name!r} has no attribute {attr!r}") from None
    if not callable(obj):
        raise TypeError(f"{kind} spec {spec!r}: {attr!r} is a {type(obj).__name__}, not callable")
    return obj
