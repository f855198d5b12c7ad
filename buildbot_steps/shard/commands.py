"""What a shard build runs, and what the parent hands it.

Test commands are argument-vector templates: `{tests_file}` becomes the path
of a file with the batch's test ids, one per line (pytest >= 8.2 reads it as
`@{tests_file}`), or `{tests}` becomes the ids themselves, one argument each;
`{junit}` is the path of the JUnit XML report the runner writes. With a tests
file, a batch of a thousand ids neither bloats the step log (the worker echoes
the command line there) nor twistd.log, nor meets the OS argument limit.
Discovery reads a collect-only listing.
"""

from __future__ import annotations

import re

from buildbot_steps._core import TestOutcome, Verdict
from buildbot_steps.errors import CdError

TESTS_PLACEHOLDER = "{tests}"
TESTS_FILE_PLACEHOLDER = "{tests_file}"
JUNIT_PLACEHOLDER = "{junit}"

DEFAULT_DISCOVER_COMMAND = ["python", "-m", "pytest", "--collect-only", "-q"]
DEFAULT_TEST_COMMAND = [
    "python", "-m", "pytest", "-q", "-p", "no:cacheprovider",
    "--junitxml={junit}", "@{tests_file}",
]  # fmt: skip

# Test ids shown where a batch is logged: enough to recognise it; the full
# list is in the report (and in the tests file on the worker).
IDS_SHOWN_IN_LOGS = 3


# Where a shard's batches come from: pulled from one dispatcher, or a fixed list per shard.
DYNAMIC = "dynamic"
STATIC = "static"
MODES = (DYNAMIC, STATIC)

# The verdicts that fail a build (a test never run cannot be called green).
NOT_PASSED = (Verdict.failed, Verdict.pending)


# How a summary names the tests passed_after_a_batch_failure finds.
BATCH_FAILURE_NOTE = "passed on re-run after their batch failed as a whole (a hang or a crash)"
# How a summary names the errors of a run outside any test (ShardSession.runner_errors).
RUNNER_ERROR_NOTE = "runner errors outside any test"


def indented_after_first_line(text: str) -> str:
    """`text` with every line after the first indented: a runner's lines in a
    log of ours must not pass for the log's own."""
    first, *rest = text.splitlines() or [""]
    return "\n".join([first, *(f"    {line}".rstrip() for line in rest)])


def passed_after_a_batch_failure(outcome: TestOutcome) -> bool:
    """Passed, after a batch it was in failed as a whole (a hang, a crash, a
    report that could not be read): no failure of its own, so not flaky, but
    one of its batch-mates may be, and the build warns."""
    return outcome.verdict == Verdict.passed and any(not a.timed for a in outcome.attempts)


# Runs of a failing test, each on another worker where there is one: a second
# run tells a flaky test (passes) from a broken one (fails again).
DEFAULT_MAX_ATTEMPTS = 2

# A batch's command is stopped after this long: a hung runner must not hold
# the build for ever, and no sane batch runs for twenty minutes.
DEFAULT_BATCH_TIMEOUT_S = 20 * 60

# Cap on tests per batch. A cap that binds costs one more runner start-up per
# worker on every build: at 1,000, networkx's 6,848 tests on 6 workers took two
# batches per worker, static's shards too, and ~5 s more of a 50 s build
# (bench/shard_buildbot_bench.py --suites networkx). The dispatcher sizes
# batches in seconds (start-ups, equal ends); this only bounds one batch's ids
# file and JUnit report (10,000 test cases are a few MB, under MAX_REPORT_BYTES).
DEFAULT_MAX_BATCH_TESTS = 10_000

# The static mode runs a shard's list in as few runner starts as this allows
# (like one pytest-split group).
STATIC_MAX_BATCH_TESTS = DEFAULT_MAX_BATCH_TESTS


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
    as_arguments = sum(arg == TESTS_PLACEHOLDER for arg in command)
    in_a_file = any(TESTS_FILE_PLACEHOLDER in arg for arg in command)
    if as_arguments + in_a_file != 1:
        return (
            f"test_command must have exactly one element that is {TESTS_PLACEHOLDER!r} (the ids as "
            f"arguments) or contain {TESTS_FILE_PLACEHOLDER!r} (a file of the ids: "
            f"'@{TESTS_FILE_PLACEHOLDER}' for pytest), not both"
        )
    if not any(JUNIT_PLACEHOLDER in arg for arg in command):
        return f"test_command must contain {JUNIT_PLACEHOLDER!r} (where the runner writes JUnit XML)"
    return None


def warm_command_of(test_command: list[str], plugin_module: str) -> list[str] | None:
    """The test command without its batch (ids and report), loading `plugin_module`:
    what a warm runner starts once per shard. None if it is not a pytest command."""
    if not any(arg == "pytest" or arg.endswith(("/pytest", "/py.test")) for arg in test_command):
        return None
    placeholders = (TESTS_PLACEHOLDER, TESTS_FILE_PLACEHOLDER, JUNIT_PLACEHOLDER)
    kept = [arg for arg in test_command if not any(p in arg for p in placeholders)]
    return [*kept, "-p", plugin_module]


def uses_tests_file(command: list[str]) -> bool:
    return any(TESTS_FILE_PLACEHOLDER in arg for arg in command)


def expand_test_command(
    command: list[str], tests: list[str], junit_path: str, tests_file: str = ""
) -> list[str]:
    """The argument vector for one batch: one element per test id, or the tests file's path."""
    argv: list[str] = []
    for arg in command:
        if arg == TESTS_PLACEHOLDER:
            argv.extend(tests)
        else:
            argv.append(
                arg.replace(JUNIT_PLACEHOLDER, junit_path).replace(TESTS_FILE_PLACEHOLDER, tests_file)
            )
    return argv


def batch_ids_text(tests: list[str]) -> str:
    """The tests file: one id per line (ids never contain a newline: they come from lines)."""
    return "".join(f"{test}\n" for test in tests)


def short_list(test_ids: list[str], shown: int = IDS_SHOWN_IN_LOGS) -> str:
    """A count and the first few ids, for a log line."""
    head = ", ".join(test_ids[:shown])
    more = ", ..." if len(test_ids) > shown else ""
    return f"{len(test_ids)} tests ({head}{more})"


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


# Wildcards of a quarantine pattern. Brackets are not among them: a
# parametrized id ("test_x[1-2]") must match itself, which fnmatch's
# character classes silently prevented.
QUARANTINE_WILDCARDS = ("*", "?")


class Quarantine:
    """Test ids that run but do not gate: exact ids first, then patterns.

    An entry without `*` or `?` is an exact test id. An entry with them is a
    pattern where `*` is any run of characters and `?` one character; every
    other character, `[` and `]` included, stands for itself.
    """

    def __init__(self, entries: list[str]):
        self.exact = {entry for entry in entries if not any(w in entry for w in QUARANTINE_WILDCARDS)}
        self.patterns = [_wildcard_regex(e) for e in entries if any(w in e for w in QUARANTINE_WILDCARDS)]

    def __contains__(self, test_id: str) -> bool:
        return test_id in self.exact or any(p.fullmatch(test_id) for p in self.patterns)


def _wildcard_regex(pattern: str) -> re.Pattern[str]:
    wildcard = {"*": ".*", "?": "."}
    parts = re.split(r"([*?])", pattern)
    return re.compile("".join(wildcard.get(part) or re.escape(part) for part in parts), re.DOTALL)


def is_quarantined(test_id: str, patterns: list[str]) -> bool:
    return test_id in Quarantine(patterns)


def names(test_ids: list[str], shown: int = 5) -> str:
    """The first few ids of a list, for a one-line summary."""
    more = f" and {len(test_ids) - shown} more" if len(test_ids) > shown else ""
    return ", ".join(test_ids[:shown]) + more
