"""A temp directory of the test's own, for a process the test kills with SIGKILL.

Killed that way, a process cannot clean up: what it had in its temp directory
(a push's entry list, the directory of its ssh sockets) stays behind. Given
this as its TMPDIR, that goes with the test instead of piling up in /tmp.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator

# Short, as TMPDIR must be for ssh's control sockets to live under it
# (buildbot_steps.release.transports.MAX_CONTROL_BASE_LENGTH); pytest's
# tmp_path is too long.
SHORT_BASE = "/tmp"


@contextlib.contextmanager
def killed_process_tmpdir() -> Iterator[str]:
    path = tempfile.mkdtemp(prefix="bbcd-test-", dir=SHORT_BASE)
    try:
        yield path
    finally:
        # An ssh master that outlived its killed client may remove its socket meanwhile.
        shutil.rmtree(path, ignore_errors=True)
