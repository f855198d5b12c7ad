"""One error family for the whole package, shared with the C++ core.

    CdError                  anything the project raises on purpose
    ├── InvalidInputError    bad input: fix the named value (also a ValueError)
    └── InvalidStateError    an operation out of order, or a resource held elsewhere

The classes are the core's own (buildbot_steps._core), so an error raised in
C++ and one raised in Python are caught by the same `except`.
"""

from buildbot_steps._core import CdError, InvalidInputError, InvalidStateError

__all__ = ["CdError", "InvalidInputError", "InvalidStateError"]
