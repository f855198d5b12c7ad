"""What a shard build runs, and what the parent hands it.

Test commands are argument-vector templates: `{tests}` becomes the batch's
test ids (one argument each) and `{junit}` the path of the JUnit XML report
the runner writes. Discovery reads a collect-only listing.
"""

from __future__ import annotations

import fnmatch
import re

from buildbot_steps._core import Verdict
from buildbot_steps.errors import CdError

TESTS_PLACEHOLDER = "{tests}"
JUNIT_PLACEHOLDER = "{junit}"

DEFAULT_DISCOVER_COMMAND = ["python", "-m", "pytest", "--collect-only", "-q"]
DEFAULT_TEST_COMMAND = [
    "python", "-m", "pytest", "-q", "-p", "no:cacheprovider",
    "--junitxml={junit}", "{tests}",
]  # fmt: skip


# Where a shard's batches come from: pulled from one dispatcher, or a fixed list per shard.
DYNAMIC = "dynamic"
STATIC = "static"
MODES = (DYNAMIC, STATIC)

# The verdicts that fail a build (a test never run cannot be called green).
NOT_PASSED = (Verdict.failed, Verdict.pending)

# Runs of a failing test, each on another worker where there is one: a second
# run tells a flaky test (passes) from a broken one (fails again).
DEFAULT_MAX_ATTEMPTS = 2

# A batch's command is stopped after this long: a hung runner must not hold
# the build for ever, and no sane batch runs for twenty minutes.
DEFAULT_BATCH_TIMEOUT_S = 20 * 60

# Cap on tests per batch of the dynamic mode, so that a lost worker costs
# little and the command line stays far below the OS argument limit.
DEFAULT_MAX_BATCH_TESTS = 200

# The static mode runs a shard's list in as few runner starts as this allows
# (like one pytest-split group), still far below the OS argument limit.
STATIC_MAX_BATCH_TESTS = 1000


# Properties of a shard build, set by the parent.
PARENT_PROPERTY = "shard_parent_buildid"
INDEX_PROPERTY = "shard_index"
COUNT_PROPERTY = "shard_count"
MODE_PROPERTY = "shard_mode"
TESTS_PROPERTY = "shard_tests"  # static mode: the shard's fixed list
COMMAND_PROPERTY = "shard_test_command"
WORKDIR_PROPERTY = "shard_workdir"


# A test id that is a line of a collect-only listing: "path::name[params]".
# Summary lines ("34 tests collected in 0.02s") and warnings are skipped.
_SUMMARY_LINE = re.compile(r"^(\d+ tests? collected|no tests ran|=+|-+|\d+ (error|warning))")


class ShardedTestError(CdError):
    """A user or environment problem: the step ends FAILURE with this message."""


def check_test_command(command: object) -> str | None:
    """Why `command` is not a usable test command template, or None."""
    if not isinstance(command, (list, tuple)) or not command:
        return "test_command must be a non-empty list of strings (an argument vector)"
    if not all(isinstance(arg, str) for arg in command):
        return "test_command must contain only strings"
    if sum(arg == TESTS_PLACEHOLDER for arg in command) != 1:
        return f"test_command must have exactly one element that is {TESTS_PLACEHOLDER!r}"
    if not any(JUNIT_PLACEHOLDER in arg for arg in command):
        return f"test_command must contain {JUNIT_PLACEHOLDER!r} (where the runner writes JUnit XML)"
    return None


def expand_test_command(command: list[str], tests: list[str], junit_path: str) -> list[str]:
    """The argument vector for one batch: one element per test id."""
    argv: list[str] = []
    for arg in command:
        if arg == TESTS_PLACEHOLDER:
            argv.extend(tests)
        else:
            argv.append(arg.replace(JUNIT_PLACEHOLDER, junit_path))
    return argv


def parse_test_listing(output: str) -> list[str]:
    """Test ids from a collect-only listing: one per line, up to the first blank line."""
    tests = []
    for line in output.splitlines():
        line = line.strip()
        if not line:
            if tests:
                break
            continue
        if _SUMMARY_LINE.match(line):
            continue
        tests.append(line)
    return list(dict.fromkeys(tests))  # a runner may list an id twice


def is_quarantined(test_id: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatchcase(test_id, pattern) for pattern in patterns)


def names(test_ids: list[str], shown: int = 5) -> str:
    """The first few ids of a list, for a one-line summary."""
    more = f" and {len(test_ids) - shown} more" if len(test_ids) > shown else ""
    return ", ".join(test_ids[:shown]) + more
