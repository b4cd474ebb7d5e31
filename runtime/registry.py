"""The one registration idiom: a plug-in is a module in a package that declares what it adds as a module constant.

Backends declare ``BACKEND``, export targets ``TARGET`` and rewrite modules ``RULES`` (a tuple of rules); the
registry of each is derived by scanning its package, so adding one is adding one module. Modules whose names start
with an underscore are the package's shared machinery (timm's ``_registry.py`` convention) and declare nothing.
"""
from __future__ import annotations

import importlib
import pkgutil
from typing import Callable, Iterable


def declared(package: str, path: Iterable[str], name: str, key: Callable[[object], object],
             skip: tuple[str, ...] = ()) -> list:
    """Every object the modules of ``package`` (its ``__path__`` is ``path``) declare as ``name``, sorted by ``key``.

    A module declares one object or a tuple of them; a module without ``name`` is an error, so a plug-in that
    forgot its declaration is not silently left out. ``skip``: public modules that are machinery, not plug-ins."""
    found = []
    for info in pkgutil.iter_modules(path):
        if info.name.startswith("_") or info.name in skip:
            continue
        module = importlib.import_module(f"{package}.{info.name}")
        if not hasattr(module, name):
            raise TypeError(f"{module.__name__} declares no {name} (a module that adds nothing is named _{info.name})")
        value = getattr(module, name)
        found.extend(value if isinstance(value, tuple) else (value,))
    return sorted(found, key=key)
