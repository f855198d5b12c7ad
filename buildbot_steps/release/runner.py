"""Release push: parallel rsync fan-out into release slots, atomic flip, rollback.

The Python side of engine 2 (DESIGN.md section 4). The per-host layout and its
operations live in one fixed POSIX sh script, shipped with this package in two
parts (`host_release.sh`, `host_transfer.sh`) that every host runs joined as one
text; every fan-out runs through `buildbot_steps._core.Fanout`.

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
the host script can hard-link them from the live slot (and rsync skip them).

Safety of command lines: commands are argument vectors. Over ssh, the remote
side joins the words after the destination into one line for the user's
shell, so those words are fixed ones plus values checked against SAFE_WORD.
The one string that is split again is rsync's `-e` value (rsync splits it on
whitespace): it is built from fixed options and checked values only.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
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
)  # fmt: skip
from buildbot_steps.release.reports import (
    COMMITTED_LINE,
    HostReport,
    HostState,
    RunReport,
    host_report,
    last_line,
    parse_key_values,
    parse_status,
)  # fmt: skip
from buildbot_steps.release.transports import CommandSpec, PushStep, SshTransport, write_entry_list

__all__ = [
    "FANOUT_DEFAULTS",
    "FanoutSettings",
    "HostReport",
    "HostState",
    "ReleaseRunner",
    "RunReport",
    "deploy_in_progress",
    "deploy_lock",
    "parse_status",
]

# Output kept per host: a status listing of every slot fits easily.
STATUS_OUTPUT_BYTES = 64 * 1024


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

    def push(self, source, revision: str, build="0", hosts: Iterable[str] | None = None,
             allow_empty: bool = False) -> RunReport:  # fmt: skip
        """Transfer `source` into a fresh slot on every host (or `hosts`).

        On each host the transfer and the commit run under the deploy root's
        lock, held by the host script (see host_release.sh, host_transfer.sh): a push, flip or
        rollback from another process or master is refused, never mixed in.
        An empty `source` is refused unless `allow_empty`.
        """
        source_dir = self._check_source(source, allow_empty)
        revision = check_word(revision, "revision")
        build = check_word(build, "build")
        chosen = self._hosts(Selection(names=tuple(hosts)) if hosts is not None else ALL_HOSTS)
        keep_setid = bool(getattr(self.transport, "preserve_privileged", False))
        with tempfile.TemporaryDirectory(prefix="bbcd-entries-") as scratch:
            entry_list = write_entry_list(source_dir, scratch, keep_setid)
            owner = owner_word("push", revision)
            transfer_args = [
                str(self.slots),
                revision,
                build,
                str(int(time.time())),
                owner,
                entry_list.digest,
                "kept" if keep_setid else "ours",  # owners and groups: see host_transfer.sh's open_fresh_slot
            ]

            def steps(host: Host) -> list[PushStep]:
                return self.transport.push_steps(host, source_dir, entry_list.path, transfer_args)

            with deploy_lock(f"push {revision}", self.inventory.hosts):
                report = self._run("push", chosen, steps, revision)
        for host in report.hosts:
            if host.ok:
                committed = COMMITTED_LINE.findall(host.details.pop("stderr", ""))
                host.details = parse_key_values(committed[-1]) if committed else {}
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
            return self._simple("flip", chosen, [owner_word("flip", revision), revision], revision)

    def rollback(self, revision: str | None = None, selection: Selection = ALL_HOSTS) -> RunReport:
        """Flip back to the recorded previous release.

        With `revision` (the bad one), only hosts live on it move; the others
        (never flipped, or already rolled back) report changed=no. Without it,
        each host steps back from the revision its status shows live.
        """
        owner = owner_word("rollback", revision)
        revision = check_word(revision, "revision") if revision is not None else None
        chosen = self._eligible(selection, None)
        with deploy_lock("rollback" + (f" {revision}" if revision else ""), self.inventory.hosts):
            return self._rollback_from_live(chosen, owner, revision)

    def _rollback_from_live(self, hosts: list[Host], owner: str, revision: str | None) -> RunReport:
        """A rollback told, per host, the commit live now (revision and seq,
        from a status first): ssh's 255 is a transient code, and a rollback
        retried after its connection dropped past the flip would otherwise
        step back a second time, even when the bad revision is given, if it
        was rebuilt (the slot before holds it too). The status opens the
        connections the rollback then rides. A host live on another revision
        than the one given reports changed=no; one whose status fails is
        reported with that failure, not rolled back."""
        if not hosts:
            raise InvalidInputError("rollback: no hosts selected")
        status = self.status(Selection(names=tuple(h.name for h in hosts)))
        live = {h.host: live_commit(h.details) for h in status.hosts if h.ok}
        reachable = [h for h in hosts if h.name in live]

        def steps(host: Host) -> list[PushStep]:
            expected = live[host.name]
            if revision is not None and expected[:1] != [revision]:
                expected = [revision]  # not live on it: the script leaves it as it is
            words = [check_word(word, "live release") for word in expected]
            return [("rollback", self._script(host, "rollback", owner, *words))]

        report = self._run("rollback", reachable, steps, revision) if reachable else RunReport("rollback", [])
        with_script_details(report)
        unreachable = {h.host: h for h in status.hosts if not h.ok}
        done = {h.host: h for h in report.hosts}
        report.hosts = [done.get(h.name) or unreachable[h.name] for h in hosts]
        report.duration_s += status.duration_s
        report.revision = revision
        return report

    def status(self, selection: Selection = ALL_HOSTS) -> RunReport:
        """What is live and what is in every slot, per host (no lock: read only)."""

        def steps(host: Host) -> list[PushStep]:
            return [("status", self._script(host, "status", str(self.slots)))]

        report = self._run("status", self._hosts(selection), steps, None)
        for host in report.hosts:
            stdout = host.details.pop("stdout", "")
            if host.ok:
                host.details = parse_status(stdout)
        return report

    def run_command(self, argv: list[str], selection: Selection = ALL_HOSTS) -> RunReport:
        """A read-only command on each selected host (no lock); its output in details["stdout"]."""
        hosts = self._hosts(selection)
        return self._run("command", hosts, lambda h: [("command", self.transport.command(h, argv))], None)

    def cancel(self) -> None:
        """Thread-safe: running transfers are killed, hosts not started are skipped."""
        with self._lock:
            self._cancelled = True
            if self._fanout is not None:
                self._fanout.cancel()

    # -- internals -------------------------------------------------------

    def _check_source(self, source, allow_empty: bool) -> str:
        path = Path(source)
        if not path.is_dir():
            raise InvalidInputError(f"release source {str(source)!r} is not a directory")
        # An empty tree would be pushed as a release that serves nothing: a
        # build that failed to produce its output, most likely.
        if not allow_empty and next(path.iterdir(), None) is None:
            raise InvalidInputError(
                f"release source {str(source)!r} is empty; build into it first, or allow an empty release "
                "explicitly (allow_empty=True, --allow-empty)"
            )
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
        report = self._run(action, hosts, lambda h: [(action, self._script(h, action, *args))], revision)
        return with_script_details(report)

    def _run(
        self, action, hosts: list[Host], steps_for: Callable[[Host], list[PushStep]], revision
    ) -> RunReport:
        if not hosts:
            raise InvalidInputError(f"{action}: no hosts selected")
        steps = {h.name: steps_for(h) for h in hosts}
        step_names = tuple(name for name, _ in steps[hosts[0].name])
        jobs = [
            _core.HostJob(host=h.name, steps=[to_command(spec) for _, spec in steps[h.name]]) for h in hosts
        ]
        fanout = _core.Fanout(self.settings)
        with self._lock:
            if self._cancelled:
                fanout.cancel()
            self._fanout = fanout
        started = time.monotonic()
        callback = self._progress_adapter(step_names, hosts) if self.progress else None
        try:
            results = fanout.run(jobs, callback) if callback else fanout.run(jobs)
        except ValueError as error:  # the engine's InvalidInputError
            raise InvalidInputError(str(error)) from None
        finally:
            with self._lock:
                self._fanout = None
        by_name = {h.name: h for h in hosts}
        reports = [host_report(r, step_names, by_name[r.host]) for r in results]
        return RunReport(action, reports, time.monotonic() - started, revision)

    def _progress_adapter(self, step_names, hosts: list[Host]):
        by_name = {h.name: h for h in hosts}

        def on_host_done(result, progress) -> None:
            report = host_report(result, step_names, by_name[result.host])
            self.progress(report, progress.done, progress.total, progress.failed)

        return on_host_done


def live_commit(status: dict) -> list[str]:
    """[revision, seq] of the live slot from a host's status ([] when nothing
    is live): the same revision pushed twice is told apart by its commit."""
    revision = status.get("live_revision")
    if not revision:
        return []
    seq = (status.get("slots") or {}).get(status.get("live"), {}).get("seq")
    return [revision, seq] if seq else [revision]


def with_script_details(report: RunReport) -> RunReport:
    """Each host's details from the script's last line (live=, previous=, changed=)."""
    for host in report.hosts:
        stdout = host.details.pop("stdout", "")
        if host.ok:
            host.details = parse_key_values(last_line(stdout))
    return report


def to_command(spec: CommandSpec) -> _core.Command:
    return _core.Command(
        argv=list(spec.argv), stdin_data=spec.stdin_data, parse_rsync_stats=spec.parse_rsync_stats
    )


def owner_word(action: str, revision: str | None) -> str:
    """Who holds a host's lock and since when, as host_release.sh records it:
    action/revision/master/pid/since, since the master's UTC time."""
    origin = re.sub(r"[^A-Za-z0-9.-]", "-", socket.gethostname())[:64].strip(".-") or "master"
    since = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    return check_word(f"{action}/{revision or 'any'}/{origin}/{os.getpid()}/{since}", "lock owner")
