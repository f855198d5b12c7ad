"""Buildbot steps for the release engine: PushRelease, FlipRelease, RollbackRelease.

    from buildbot.plugins import steps, util
    hosts = [{"address": "web1.example", "deploy_root": "/srv/app", "tags": ["canary"]}, ...]
    deploy_lock = util.MasterLock("deploy")           # one deploy at a time
    factory.addStep(steps.PushRelease(inventory=hosts, source="/srv/builds/%(prop:buildnumber)s",
                                      release_root="/srv/builds",   # nothing outside it is ever pushed
                                      known_hosts="/etc/buildbot/known_hosts",
                                      identity_file="/etc/buildbot/deploy_key",
                                      locks=[deploy_lock.access("exclusive")]))
    factory.addStep(steps.FlipRelease(inventory=hosts, tag="canary", ...))
    factory.addStep(steps.FlipRelease(inventory=hosts, ...))   # all pushed hosts
    factory.addStep(steps.RollbackRelease(inventory=hosts, ...))

The push runs on the master, from a directory on the master. The fan-out runs
in a thread (threads.deferToThread); progress comes back to the reactor with
callFromThread. Properties set, with ACTION one of push/flip/rollback:
release_revision, release_ACTION_hosts_ok, release_ACTION_hosts_failed,
release_ACTION_bytes_sent, release_ACTION_duration_s, release_pushed_hosts
(names, read by FlipRelease), release_failed_hosts.
"""

from __future__ import annotations

from pathlib import Path

from buildbot import config
from buildbot.interfaces import IRenderable
from buildbot.process import buildstep, properties
from buildbot.process.results import CANCELLED, FAILURE, SUCCESS, WARNINGS
from twisted.internet import defer, threads
from twisted.python.failure import Failure

from buildbot_steps import release

PUSHED_HOSTS_PROPERTY = "release_pushed_hosts"
# Renderable defaults (shared, immutable): what a push records, the revision
# the build tested; what a flip or rollback acts on, the one pushed.
TESTED_REVISION = properties.Property("got_revision", default=properties.Property("revision"))
BUILD_NUMBER = properties.Property("buildnumber")
RELEASE_REVISION = properties.Property("release_revision")
PROPERTY_SOURCE = "ReleaseStep"
# Failed hosts named in the step's summary; the hosts log lists them all.
FAILED_HOSTS_NAMED = 5


def is_renderable(value) -> bool:
    return IRenderable.providedBy(value)


class _ReleaseStep(buildstep.BuildStep):
    """Shared options: where the hosts are, how to reach them, how hard to try."""

    action = ""  # "push", "flip" or "rollback"
    renderables = ["inventory", "revision", "known_hosts", "identity_file", "tag", "count", "fraction"]

    def __init__(
        self,
        inventory=None,
        revision=None,
        transport="ssh",
        known_hosts=None,
        identity_file=None,
        ssh_options=(),
        slots=release.DEFAULT_SLOTS,
        concurrency=release.FANOUT_DEFAULTS.concurrency,
        host_timeout=release.FANOUT_DEFAULTS.host_timeout_s,
        retries=release.FANOUT_DEFAULTS.max_retries,
        max_fail_fraction=release.FANOUT_DEFAULTS.max_fail_fraction,
        tolerate_failures=0,
        tag=None,
        count=None,
        fraction=None,
        preserve_privileged=False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.preserve_privileged = bool(preserve_privileged)
        self.inventory = inventory
        self.revision = revision
        self.transport = transport
        self.known_hosts = known_hosts
        self.identity_file = identity_file
        self.ssh_options = tuple(ssh_options)
        self.slots = slots
        self.tag, self.count, self.fraction = tag, count, fraction
        self.tolerate_failures = tolerate_failures
        self._runner = None
        self._progress = (0, 0, 0)  # done, total, failed
        self._summary: str | None = None
        self._check_static_arguments(concurrency, host_timeout, retries, max_fail_fraction)

    # -- configuration ---------------------------------------------------

    def _check_static_arguments(self, concurrency, host_timeout, retries, max_fail_fraction) -> None:
        # config.error collects and returns while loading master.cfg: keep going safely.
        self.settings = None
        if self.inventory is None:
            config.error(
                f"{type(self).__name__}: inventory is required (a list of hosts or a JSON file path)"
            )
        elif not is_renderable(self.inventory):
            self._guard(lambda: self._load_inventory(self.inventory))
        if self.transport not in release.TRANSPORTS:
            config.error(f"{type(self).__name__}: transport must be one of {sorted(release.TRANSPORTS)}")
        if not isinstance(self.tolerate_failures, int) or self.tolerate_failures < 0:
            config.error(f"{type(self).__name__}: tolerate_failures must be a non-negative integer")
        self._guard(lambda: setattr(self, "settings", release.FanoutSettings(
            concurrency=concurrency, host_timeout_s=host_timeout, max_retries=retries,
            max_fail_fraction=max_fail_fraction)))  # fmt: skip
        self._guard(self._make_transport)
        if not any(is_renderable(v) for v in (self.tag, self.count, self.fraction)):
            self._guard(self._selection)
        if self.revision is not None and not is_renderable(self.revision):
            self._guard(lambda: release.check_word(self.revision, "revision"))
        self._guard(lambda: release.check_slots(self.slots))

    def _guard(self, check) -> None:
        try:
            check()
        except release.InvalidInput as error:
            config.error(f"{type(self).__name__}: {error}")

    @staticmethod
    def _load_inventory(value) -> release.Inventory:
        if isinstance(value, release.Inventory):
            return value
        if isinstance(value, str):
            return release.Inventory.from_file(value)
        return release.Inventory.from_entries(value)

    def _make_transport(self):
        if self.transport == "local":
            return release.LocalTransport(preserve_privileged=self.preserve_privileged)
        return release.SshTransport(
            known_hosts=self.known_hosts if not is_renderable(self.known_hosts) else None,
            identity_file=self.identity_file if not is_renderable(self.identity_file) else None,
            extra_options=self.ssh_options,
            preserve_privileged=self.preserve_privileged,
        )

    def _selection(self) -> release.Selection:
        count = int(self.count) if self.count not in (None, "") else None
        fraction = float(self.fraction) if self.fraction not in (None, "") else None
        return release.Selection(tag=self.tag or None, count=count, fraction=fraction)

    # -- running ---------------------------------------------------------

    async def run(self) -> int:
        try:
            runner = release.ReleaseRunner(
                self._load_inventory(self.inventory), self._make_transport(), self.settings,
                self.slots, progress=self._progress_from_thread,
            )  # fmt: skip
        except (release.InvalidInput, ValueError) as error:
            return await self._refuse(f"bad configuration: {error}")
        try:
            work = self._work(runner)  # the rendered arguments: a forced build's values
        except (release.InvalidInput, ValueError) as error:
            return await self._refuse(str(error))
        self._runner = runner
        self._progress = (0, 0, 0)
        self.updateSummary()
        try:
            report = await threads.deferToThread(work)
        except (release.InvalidInput, release.DeployInProgress) as error:
            return await self._refuse(str(error))
        finally:
            self._runner = None
        self._summary = self._report_summary(report)
        await self.addCompleteLog("hosts", report.to_text())
        self._set_figures(report)
        return self._results(report)

    def _work(self, runner):
        """Check the rendered arguments now; return the call the thread makes."""
        raise NotImplementedError

    async def _refuse(self, message: str) -> int:
        self._summary = f"{self.action}: {message}"
        await self.addCompleteLog("error", message + "\n")
        return FAILURE

    def _results(self, report: release.RunReport) -> int:
        if self.stopped:
            # Stopped build: the running transfers were killed; the summary and
            # the hosts log say which hosts were done and which were not.
            return CANCELLED
        failed = len(report.failed_hosts)
        if not report.hosts:
            return WARNINGS  # nothing selected: nothing done, say so
        if failed == 0:
            return SUCCESS
        if failed <= self.tolerate_failures and report.ok_hosts:
            return WARNINGS
        return FAILURE

    def _set_figures(self, report: release.RunReport) -> None:
        prefix = f"release_{self.action}"
        figures = {
            f"{prefix}_hosts_ok": len(report.ok_hosts),
            f"{prefix}_hosts_failed": len(report.failed_hosts),
            f"{prefix}_bytes_sent": report.bytes_sent,
            f"{prefix}_duration_s": round(report.duration_s, 3),
            "release_failed_hosts": report.failed_hosts,
        }
        if report.revision:
            figures["release_revision"] = report.revision
            if not self.getProperty("revision"):
                # The web UI's "Revision" column reads this property; a forced
                # deploy has none of its own.
                figures["revision"] = report.revision
        for name, value in figures.items():
            self.setProperty(name, value, PROPERTY_SOURCE)

    def _progress_from_thread(self, host_report, done: int, total: int, failed: int) -> None:
        # Called in the fan-out thread: hand over to the reactor.
        self.master.reactor.callFromThread(self._on_progress, done, total, failed)

    def _on_progress(self, done: int, total: int, failed: int) -> None:
        self._progress = (done, total, failed)
        self.updateSummary()

    def getCurrentSummary(self) -> dict[str, str]:
        done, total, failed = self._progress
        counts = f" {done}/{total} hosts" if total else ""
        problems = f", {failed} failed" if failed else ""
        return {"step": f"{self.description[0]}{counts}{problems}"}

    def _report_summary(self, report: release.RunReport) -> str:
        summary = f"{self._what(report)}: {len(report.ok_hosts)}/{len(report.hosts)} hosts ok"
        if report.bytes_sent:
            summary += f", {release.human_bytes(report.bytes_sent)} sent"
        if report.failed_hosts:
            summary += f", failed: {', '.join(report.failed_hosts[:FAILED_HOSTS_NAMED])}"
            summary += "..." if len(report.failed_hosts) > FAILED_HOSTS_NAMED else ""
        return summary

    def _what(self, report: release.RunReport) -> str:
        """ "push abc123", "flip abc123", "rollback of abc123": the action and its revision."""
        if not report.revision:
            return self.action
        return f"{self.action} {'of ' if self.action == 'rollback' else ''}{report.revision}"

    def getResultSummary(self) -> dict[str, str]:
        if self._summary:
            return with_build_summary(self._summary)
        return super().getResultSummary()

    def interrupt(self, reason: str | Failure) -> defer.Deferred:
        # Stop the fan-out: running transfers are killed, the rest cancelled.
        runner = self._runner
        if runner is not None:
            runner.cancel()
        return super().interrupt(reason)


def with_build_summary(summary: str) -> dict[str, str]:
    """The step's summary, also for the build's: the builds table then says what each deploy did.

    Buildbot joins the build's status and each step's "build" text with spaces
    ("build successful push r2: ... canary PASS ..."): the period ends each.
    """
    return {"step": summary, "build": f"{summary}."}


def confine_to_root(source, release_root: str) -> str:
    """`source` resolved (symlinks and `..` followed), refused unless strictly inside `release_root`.

    A relative `source` is taken under the root. The resolved path is what
    gets pushed, so a link swapped after this check is not followed again.
    """
    root = Path(release_root).resolve()
    if not root.is_dir():
        raise release.InvalidInput(
            f"the release root {release_root!r} is not a directory on the master: create it, or set "
            "release_root (BUILDBOT_CD_RELEASE_ROOT in master.cfg.example) to where release trees are kept"
        )
    if not isinstance(source, str) or not source.strip() or "\0" in source:
        raise release.InvalidInput(f"no usable release directory (got {source!r}): name one under {root}")
    resolved = (root / source).resolve()  # an absolute source replaces the root here
    if root not in resolved.parents:
        raise release.InvalidInput(
            f"refusing to push {source!r}: it resolves to {resolved}, which is not inside the release "
            f"root {root}; deploy a directory under {root}"
        )
    if not resolved.is_dir():
        raise release.InvalidInput(f"release directory {source!r} is not a directory under {root}")
    return str(resolved)


class PushRelease(_ReleaseStep):
    """Transfer `source` (a directory on the master, inside `release_root`) into a free slot on every host.

    `release_root` is required: the force form and the Trigger pass the
    release directory as a property, and without a root any directory of the
    master (its own database included) could be pushed live to every host.
    An empty `source` fails the step unless `allow_empty=True`.
    """

    name = "push-release"
    description = ["pushing"]
    descriptionDone = ["pushed"]
    action = "push"
    renderables = ["source", "build_number"]

    def __init__(
        self,
        source=None,
        revision=TESTED_REVISION,
        build=BUILD_NUMBER,
        release_root=None,
        allow_empty=False,
        **kwargs,
    ):
        self.source = source
        self.release_root = release_root
        self.allow_empty = bool(allow_empty)
        self.build_number = build  # not self.build: that is the running Build
        super().__init__(revision=revision, **kwargs)
        if source is None:
            config.error("PushRelease: source (a directory on the master) is required")
        if not isinstance(release_root, str) or not Path(release_root).is_absolute():
            config.error(
                "PushRelease: release_root is required: the absolute path of the directory on the master "
                "that every pushed release must be inside"
            )

    def _work(self, runner):
        source, revision = self.source, self.revision
        build = str(self.build_number) if self.build_number not in (None, "") else "0"
        if not revision:
            raise release.InvalidInput("no revision to push (set revision=, or the got_revision property)")
        release.check_word(revision, "revision")
        release.check_word(build, "build")
        source = confine_to_root(source, self.release_root)
        return lambda: runner.push(source, str(revision), build, allow_empty=self.allow_empty)

    def _set_figures(self, report) -> None:
        super()._set_figures(report)
        self.setProperty(PUSHED_HOSTS_PROPERTY, report.ok_hosts, PROPERTY_SOURCE)


class FlipRelease(_ReleaseStep):
    """Make `revision` live on a subset (tag, count, fraction) or all pushed hosts.

    By default only hosts listed in the release_pushed_hosts property (set by
    PushRelease) are candidates: a host whose transfer failed is never flipped.
    """

    name = "flip-release"
    description = ["flipping"]
    descriptionDone = ["flipped"]
    action = "flip"

    def __init__(self, revision=RELEASE_REVISION, only_pushed=True, **kwargs):
        self.only_pushed = only_pushed
        super().__init__(revision=revision, **kwargs)

    def _work(self, runner):
        if not self.revision:
            raise release.InvalidInput("no revision to flip (set revision=, or run PushRelease first)")
        revision = release.check_word(self.revision, "revision")
        selection = self._selection()
        only = None
        if self.only_pushed:
            only = self.getProperty(PUSHED_HOSTS_PROPERTY)
            if only is None:
                raise release.InvalidInput(
                    f"no {PUSHED_HOSTS_PROPERTY} property: run PushRelease first, or set only_pushed=False"
                )
        return lambda: runner.flip(revision, selection, only_hosts=only)


class RollbackRelease(_ReleaseStep):
    """Flip hosts back to their recorded previous release.

    With `revision` (the bad one, by default the release_revision property),
    only hosts live on it move; without it every selected host steps back.
    """

    name = "rollback-release"
    description = ["rolling back"]
    descriptionDone = ["rolled back"]
    action = "rollback"

    def __init__(self, revision=RELEASE_REVISION, **kwargs):
        super().__init__(revision=revision, **kwargs)

    def _work(self, runner):
        revision = release.check_word(self.revision, "revision") if self.revision else None
        selection = self._selection()
        return lambda: runner.rollback(revision, selection)
