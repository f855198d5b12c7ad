"""Types of the C++ core, buildbot_steps._core (bindings/*.cpp), for editors
and type checkers. Keep it in step with the bindings: one section per file;
`make lint-stubs` (mypy's stubtest) checks it against the compiled module.
Read-only attributes (def_readonly, def_property_readonly) are properties.
A class with no constructor (no py::init) is made by the core only.
"""

import enum
from collections.abc import Callable, Mapping, Sequence
from typing import ClassVar, Final, final, overload

class _Pybind11Type(type):
    """pybind11_builtins.pybind11_type: the metaclass of every bound class (stub-only name)."""

class _Pybind11Object(metaclass=_Pybind11Type):
    """pybind11_builtins.pybind11_object: the base of every bound class (stub-only name)."""

# ---------------------------------------------------------- bindings/module.cpp

class CdError(RuntimeError):
    """Anything the core (or the project) raises on purpose."""

class InvalidInputError(CdError, ValueError):
    """Bad input: fix the named value."""

class InvalidStateError(CdError):
    """An operation out of order, or a resource held elsewhere."""

# ----------------------------------------------------------- bindings/shard.cpp

class _Enum(_Pybind11Object):
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
    skipped: ClassVar[Verdict]
    __members__: ClassVar[dict[str, Verdict]]

@final
class AssignmentKind(_Enum):
    """What a puller is told: run the batch, wait for a re-run, or stop."""

    run: ClassVar[AssignmentKind]
    wait: ClassVar[AssignmentKind]
    done: ClassVar[AssignmentKind]
    __members__: ClassVar[dict[str, AssignmentKind]]

class TestEstimate(_Pybind11Object):
    def __init__(self, id: str, seconds: float, spread_s: float | None = None) -> None: ...
    @property
    def id(self) -> str: ...
    @property
    def seconds(self) -> float: ...
    @property
    def spread_s(self) -> float | None:
        """Standard deviation of its recent runs (two or more); None when unknown."""
    @property
    def source(self) -> str:
        """Where it came from: "history", "file_median", "global_median" or "default"."""

class DurationHistory(_Pybind11Object):
    """pytest-split duration files read by the core; the runs stay in C++."""

    def __len__(self) -> int:
        """The number of files (runs) read."""
    @property
    def newest_ids(self) -> list[str]: ...
    @property
    def runs(self) -> list[dict[str, float]]: ...

def read_duration_files(paths: Sequence[str]) -> DurationHistory:
    """pytest-split duration files, oldest first, read and checked by the core."""

@overload
def estimate_durations(tests: Sequence[str], history: Sequence[Mapping[str, float]]) -> list[TestEstimate]:
    """One estimate per test from past runs (oldest first): {test id: seconds} each."""

@overload
def estimate_durations(tests: Sequence[str], history: DurationHistory) -> list[TestEstimate]: ...
@overload
def estimate_durations(history: DurationHistory) -> list[TestEstimate]:
    """Estimates for the tests of the newest file."""

def file_of(test_id: str) -> str: ...

# Longest duration a history may give one test (a week); longer is refused as input.
kMaxTestDurationSeconds: Final[float]

class Shard(_Pybind11Object):
    @property
    def tests(self) -> list[str]: ...
    @property
    def estimate_s(self) -> float: ...

class Plan(_Pybind11Object):
    @property
    def shards(self) -> list[Shard]: ...
    @property
    def lower_bound_s(self) -> float: ...
    @property
    def makespan_s(self) -> float: ...

def plan_static(
    tests: Sequence[TestEstimate],
    shards: int,
    split_file_fraction: float = ...,
    max_improvement_passes: int = ...,
) -> Plan: ...
def plan_to_json(plan: Plan) -> str: ...
def plan_from_history(history: DurationHistory, shards: int, tests: Sequence[str] | None = None) -> Plan:
    """estimate_durations and plan_static in one call: for `tests`, else the newest file's tests."""

class Batch(_Pybind11Object):
    @property
    def id(self) -> int: ...
    @property
    def tests(self) -> list[str]: ...
    @property
    def estimate_s(self) -> float: ...
    @property
    def speculative(self) -> bool: ...
    @property
    def retry(self) -> bool: ...

class Assignment(_Pybind11Object):
    @property
    def kind(self) -> AssignmentKind: ...
    @property
    def batch(self) -> Batch:
        """Meaningful when kind is AssignmentKind.run."""

class TestResult(_Pybind11Object):
    def __init__(
        self, id: str, passed: bool, seconds: float, message: str = "", skipped: bool = False
    ) -> None: ...
    @property
    def id(self) -> str: ...
    @property
    def passed(self) -> bool: ...
    @property
    def seconds(self) -> float: ...
    @property
    def message(self) -> str: ...
    @property
    def skipped(self) -> bool: ...

class Attempt(_Pybind11Object):
    @property
    def worker(self) -> str: ...
    @property
    def passed(self) -> bool: ...
    @property
    def seconds(self) -> float: ...
    @property
    def message(self) -> str: ...
    @property
    def skipped(self) -> bool: ...
    @property
    def timed(self) -> bool: ...

class TestOutcome(_Pybind11Object):
    @property
    def id(self) -> str: ...
    @property
    def verdict(self) -> Verdict: ...
    @property
    def estimate_s(self) -> float: ...
    @property
    def attempts(self) -> list[Attempt]: ...

class DispatchStats(_Pybind11Object):
    def __init__(self) -> None:
        """All zero: the start of a sum."""
    def __add__(self, other: DispatchStats, /) -> DispatchStats:
        """Field by field: the figures of several dispatchers together; batch_overhead_s and
        estimate_scale become their means weighted by tests."""
    @property
    def tests(self) -> int: ...
    @property
    def resolved(self) -> int: ...
    @property
    def passed(self) -> int: ...
    @property
    def flaky(self) -> int: ...
    @property
    def failed(self) -> int: ...
    @property
    def skipped(self) -> int: ...
    @property
    def batches_handed_out(self) -> int: ...
    @property
    def batches_in_flight(self) -> int: ...
    @property
    def speculative_batches(self) -> int: ...
    @property
    def requeued_batches(self) -> int: ...
    @property
    def whole_part_batches(self) -> int: ...
    @property
    def workers_released(self) -> int: ...
    @property
    def files_split(self) -> int: ...
    @property
    def isolated_runs(self) -> int: ...
    @property
    def batch_tests_cap(self) -> int:
        """Tests per batch at most: max_batch_tests, or a worker's share of the suite by
        count when its history shows it surprise-prone."""
    @property
    def queued_estimate_s(self) -> float: ...
    @property
    def batch_overhead_s(self) -> float: ...
    @property
    def estimate_scale(self) -> float: ...

# A batch is worth sending when its tests take this many times its overhead.
kBatchWorthFactor: Final[float]

class Dispatcher(_Pybind11Object):
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

class Command(_Pybind11Object):
    argv: list[str]
    parse_rsync_stats: bool
    def __init__(
        self, argv: Sequence[str] = ..., stdin_data: str | bytes = ..., parse_rsync_stats: bool = False
    ) -> None: ...
    @property
    def stdin_data(self) -> bytes:
        """bytes out, str or bytes in: stdin may be any data."""
    @stdin_data.setter
    def stdin_data(self, data: str | bytes) -> None: ...

class HostJob(_Pybind11Object):
    host: str
    steps: list[Command]
    def __init__(self, host: str = "", steps: Sequence[Command] = ...) -> None: ...

class FanoutOptions(_Pybind11Object):
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

class HostResult(_Pybind11Object):
    @property
    def host(self) -> str: ...
    @property
    def status(self) -> str:
        """How the host's run ended: a release.runner.HostState value ("ok", "failed"...)."""
    @property
    def exit_code(self) -> int: ...
    @property
    def attempts(self) -> int: ...
    @property
    def failed_step(self) -> int: ...
    @property
    def stdout_tail(self) -> str: ...
    @property
    def stderr_tail(self) -> str: ...
    @property
    def duration_s(self) -> float: ...
    @property
    def bytes_sent(self) -> int: ...

class Progress(_Pybind11Object):
    @property
    def total(self) -> int: ...
    @property
    def done(self) -> int: ...
    @property
    def failed(self) -> int: ...
    @property
    def running(self) -> int: ...

def parse_rsync_bytes_sent(rsync_output: str | bytes) -> int:
    """The number after the last 'Total bytes sent:' in rsync --stats output, or 0 when there is none."""

class Fanout(_Pybind11Object):
    def __init__(self, options: FanoutOptions = ...) -> None: ...
    def run(
        self, jobs: Sequence[HostJob], progress: Callable[[HostResult, Progress], None] | None = None
    ) -> list[HostResult]:
        """Every job run; a HostResult per job, in order. progress(result, counts) is called from the
        engine's thread after each host; an exception in it cancels the run and is re-raised."""
    def cancel(self) -> None:
        """Thread-safe: kill running commands, cancel hosts not started; run() returns promptly."""

# ---------------------------------------------------------- bindings/canary.cpp
# Enums are real enum.Enum classes (py::native_enum); structs are read-only.

class Direction(enum.Enum):
    """Which way a metric gets worse."""

    INCREASE = 0
    DECREASE = 1

class MetricKind(enum.Enum):
    """CONTINUOUS: Welch's t on host values; COUNT: an exact test of the event rate."""

    CONTINUOUS = 0
    COUNT = 1

class Design(enum.Enum):
    """What the canary hosts are compared with."""

    SAME_WINDOW = 0
    BEFORE_AFTER = 1
    DIFF_IN_DIFF = 2

class Sequential(enum.Enum):
    """How one metric's error budget is shared over the looks of the window."""

    SPENDING = 0
    MIXTURE = 1
    GROUP_SEQUENTIAL = 2

class CanaryVerdict(enum.Enum):
    CONTINUE = 0
    PASS = 1
    FAIL = 2
    INCONCLUSIVE = 3

class MetricStatus(enum.Enum):
    TESTED = 0
    INSUFFICIENT_DATA = 1

class Summary(_Pybind11Object):
    """Sufficient statistics of one arm: count, mean, sample standard deviation."""

    def __init__(self, n: float, mean: float, sd: float) -> None: ...
    @property
    def n(self) -> float: ...
    @property
    def mean(self) -> float: ...
    @property
    def sd(self) -> float: ...

class TTest(_Pybind11Object):
    @property
    def statistic(self) -> float: ...
    @property
    def df(self) -> float: ...
    @property
    def p_value(self) -> float: ...
    @property
    def difference(self) -> float: ...
    @property
    def std_error(self) -> float: ...
    @property
    def ci_low(self) -> float: ...
    @property
    def ci_high(self) -> float: ...

class RateTest(_Pybind11Object):
    @property
    def ratio(self) -> float: ...
    @property
    def null_share(self) -> float: ...
    @property
    def p_value(self) -> float: ...
    @property
    def ci_low(self) -> float: ...
    @property
    def ci_high(self) -> float: ...

def summarize(values: Sequence[float]) -> Summary: ...
def welch_test(
    canary: Sequence[float],
    control: Sequence[float],
    worse: Direction,
    margin: float = 0.0,
    confidence: float = 0.95,
) -> TTest: ...
def welch_from_summary(
    canary: Summary, control: Summary, worse: Direction, margin: float = 0.0, confidence: float = 0.95
) -> TTest: ...
def rate_ratio_test(
    canary_events: float,
    canary_exposure: float,
    control_events: float,
    control_exposure: float,
    worse: Direction,
    allowed_ratio: float = 1.0,
    dispersion: float = 1.0,
    confidence: float = 0.95,
) -> RateTest: ...

class MetricSpec(_Pybind11Object):
    def __init__(self, name: str, kind: MetricKind, worse: Direction, min_effect: float = 0.0) -> None: ...
    @property
    def name(self) -> str: ...
    @property
    def kind(self) -> MetricKind: ...
    @property
    def worse(self) -> Direction: ...
    @property
    def min_effect(self) -> float: ...

class HostData(_Pybind11Object):
    """One host's aggregate for one metric over the window so far."""

    def __init__(
        self,
        *,
        value: float = 0.0,
        events: float = 0.0,
        exposure: float = 0.0,
        baseline_value: float = 0.0,
        baseline_events: float = 0.0,
        baseline_exposure: float = 0.0,
        missing: bool = False,
    ) -> None: ...
    @property
    def missing(self) -> bool: ...
    @property
    def value(self) -> float: ...
    @property
    def events(self) -> float: ...
    @property
    def exposure(self) -> float: ...
    @property
    def baseline_value(self) -> float: ...
    @property
    def baseline_events(self) -> float: ...
    @property
    def baseline_exposure(self) -> float: ...

class MetricLook(_Pybind11Object):
    def __init__(
        self, metric: str, canary: Sequence[HostData], control: Sequence[HostData] = ...
    ) -> None: ...
    @staticmethod
    def continuous(
        metric: str,
        canary: Sequence[float],
        control: Sequence[float],
        *,
        canary_baseline: Sequence[float] | None = None,
        control_baseline: Sequence[float] | None = None,
        canary_missing: Sequence[bool] | None = None,
        control_missing: Sequence[bool] | None = None,
    ) -> MetricLook:
        """A look from columns, one entry per host in each."""
    @staticmethod
    def count(
        metric: str,
        canary_events: Sequence[float],
        canary_exposure: Sequence[float],
        control_events: Sequence[float],
        control_exposure: Sequence[float],
        *,
        canary_baseline_events: Sequence[float] | None = None,
        canary_baseline_exposure: Sequence[float] | None = None,
        control_baseline_events: Sequence[float] | None = None,
        control_baseline_exposure: Sequence[float] | None = None,
        canary_missing: Sequence[bool] | None = None,
        control_missing: Sequence[bool] | None = None,
    ) -> MetricLook:
        """A look from columns, one entry per host in each."""
    @property
    def metric(self) -> str: ...
    @property
    def canary(self) -> list[HostData]: ...
    @property
    def control(self) -> list[HostData]: ...

class MetricResult(_Pybind11Object):
    @property
    def name(self) -> str: ...
    @property
    def kind(self) -> MetricKind: ...
    @property
    def status(self) -> MetricStatus: ...
    @property
    def reason(self) -> str: ...
    @property
    def estimate(self) -> float: ...
    @property
    def ci_low(self) -> float: ...
    @property
    def ci_high(self) -> float: ...
    @property
    def threshold(self) -> float: ...
    @property
    def p_fixed(self) -> float: ...
    @property
    def p_value(self) -> float: ...
    @property
    def level(self) -> float: ...
    @property
    def failed(self) -> bool: ...
    @property
    def canary_hosts(self) -> int: ...
    @property
    def control_hosts(self) -> int: ...
    @property
    def canary_missing(self) -> int: ...
    @property
    def control_missing(self) -> int: ...

class LookResult(_Pybind11Object):
    @property
    def look(self) -> int: ...
    @property
    def verdict(self) -> CanaryVerdict: ...
    @property
    def failed_metric(self) -> str: ...
    @property
    def reason(self) -> str: ...
    @property
    def metrics(self) -> list[MetricResult]: ...

class Judge(_Pybind11Object):
    def __init__(
        self,
        metrics: Sequence[MetricSpec],
        *,
        design: Design = ...,
        alpha: float = ...,
        looks_in_window: int = ...,
        min_hosts_per_arm: int = ...,
        max_missing_fraction: float = ...,
        sequential: Sequential = ...,
        mixture_ratio: float = ...,
    ) -> None: ...
    def look(self, data: Sequence[MetricLook]) -> LookResult:
        """One look: every metric's aggregates over the window so far."""
    @property
    def looks(self) -> int: ...
    @property
    def verdict(self) -> CanaryVerdict: ...
    @property
    def metrics(self) -> list[MetricSpec]: ...
    @property
    def design(self) -> Design: ...
    @property
    def sequential(self) -> Sequential: ...
    @property
    def alpha(self) -> float: ...
    @property
    def looks_in_window(self) -> int: ...
    @property
    def min_hosts_per_arm(self) -> int: ...
