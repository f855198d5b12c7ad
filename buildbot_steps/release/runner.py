"""Release push: parallel rsync fan-out into release slots, atomic flip, rollback.

The Python side of engine 2 (DESIGN.md section 4). The per-host layout and its
operations live in one fixed POSIX sh script, `host_release.sh`, shipped with
this package; every fan-out runs through `buildbot_steps._core.Fanout`.

    inventory = Inventory.from_file("hosts.json")      # or Inventory.from_entries([...])
    runner = ReleaseRunner(inventory, SshTransport(known_hosts=..., identity_file=...))
    pushed = runner.push("/path/to/tree", revision="abc123", build="42")
    runner.flip("abc123", Selection(tag="canary"), only_hosts=pushed.ok_hosts)
    runner.flip("abc123", only_hosts=pushed.ok_hosts)   # everyone else
    runner.rollback(revision="abc123")                  # hosts live on abc123 go back
    runner.status().hosts[0].details  # {"live": "2", "live_revision": ..., "slots": {...}}

Every report is a RunReport of HostReport, one per host, in inventory order.

Serving from `current`: PHP (opcache) and similar runtimes cache compiled
files by the symlinked path, so after a flip they may keep serving the old
release; point the web server at the resolved path (nginx: `$realpath_root`
for SCRIPT_FILENAME and DOCUMENT_ROOT).

rsync decides what changed by size and mtime (its quick check), as every
rsync-based deploy does: a build must not rewrite a file with the same size
and the same mtime second. Unchanged files should keep their mtime so that
`--link-dest` can hard-link them from the live slot.

Safety of command lines: commands are argument vectors. Over ssh, the remote
side joins the words after the destination into one line for the user's
shell, so those words are fixed ones plus values checked against SAFE_WORD.
The one string that is split again is rsync's `-e` value (rsync splits it on
whitespace): it is built from fixed options and checked values only.
"""

from __future__ import annotations

import contextlib
import enum
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from buildbot_steps import _core
from buildbot_steps.errors import InvalidInputError
from buildbot_steps.release import inventory as inventory_rules
from buildbot_steps.release.inventory import (
    ALL_HOSTS,
    DeployInProgress,
    Host,
    Inventory,
    Selection,
    check_word,
)
from buildbot_steps.release.transports import CommandSpec, SshTransport

# Output kept per host: a status listing of every slot fits easily.
STATUS_OUTPUT_BYTES = 64 * 1024

PUSH_STEPS = ("prepare", "transfer", "commit")


class HostState(enum.StrEnum):
    """How a host's run ended: the fan-out engine's words (HostResult.status)."""

    OK = "ok"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    SKIPPED = "skipped"
    CANCELLED = "cancelled"


# What a host that printed nothing on stderr is told, by how its run ended.
STATE_ERRORS = {
    HostState.TIMED_OUT: "host timeout",
    HostState.SKIPPED: "skipped: failure budget exhausted",
    HostState.CANCELLED: "cancelled",
}


# --- reports ---------------------------------------------------------------


@dataclass
class HostReport:
    host: str
    status: HostState
    exit_code: int = -1
    attempts: int = 0
    failed_step: str | None = None
    error: str = ""
    duration_s: float = 0.0
    bytes_sent: int = 0
    details: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == HostState.OK


@dataclass
class RunReport:
    action: str
    hosts: list
    duration_s: float = 0.0
    revision: str | None = None

    @property
    def ok_hosts(self) -> list[str]:
        return [h.host for h in self.hosts if h.ok]

    @property
    def failed_hosts(self) -> list[str]:
        return [h.host for h in self.hosts if not h.ok]

    @property
    def bytes_sent(self) -> int:
        return sum(h.bytes_sent for h in self.hosts)

    @property
    def all_ok(self) -> bool:
        return bool(self.hosts) and all(h.ok for h in self.hosts)

    def by_host(self) -> dict:
        return {h.host: h for h in self.hosts}

    def summary(self) -> str:
        what = f" {self.revision}" if self.revision else ""
        return (
            f"{self.action}{what}: {len(self.ok_hosts)}/{len(self.hosts)} hosts ok, "
            f"{len(self.failed_hosts)} failed, {self.bytes_sent} bytes sent, {self.duration_s:.1f} s"
        )

    def to_text(self) -> str:
        lines = [
            self.summary(),
            f"{'host':<20} {'status':<10} {'step':<9} {'exit':>4} {'tries':>5} {'secs':>7} "
            f"{'bytes':>12}  detail",
        ]
        for h in self.hosts:
            detail = h.error or " ".join(f"{k}={v}" for k, v in h.details.items() if not isinstance(v, dict))
            lines.append(
                f"{h.host:<20} {h.status:<10} {h.failed_step or '-':<9} {h.exit_code:>4} {h.attempts:>5} "
                f"{h.duration_s:>7.2f} {h.bytes_sent:>12}  {detail}"
            )
        return "\n".join(lines) + "\n"


def parse_key_values(line: str) -> dict:
    return dict(word.split("=", 1) for word in line.split() if "=" in word)


def parse_status(stdout: str) -> dict:
    """host_release.sh status output -> {"live", "live_revision", "live_complete", "slots"}."""
    live, slots = None, {}
    for line in stdout.splitlines():
        fields = parse_key_values(line)
        if line.startswith("live="):
            live = fields.get("live") or None
        elif "slot" in fields:
            slots[fields.pop("slot")] = fields
    live_slot = slots.get(live, {}) if live is not None else {}
    return {
        "live": live,
        "live_revision": live_slot.get("revision"),
        "live_complete": live_slot.get("state") == "complete",
        "slots": slots,
    }


def last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""


# --- the one-deploy-at-a-time lock -------------------------------------------

_deploy_state_lock = threading.Lock()  # guards _busy_targets

# (address, port, deploy_root) of every host some push/flip/rollback of this
# process is working on -> what that run is.
_busy_targets: dict[tuple, str] = {}


def deploy_target(host: Host) -> tuple:
    return (host.address, host.port, host.deploy_root)


@contextlib.contextmanager
def deploy_lock(what: str, hosts: Iterable[Host]) -> Iterator[None]:
    """One push/flip/rollback at a time over any host of `hosts`; refuse, never queue.

    Runs over disjoint inventories (staging and production) may overlap. Across
    processes and builds, the master's util.MasterLock serializes deploys (see
    master.cfg.example); this guards the CLI and direct callers.
    """
    targets = {deploy_target(h) for h in hosts}
    with _deploy_state_lock:
        busy = sorted(targets & _busy_targets.keys())
        if busy:
            raise DeployInProgress(
                f"refusing to {what}: {_busy_targets[busy[0]]} is running on the same hosts"
            )
        _busy_targets.update(dict.fromkeys(targets, what))
    try:
        yield
    finally:
        with _deploy_state_lock:
            for target in targets:
                _busy_targets.pop(target, None)


def deploy_in_progress() -> bool:
    return bool(_busy_targets)


# --- the runner ----------------------------------------------------------------


class FanoutSettings(_core.FanoutOptions):
    """The core's FanoutOptions, checked when made: its defaults and its checks
    are the C++ ones (cd/fanout.hpp), the keywords those of FanoutOptions.

    FANOUT_DEFAULTS below holds the defaults, for option parsers and steps.
    """

    def __init__(self, **options: int | float | list[int]) -> None:
        options.setdefault("output_tail_bytes", STATUS_OUTPUT_BYTES)
        for name, value in options.items():
            if isinstance(value, bool):  # pybind11 would take True for 1
                raise InvalidInputError(f"{name} must be a number, got {value!r}")
        try:
            super().__init__(**options)
        except TypeError:
            raise InvalidInputError(f"fan-out settings must be numbers, got {options!r}") from None
        # The core checks its options when a run starts; a run of no hosts
        # checks them now, so that bad settings fail at configuration time.
        _core.Fanout(self).run([])


FANOUT_DEFAULTS = FanoutSettings()


# progress(host_report, done, total, failed), from the engine's thread
ProgressCallback = Callable[[HostReport, int, int, int], None]


class ReleaseRunner:
    def __init__(
        self,
        inventory: Inventory,
        transport=None,
        settings: FanoutSettings | None = None,
        slots: int = inventory_rules.DEFAULT_SLOTS,
        progress: ProgressCallback | None = None,
    ):
        inventory_rules.check_slots(slots)
        self.inventory = inventory
        self.transport = transport if transport is not None else SshTransport()
        self.settings = settings or FANOUT_DEFAULTS
        self.slots = slots
        self.progress = progress
        self._fanout = None
        self._cancelled = False
        self._lock = threading.Lock()

    # -- actions ---------------------------------------------------------

    def push(self, source, revision: str, build="0", hosts: Iterable[str] | None = None) -> RunReport:
        """Transfer `source` into a fresh slot on every host (or `hosts`)."""
        source_dir = self._check_source(source)
        revision = check_word(revision, "revision")
        build = check_word(build, "build")
        now = str(int(time.time()))
        chosen = self._hosts(Selection(names=tuple(hosts)) if hosts is not None else ALL_HOSTS)

        def steps(host: Host) -> list[CommandSpec]:
            return [
                self._script(host, "prepare"),
                self.transport.rsync_command(host, source_dir),
                self._script(host, "commit", str(self.slots), revision, build, now),
            ]

        with deploy_lock(f"push {revision}", self.inventory.hosts):
            report = self._run("push", chosen, steps, PUSH_STEPS, revision)
        for host in report.hosts:
            if host.ok:
                host.details = parse_key_values(last_line(host.details.pop("stdout", "")))
        return report

    def flip(
        self, revision: str, selection: Selection = ALL_HOSTS, only_hosts: Iterable[str] | None = None
    ) -> RunReport:
        """Make `revision` live on the selected hosts.

        `only_hosts` limits the flip to hosts whose push succeeded; a host
        without a complete release of `revision` refuses the flip anyway.
        """
        revision = check_word(revision, "revision")
        chosen = self._eligible(selection, only_hosts)
        with deploy_lock(f"flip {revision}", self.inventory.hosts):
            return self._simple("flip", chosen, [revision], revision)

    def rollback(self, revision: str | None = None, selection: Selection = ALL_HOSTS) -> RunReport:
        """Flip back to the recorded previous release.

        With `revision` (the bad one), only hosts live on it move; the others
        (never flipped, or already rolled back) report changed=no.
        """
        args = [check_word(revision, "revision")] if revision is not None else []
        chosen = self._eligible(selection, None)
        with deploy_lock("rollback" + (f" {revision}" if revision else ""), self.inventory.hosts):
            return self._simple("rollback", chosen, args, revision)

    def status(self, selection: Selection = ALL_HOSTS) -> RunReport:
        """What is live and what is in every slot, per host (no lock: read only)."""
        report = self._run(
            "status",
            self._hosts(selection),
            lambda h: [self._script(h, "status", str(self.slots))],
            ("status",),
            None,
        )
        for host in report.hosts:
            stdout = host.details.pop("stdout", "")
            if host.ok:
                host.details = parse_status(stdout)
        return report

    def cancel(self) -> None:
        """Thread-safe: running transfers are killed, hosts not started are skipped."""
        with self._lock:
            self._cancelled = True
            if self._fanout is not None:
                self._fanout.cancel()

    # -- internals -------------------------------------------------------

    def _check_source(self, source) -> str:
        path = Path(source)
        if not path.is_dir():
            raise InvalidInputError(f"release source {str(source)!r} is not a directory")
        # Absolute, so rsync never reads "name:path" as a remote source.
        return str(path.resolve())

    def _hosts(self, selection: Selection) -> list[Host]:
        return self._hosts_from(selection, self.inventory.hosts)

    def _eligible(self, selection: Selection, only_hosts) -> list[Host]:
        hosts = self.inventory.hosts
        if only_hosts is not None:
            allowed = set(only_hosts)
            hosts = [h for h in hosts if h.name in allowed]
        return self._hosts_from(selection, hosts)

    def _hosts_from(self, selection: Selection, hosts) -> list[Host]:
        if selection.names is not None:
            unknown = set(selection.names) - set(self.inventory.names())
            if unknown:
                raise InvalidInputError(f"unknown host(s): {', '.join(sorted(unknown))}")
        return selection.apply(hosts)

    def _script(self, host: Host, action: str, *args: str) -> CommandSpec:
        return self.transport.script_command(host, action, [host.deploy_root, *args])

    def _simple(self, action: str, hosts: list[Host], args: list[str], revision) -> RunReport:
        report = self._run(action, hosts, lambda h: [self._script(h, action, *args)], (action,), revision)
        for host in report.hosts:
            stdout = host.details.pop("stdout", "")
            if host.ok:
                host.details = parse_key_values(last_line(stdout))
        return report

    def _run(self, action, hosts: list[Host], steps_for, step_names, revision) -> RunReport:
        if not hosts:
            raise InvalidInputError(f"{action}: no hosts selected")
        jobs = [_core.HostJob(host=h.name, steps=[to_command(s) for s in steps_for(h)]) for h in hosts]
        fanout = _core.Fanout(self.settings)
        with self._lock:
            if self._cancelled:
                fanout.cancel()
            self._fanout = fanout
        started = time.monotonic()
        callback = self._progress_adapter(step_names) if self.progress else None
        try:
            results = fanout.run(jobs, callback) if callback else fanout.run(jobs)
        except ValueError as error:  # the engine's InvalidInputError
            raise InvalidInputError(str(error)) from None
        finally:
            with self._lock:
                self._fanout = None
        reports = [host_report(r, step_names) for r in results]
        return RunReport(action, reports, time.monotonic() - started, revision)

    def _progress_adapter(self, step_names):
        def on_host_done(result, progress) -> None:
            self.progress(host_report(result, step_names), progress.done, progress.total, progress.failed)

        return on_host_done


def to_command(spec: CommandSpec) -> _core.Command:
    return _core.Command(
        argv=list(spec.argv), stdin_data=spec.stdin_data, parse_rsync_stats=spec.parse_rsync_stats
    )


def host_report(result: _core.HostResult, step_names: tuple[str, ...]) -> HostReport:
    failed = result.failed_step if 0 <= result.failed_step < len(step_names) else None
    report = HostReport(
        host=result.host,
        status=HostState(result.status),
        exit_code=result.exit_code,
        attempts=result.attempts,
        failed_step=step_names[failed] if failed is not None else None,
        duration_s=result.duration_s,
        bytes_sent=result.bytes_sent,
    )
    if report.ok:
        report.details = {"stdout": result.stdout_tail}
    else:
        report.error = last_line(result.stderr_tail) or STATE_ERRORS.get(
            report.status, f"exit code {result.exit_code}"
        )
    return report
