"""Package attributes imported when first asked for (PEP 562).

`buildbot-cd` imports every engine's package to register its commands; the
steps and metric sources behind those packages load Buildbot, Twisted, HTTP
clients and prometheus_client, which would cost a command like `plan` most of
a second before it starts.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping


def lazy_attributes(package: str, module_of: Mapping[str, str]) -> Callable[[str], object]:
    """A module `__getattr__` that imports `module_of[name]` on first use of `name`."""

    def __getattr__(name: str) -> object:
        if name not in module_of:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(module_of[name]), name)

    return __getattr__
