"""The shard side of a sharded run: `RunShard`, in each triggered shard build.

It pulls batches from the parent's ShardSession (same master process, see
session.py) and runs each as a remote command on its own worker, over
Buildbot's worker protocol (no extra port); the runner's JUnit XML comes
back with uploadFile and is read by junit.py.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from buildbot import config
from buildbot.config import BuilderConfig
from buildbot.interfaces import IRenderable
from buildbot.process import remotecommand, remotetransfer
from buildbot.process.buildstep import BuildStep, CommandMixin
from buildbot.process.factory import BuildFactory
from buildbot.process.results import FAILURE, SUCCESS, WARNINGS
from buildbot.schedulers.triggerable import Triggerable
from buildbot.worker.protocols import base as protocol_base
from twisted.internet import defer, error, threads
from twisted.python import log as twisted_log
from twisted.python.failure import Failure
from twisted.spread import pb

from buildbot_steps import _core
from buildbot_steps._core import AssignmentKind, Verdict
from buildbot_steps.shard import session as shard_session
from buildbot_steps.shard.commands import (
    BATCH_FAILURE_NOTE,
    COMMAND_PROPERTY,
    DEFAULT_BATCH_TIMEOUT_S,
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_TEST_COMMAND,
    INDEX_PROPERTY,
    NOT_PASSED,
    PARENT_PROPERTY,
    RUNNER_ERROR_NOTE,
    TESTS_PROPERTY,
    WORKDIR_PROPERTY,
    ShardedTestError,
    batch_ids_text,
    check_test_command,
    expand_test_command,
    names,
    passed_after_a_batch_failure,
    short_list,
    uses_tests_file,
)  # fmt: skip
from buildbot_steps.shard.junit import (
    MAX_REPORT_BYTES,
    JUnitReportError,
    JUnitTestResult,
    parse_junit_report,
)  # fmt: skip
from buildbot_steps.shard.session import AnyAssignment, Batch, ShardSession
from buildbot_steps.shard.warm_channel import ASK_AGAIN, AskAgain
from buildbot_steps.shard.warm_step import WarmRunnerMixin

# A shard told to wait asks again after a report, or after this long anyway:
# straggler copies depend on elapsed time, not only on reports.
WAIT_POLL_S = 1.0

# A shard told to wait while no batch runs anywhere gives up after this long:
# the re-run it waits for must go to another worker and none is pulling. Its
# tests are then reported "not run" (FAILURE) instead of the build hanging.
STALL_TIMEOUT_S = 120.0


def shard_builder_config(
    name: str,
    workernames: list[str],
    setup_steps: Sequence[BuildStep] = (),
    scheduler_name: str | None = None,
    run_shard: RunShard | None = None,
    **builder_kwargs: Any,
) -> tuple[BuilderConfig, Triggerable]:
    """The shard builder and its Triggerable scheduler, for master.cfg.

    `setup_steps` run before the shard (typically the checkout: shard builds
    get the parent build's source stamps, so a Git step checks out the same
    revision). collapseRequests=False: Buildbot's default collapser ignores
    trigger properties and would merge the shard requests into one build.
    """
    builder = BuilderConfig(
        name=name,
        workernames=list(workernames),
        factory=BuildFactory([*setup_steps, run_shard or RunShard()]),
        collapseRequests=False,
        **builder_kwargs,
    )
    scheduler = Triggerable(name=scheduler_name or name, builderNames=[name])
    return builder, scheduler


def _connection_lost(failure_or_exc: Failure | BaseException) -> bool:
    lost = (error.ConnectionLost, pb.PBConnectionLost)
    if hasattr(failure_or_exc, "check"):
        return failure_or_exc.check(*lost) is not None
    return isinstance(failure_or_exc, lost)


class _BytesWriter(protocol_base.FileWriterImpl):
    """Receives an uploaded file into memory, refusing more than max_bytes."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.chunks: list[bytes] = []
        self.size = 0
        self.overflow = False

    def remote_write(self, data: bytes | str) -> None:
        chunk = data.encode() if isinstance(data, str) else bytes(data)
        self.size += len(chunk)
        if self.size > self.max_bytes:
            self.overflow = True
            return
        self.chunks.append(chunk)

    def remote_utime(self, accessed_modified: tuple[float, float]) -> None:
        pass

    def remote_close(self) -> None:
        pass

    def data(self) -> bytes:
        return b"".join(self.chunks)


# A batch of either source: the core's (dynamic) or a static shard's.
AnyBatch = _core.Batch | Batch


def batch_of(assignment: AnyAssignment) -> AnyBatch:
    """The batch of a "run" assignment (the core leaves it empty for the other kinds)."""
    if assignment.batch is None:
        raise ValueError(f"a {assignment.kind.name} assignment carries no batch")
    return assignment.batch


# ------------------------------------------------------------ the shard step


class RunShard(WarmRunnerMixin, CommandMixin, BuildStep):
    """Pulls batches from the parent's session and runs them on this worker.

    Without a parent session on this master (multi-master, or a rebuild of a
    static shard after its parent ended) a static shard runs its fixed list
    from the `shard_tests` property alone and gates on its own results; only
    then are this step's own test_command, test_workdir and env used (else the
    parent's settings apply, so that one place configures the run).
    """

    name = "run-shard"
    description = ["running", "shard"]
    descriptionDone = ["shard"]
    renderables = ["test_command", "test_workdir", "env"]

    def __init__(
        self,
        test_command: list[str] | None = None,
        test_workdir: str | None = None,
        env: dict[str, str] | None = None,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        self.test_command = test_command
        self.test_workdir = test_workdir
        self.env = env or {}
        self.max_attempts = max_attempts
        if test_command is not None and not IRenderable.providedBy(test_command):
            problem = check_test_command(test_command)
            if problem:
                config.error(f"RunShard: {problem}")
        self._session: shard_session.ShardSession | None = None
        self._worker = ""
        self._ran = {"batches": 0, "tests": 0, "failed attempts": 0}
        self._ran_ids: set[str] = set()  # the tests this shard ran: its own result is theirs
        self._runner_errors: list[str] = []  # its warm runner's, outside any test
        self._summary: str | None = None

    async def run(self) -> int:
        self.stdio = await self.addLog("stdio")
        try:
            session, standalone = self._find_session()
        except ShardedTestError as problem:
            self._summary = str(problem)
            await self.stdio.addStderr(f"{problem}\n")
            return FAILURE
        self._session, self._worker = session, self._puller_name()
        reports_dir = f".shard-reports-{self.build.buildid}"
        workdir = session.settings.workdir or self.workdir
        # A standalone session holds only this shard's list, at index 0.
        shard_index = 0 if standalone else self.getProperty(INDEX_PROPERTY, 0)
        try:
            await self.runMkdir(self.build.path_module.join(workdir, reports_dir))
            warm_finished = session.settings.warm_command is not None and await self._run_warm(
                session, shard_index, workdir, reports_dir
            )
            if not warm_finished:
                await self._pull_batches(session, shard_index, workdir, reports_dir)
            # A puller that has left is no longer live: the dispatcher must not
            # keep a re-run waiting for it.
            session.worker_lost(self._worker)
        except Exception:
            # Lost connection (Buildbot then marks this build RETRY), stop, or
            # a bug: either way this worker's batches go back to the queue.
            session.worker_lost(self._worker)
            raise
        await self.runRmdir(self.build.path_module.join(workdir, reports_dir), abandonOnFailure=False)
        self._summary = (
            f"{self._ran['batches']} batches, {self._ran['tests']} tests run, "
            f"{self._ran['failed attempts']} failed attempts"
        )
        # Standalone: every test of the list is this shard's; else those it ran,
        # judged by their final verdict (a failure re-run elsewhere may be flaky).
        result = self._result_of(session, None if standalone else self._ran_ids)
        if self._runner_errors:
            self._summary += f"; {RUNNER_ERROR_NOTE}: {len(self._runner_errors)}"
            return FAILURE
        if result == SUCCESS and self._ran["failed attempts"]:
            return WARNINGS  # failed here; the verdict is not in yet (another shard re-runs it)
        return result

    def _puller_name(self) -> str:
        """This shard build's name towards the dispatcher: "<worker>#<build number>".

        Normally one shard build runs per worker, so this is the worker. After
        a lost worker, Buildbot reruns its shard build on a worker that is
        already running one; as a separate puller it can take the re-runs that
        must go "elsewhere" instead of waiting for them forever.
        """
        return f"{self.getWorkerName()}#{self.build.number}"

    def _find_session(self) -> tuple[shard_session.ShardSession, bool]:
        parent = self.getProperty(PARENT_PROPERTY)
        session = shard_session.lookup_session(parent)
        if session is not None:
            return session, False
        tests = self.getProperty(TESTS_PROPERTY)
        if tests is None:
            raise ShardedTestError(
                f"no running ShardedTest parent build (build id {parent!r}) on this master; "
                "the dynamic mode needs the parent on the same master (use mode='static' "
                "with several masters)"
            )
        command = self.test_command or self.getProperty(COMMAND_PROPERTY) or DEFAULT_TEST_COMMAND
        problem = check_test_command(command)
        if problem:
            raise ShardedTestError(problem)
        settings = shard_session.ShardCommandSettings(
            test_command=list(command),
            workdir=self.test_workdir or self.getProperty(WORKDIR_PROPERTY),
            env=dict(self.env),
            # No parent step on this master to take the timeout from: its default.
            timeout_s=DEFAULT_BATCH_TIMEOUT_S,
            max_report_bytes=MAX_REPORT_BYTES,
        )
        batches = shard_session.StaticShards([list(tests)], {}, self.max_attempts)
        clock = self.master.reactor.seconds
        return shard_session.ShardSession(batches, settings, clock), True

    async def _pull_batches(
        self, session: ShardSession, shard_index: int, workdir: str, reports_dir: str
    ) -> None:
        while (batch := await self._next_batch_to_run(session, shard_index)) is not None:
            await self._run_batch(session, batch, workdir, reports_dir)
            self.updateSummary()

    # Since when this shard has waited while no batch ran anywhere (None: not
    # waiting); kept across calls, which a warm runner's held requests split.
    _idle_from: float | None = None

    async def _next_batch_to_run(
        self, session: ShardSession, shard_index: int, give_up: Callable[[], bool] | None = None
    ) -> AnyBatch | None | AskAgain:
        """The next batch for this shard, waiting while the dispatcher says so;
        None when the shard is done (or stopped, or stalled); ASK_AGAIN once
        `give_up()` says so, before any batch is taken."""
        while not self.stopped:
            if give_up is not None and give_up():
                return ASK_AGAIN
            assignment = session.next_batch(self._worker, shard_index)
            if assignment.kind == AssignmentKind.done:
                return None
            if assignment.kind == AssignmentKind.run:
                self._idle_from = None
                return batch_of(assignment)
            idle_since = self._idle_from = self._idle_since(session, self._idle_from)
            if self.master.reactor.seconds() - idle_since > STALL_TIMEOUT_S:
                await self.stdio.addHeader(
                    f"nothing ran anywhere for {STALL_TIMEOUT_S:.0f} s while waiting: "
                    "leaving the remaining tests to other shards\n"
                )
                return None
            await session.wait_for_change(self.master.reactor, WAIT_POLL_S)
        return None

    def _idle_since(self, session: ShardSession, idle_since: float | None) -> float:
        if session.batches.stats().batches_in_flight:
            return self.master.reactor.seconds()  # someone is working: not stalled
        return idle_since if idle_since is not None else self.master.reactor.seconds()

    async def _run_batch(
        self, session: ShardSession, batch: AnyBatch, workdir: str, reports_dir: str
    ) -> None:
        settings = session.settings
        tests = list(batch.tests)
        report_path = self.build.path_module.join(reports_dir, f"batch-{batch.id}.xml")
        tests_path = self.build.path_module.join(reports_dir, f"batch-{batch.id}.tests")
        argv = expand_test_command(settings.test_command, tests, report_path, tests_path)
        kind = "retry " if batch.retry else "speculative " if batch.speculative else ""
        # A count and a short head only: the full ids are in the parent's report.
        await self.stdio.addHeader(
            f"\n=== {kind}batch {batch.id}: {short_list(tests)}, estimated {batch.estimate_s:.2f} s\n"
        )
        started = self.master.reactor.seconds()  # the batch's wall time starts with its ids' upload
        ids_file = uses_tests_file(settings.test_command)
        if ids_file and not await self._send_text(workdir, tests_path, batch_ids_text(tests)):
            problem = f"could not write the batch's tests file {tests_path} on the worker"
            self._hand_in(session, batch, [], problem, None)
            return
        cmd = remotecommand.RemoteShellCommand(
            workdir, argv, env=settings.env, timeout=settings.timeout_s, logEnviron=False
        )
        # What Buildbot writes to twistd.log for this command (three times): not a thousand ids.
        cmd.fake_command = [*argv[:2], f"<batch {batch.id}: {len(tests)} tests>"]
        cmd.useLog(self.stdio, False)
        cancel_if_obsolete = self._canceller(session, batch, cmd)
        session.listeners.append(cancel_if_obsolete)
        try:
            await self.runCommand(cmd)
        finally:
            session.listeners.remove(cancel_if_obsolete)
        if session.batch_obsolete(batch.id):
            self._drop_obsolete(session, batch)
            return
        data, problem = await self._fetch_report(workdir, report_path, settings.max_report_bytes)
        wall_s = self.master.reactor.seconds() - started
        results: list[JUnitTestResult] = []
        if data is not None:
            try:
                results = await threads.deferToThread(
                    parse_junit_report, data, list(batch.tests), settings.max_report_bytes
                )
            except JUnitReportError as bad_report:
                problem = str(bad_report)
        self._hand_in(session, batch, results, problem, cmd.rc, wall_s)

    async def _send_text(self, workdir: str, path: str, text: str) -> bool:
        """Writes `text` to `path` (under `workdir`) on the worker: the batch's
        ids where `{tests_file}` points, the warm runner's plugin. Done or not."""
        reader = remotetransfer.StringFileReader(text.encode("utf-8"))
        args = {
            "workdir": workdir,
            "workerdest": path,
            "reader": reader,
            "maxsize": None,
            "blocksize": 64 * 1024,
            "mode": None,
        }
        cmd = remotecommand.RemoteCommand("downloadFile", args, decodeRC={0: SUCCESS})
        await self.runCommand(cmd)
        return not cmd.didFail()

    def _canceller(
        self, session: ShardSession, batch: AnyBatch, cmd: remotecommand.RemoteCommand
    ) -> Callable[[], None]:
        """Stops this batch's command once another copy has decided all its tests."""

        def cancel_if_obsolete() -> None:
            if cmd.active and not cmd.interrupted and session.batch_obsolete(batch.id):
                self.stdio.addHeader(f"batch {batch.id} finished elsewhere first: stopping this copy\n")
                cmd.interrupt("batch finished on another worker")

        return cancel_if_obsolete

    def _drop_obsolete(self, session: ShardSession, batch: AnyBatch) -> None:
        # Every test of the batch was decided by another copy: close the
        # batch; its (absent) results are ignored by the dispatcher.
        self._ran["batches"] += 1
        try:
            session.report(self._worker, batch.id, [])
        except Exception as stale:  # noqa: BLE001 - the core's InvalidStateError
            twisted_log.msg(f"RunShard: obsolete batch {batch.id} not closed: {stale}")

    def _hand_in(
        self,
        session: ShardSession,
        batch: AnyBatch,
        results: list[JUnitTestResult],
        problem: str | None,
        rc: int | None,
        wall_s: float | None = None,
    ) -> None:
        self._ran["batches"] += 1
        self._ran["tests"] += len(batch.tests)
        self._ran_ids.update(batch.tests)
        try:
            if problem is not None:
                message = f"{problem} (runner exit code {rc})"
                self.stdio.addStderr(f"batch {batch.id} failed as a whole: {message}\n")
                self._ran["failed attempts"] += len(batch.tests)
                session.report_error(self._worker, batch.id, message)
            else:
                refused = session.report(self._worker, batch.id, results, wall_s)
                if refused is not None:
                    self.stdio.addStderr(f"batch {batch.id} failed as a whole: {refused}\n")
                    self._ran["failed attempts"] += len(batch.tests)
                else:
                    self._ran["failed attempts"] += sum(not r.passed and not r.skipped for r in results)
                    self._ran["failed attempts"] += len(batch.tests) - len(results)
        except Exception as stale:  # noqa: BLE001 - the core's InvalidStateError, LookupError
            # The batch was given back meanwhile (e.g. this worker was
            # presumed lost); its results no longer count.
            twisted_log.msg(f"RunShard: results of batch {batch.id} not accepted: {stale}")
            self.stdio.addStderr(f"results of batch {batch.id} not accepted: {stale}\n")

    async def _fetch_report(
        self, workdir: str, report_path: str, max_bytes: int
    ) -> tuple[bytes, None] | tuple[None, str]:
        """(bytes, None) or (None, why the report cannot be read)."""
        writer = _BytesWriter(max_bytes)
        args = {
            "workdir": workdir,
            "workersrc": report_path,
            "writer": writer,
            "maxsize": max_bytes + 1,  # one byte more tells "too big" from "exactly at the cap"
            "blocksize": 64 * 1024,
            "keepstamp": False,
        }
        cmd = remotecommand.RemoteCommand("uploadFile", args, decodeRC={0: SUCCESS})
        cmd.useLog(self.stdio, False)
        await self.runCommand(cmd)
        if writer.overflow or writer.size > max_bytes:
            return None, f"JUnit report is over the {max_bytes} byte cap"
        if cmd.didFail():
            return None, f"no JUnit report at {report_path} (did the runner crash?)"
        return writer.data(), None

    def _result_of(self, session: ShardSession, tests: set[str] | None) -> int:
        """FAILURE if one of `tests` (None: all) failed for good, WARNINGS if one was flaky."""
        outcomes = [o for o in session.batches.outcomes() if tests is None or o.id in tests]
        # Pending counts only standalone: in a shared session another shard may still decide it.
        bad = NOT_PASSED if tests is None else (Verdict.failed,)
        failed = [o.id for o in outcomes if o.verdict in bad]
        flaky = [o.id for o in outcomes if o.verdict == Verdict.flaky]
        rescued = [o.id for o in outcomes if passed_after_a_batch_failure(o)]
        if failed:
            self._summary += "; failed: " + names(failed)
            return FAILURE
        if flaky:
            self._summary += "; flaky: " + names(flaky)
        if rescued:
            self._summary += f"; {BATCH_FAILURE_NOTE}: {names(rescued)}"
        return WARNINGS if flaky or rescued else SUCCESS

    def interrupt(self, reason: str | Failure) -> defer.Deferred:
        if self._session is not None and _connection_lost(reason):
            self._session.worker_lost(self._worker)
        return super().interrupt(reason)

    def getCurrentSummary(self) -> dict[str, str]:
        return {"step": f"shard: {self._ran['batches']} batches, {self._ran['tests']} tests"}

    def getResultSummary(self) -> dict[str, str]:
        if self._summary:
            return {"step": self._summary}
        return super().getResultSummary()
