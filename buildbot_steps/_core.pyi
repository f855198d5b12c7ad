"""Types of the C++ core, buildbot_steps._core (bindings/*.cpp), for editors
and type checkers. Keep it in step with the bindings: one section per file.
Read-only attributes (def_readonly, def_property_readonly) are `Final`.
"""

from collections.abc import Callable, Mapping, Sequence
from typing import ClassVar, Final, final, overload

# ---------------------------------------------------------- bindings/module.cpp

class CdError(RuntimeError):
    """Anything the core (or the project) raises on purpose."""

class InvalidInputError(CdError, ValueError):
    """Bad input: fix the named value."""

class InvalidStateError(CdError):
    """An operation out of order, or a resource held elsewhere."""

# ----------------------------------------------------------- bindings/shard.cpp

class _Enum:
    """What every py::enum_ has (not a class at run time: a stub-only base)."""

    def __init__(self, value: int) -> None: ...
    @property
    def name(self) -> str: ...
    @property
    def value(self) -> int: ...
    def __int__(self) -> int: ...
    def __index__(self) -> int: ...
    def __hash__(self) -> int: ...
    def __eq__(self, other: object) -> bool: ...

@final
class Verdict(_Enum):
    """A test's verdict; `name` is the word stored in Buildbot and shown in the report."""

    pending: ClassVar[Verdict]
    passed: ClassVar[Verdict]
    flaky: ClassVar[Verdict]
    failed: ClassVar[Verdict]
    __members__: ClassVar[dict[str, Verdict]]

@final
class AssignmentKind(_Enum):
    """What a puller is told: run the batch, wait for a re-run, or stop."""

    run: ClassVar[AssignmentKind]
    wait: ClassVar[AssignmentKind]
    done: ClassVar[AssignmentKind]
    __members__: ClassVar[dict[str, AssignmentKind]]

class TestEstimate:
    def __init__(self, id: str, seconds: float) -> None: ...
    id: Final[str]
    seconds: Final[float]
    @property
    def source(self) -> str:
        """Where it came from: "history", "file_median", "global_median" or "default"."""

@final
class DurationHistory:
    """Duration files read by the core into one table; the runs stay in C++."""

    def __len__(self) -> int:
        """The number of files (runs) read."""
    @property
    def newest_ids(self) -> list[str]:
        """The test ids of the newest file, in its order."""
    @property
    def runs(self) -> list[dict[str, float]]:
        """Each run as {test id: seconds}, oldest first, in its file's order."""

def read_duration_files(paths: Sequence[str]) -> DurationHistory:
    """pytest-split duration files, oldest first, read and checked by the core."""

@overload
def estimate_durations(
    tests: Sequence[str], history: Sequence[Mapping[str, float]] | DurationHistory
) -> list[TestEstimate]:
    """One estimate per test from past runs (oldest first): {test id: seconds} each."""

@overload
def estimate_durations(history: DurationHistory) -> list[TestEstimate]:
    """Estimates for the tests of the newest file."""

def file_of(test_id: str) -> str: ...

class Shard:
    tests: Final[list[str]]
    estimate_s: Final[float]

class Plan:
    shards: Final[list[Shard]]
    lower_bound_s: Final[float]
    makespan_s: Final[float]

def plan_static(
    tests: Sequence[TestEstimate],
    shards: int,
    split_file_fraction: float = ...,
    max_improvement_passes: int = ...,
) -> Plan: ...
def plan_from_history(history: DurationHistory, shards: int, tests: Sequence[str] | None = None) -> Plan:
    """estimate_durations and plan_static in one call: for `tests`, else the newest file's tests."""

class Batch:
    id: Final[int]
    tests: Final[list[str]]
    estimate_s: Final[float]
    speculative: Final[bool]
    retry: Final[bool]

class Assignment:
    kind: Final[AssignmentKind]
    @property
    def batch(self) -> Batch:
        """Meaningful when kind is AssignmentKind.run."""

class TestResult:
    def __init__(self, id: str, passed: bool, seconds: float, message: str = "") -> None: ...
    id: Final[str]
    passed: Final[bool]
    seconds: Final[float]
    message: Final[str]

class Attempt:
    worker: Final[str]
    passed: Final[bool]
    seconds: Final[float]
    message: Final[str]

class TestOutcome:
    id: Final[str]
    verdict: Final[Verdict]
    estimate_s: Final[float]
    attempts: Final[list[Attempt]]

class DispatchStats:
    def __init__(self) -> None:
        """All zero: the start of a sum."""
    def __add__(self, other: DispatchStats) -> DispatchStats:
        """Field by field: the figures of several dispatchers together; batch_overhead_s and
        estimate_scale become their means weighted by tests."""
    tests: Final[int]
    resolved: Final[int]
    passed: Final[int]
    flaky: Final[int]
    failed: Final[int]
    batches_handed_out: Final[int]
    batches_in_flight: Final[int]
    speculative_batches: Final[int]
    requeued_batches: Final[int]
    queued_estimate_s: Final[float]
    batch_overhead_s: Final[float]
    estimate_scale: Final[float]

# A batch is worth sending when its tests take this many times its overhead.
kBatchWorthFactor: Final[float]

def plan_to_json(plan: Plan) -> str:
    """The plan as `buildbot-cd plan --json` prints it."""

class Dispatcher:
    """Thread-safe: any number of threads may call any method."""

    def __init__(
        self,
        tests: Sequence[TestEstimate],
        workers: int = ...,
        max_attempts: int = ...,
        min_batch_s: float = ...,
        max_batch_tests: int = ...,
        speculate: bool = ...,
        min_speculation_s: float = ...,
        split_file_fraction: float = ...,
        batch_overhead_s: float = ...,
        recalibrate: bool = ...,
    ) -> None: ...
    def next_batch(self, worker: str, now_s: float) -> Assignment: ...
    def report(
        self, worker: str, batch_id: int, results: Sequence[TestResult], wall_s: float | None = None
    ) -> None:
        """wall_s: the batch's start to end on its worker; teaches the dispatcher the overhead."""
    def report_error(self, worker: str, batch_id: int, message: str) -> None: ...
    def worker_lost(self, worker: str) -> None: ...
    def batch_obsolete(self, batch_id: int) -> bool: ...
    def done(self) -> bool: ...
    def stats(self) -> DispatchStats: ...
    def outcomes(self) -> list[TestOutcome]: ...
    def overhead_by_worker(self) -> dict[str, float]: ...

# ---------------------------------------------------------- bindings/fanout.cpp

DEFAULT_TRANSIENT_EXIT_CODES: tuple[int, ...]

class Command:
    argv: list[str]
    parse_rsync_stats: bool
    def __init__(
        self, argv: Sequence[str] = ..., stdin_data: str | bytes = ..., parse_rsync_stats: bool = False
    ) -> None: ...
    stdin_data: Final[bytes]
    @stdin_data.setter
    def stdin_data(self, data: str | bytes) -> None: ...

class HostJob:
    host: str
    steps: list[Command]
    def __init__(self, host: str = "", steps: Sequence[Command] = ...) -> None: ...

class FanoutOptions:
    """Defaults and checks live in C++ (cd/fanout.hpp); checked when a run starts."""

    concurrency: int
    host_timeout_s: float
    max_retries: int
    retry_backoff_s: float
    transient_exit_codes: list[int]
    max_fail_fraction: float
    output_tail_bytes: int
    def __init__(
        self,
        concurrency: int = ...,
        host_timeout_s: float = ...,
        max_retries: int = ...,
        retry_backoff_s: float = ...,
        transient_exit_codes: Sequence[int] = ...,
        max_fail_fraction: float = ...,
        output_tail_bytes: int = ...,
    ) -> None: ...

class HostResult:
    host: Final[str]
    @property
    def status(self) -> str:
        """How the host's run ended: a release.runner.HostState value ("ok", "failed"...)."""
    exit_code: Final[int]
    attempts: Final[int]
    failed_step: Final[int]
    stdout_tail: Final[str]
    stderr_tail: Final[str]
    duration_s: Final[float]
    bytes_sent: Final[int]

class Progress:
    total: Final[int]
    done: Final[int]
    failed: Final[int]
    running: Final[int]

class Fanout:
    def __init__(self, options: FanoutOptions = ...) -> None: ...
    def run(
        self, jobs: Sequence[HostJob], progress: Callable[[HostResult, Progress], None] | None = None
    ) -> list[HostResult]:
        """Every job run; a HostResult per job, in order. progress(result, counts) is called from the
        engine's thread after each host; an exception in it cancels the run and is re-raised."""
    def cancel(self) -> None:
        """Thread-safe: kill running commands, cancel hosts not started; run() returns promptly."""

# ---------------------------------------------------------- bindings/canary.cpp
# The canary judge: its classes and functions go here when the binding lands.
