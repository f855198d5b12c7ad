"""RunShard's warm runner: one pytest process for the shard's whole build.

The shard sends warm_pytest_plugin.py to its worker, opens a channel
(warm_channel.py) and starts the test command once, without a batch; the
plugin pulls batches through the master's web server until the dispatcher
says done, so the runner's start-up and session fixtures are paid once per
shard instead of once per batch (what Knapsack Pro's queue mode and
pytest-xdist do). Each batch keeps its timeout: past it the runner is stopped.
If the runner ends before the dispatcher is done (a crash, a timeout, a
plugin that cannot load), the batches it held fail as a whole (and are
re-run as any failed batch is), and the shard goes on batch by batch.

A straggler copy that another worker finished first runs on here (the
runner has no per-batch command to stop; such copies are made only when a
worker has nothing else to do) and its results are dropped; once every test
is decided, a runner still busy with such a copy is stopped, so that the
build does not wait for it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from buildbot.process import remotecommand
from twisted.internet.interfaces import IDelayedCall

from buildbot_steps.shard.commands import indented_after_first_line
from buildbot_steps.shard.junit import JUnitTestResult
from buildbot_steps.shard.warm_channel import (
    ASK_AGAIN,
    PLUGIN_MODULE,
    PLUGIN_SOURCE,
    QUEUE_TOKEN_ENV,
    QUEUE_URL_ENV,
    WarmChannel,
    close_channel,
    open_channel,
)  # fmt: skip

if TYPE_CHECKING:
    from buildbot_steps.shard.session import ShardSession

PYTHONPATH = "PYTHONPATH"
# A runner's "next" waits on the master at most this long before it is told to
# ask again: well within the plugin's request timeout (REQUEST_TIMEOUT_S), so
# that a runner kept waiting (for a re-run, a straggler) never gives up on a
# healthy master.
HOLD_S = 60.0


class WarmRunnerMixin:
    """RunShard's `_run_warm`; needs its `_next_batch_to_run`, `_hand_in`,
    `_drop_obsolete`, `_send_text` and `_runner_errors`."""

    async def _run_warm(
        self: Any, session: ShardSession, shard_index: int, workdir: str, reports_dir: str
    ) -> bool:
        """Runs the shard's batches in one warm runner; True if it ran until every
        test was decided, False if the shard must go on batch by batch."""
        plugin_path = self.build.path_module.join(reports_dir, f"{PLUGIN_MODULE}.py")
        if not await self._send_text(workdir, plugin_path, PLUGIN_SOURCE.read_text()):
            await self.stdio.addHeader(f"could not write {plugin_path} on the worker: batch by batch\n")
            return False
        run = _WarmRun(self, session, shard_index)
        cmd = run.command(workdir, reports_dir)
        cmd.useLog(self.stdio, False)
        open_channel(run.channel)
        session.listeners.append(run.stop_if_only_copies_left)
        try:
            await self.runCommand(cmd)
        finally:
            session.listeners.remove(run.stop_if_only_copies_left)
            close_channel(run.channel)
            run.cancel_timers()  # a lost worker raises here: no timer may outlive the command
        run.settle_unreported(cmd.rc)
        if run.channel.said_done and not run.channel.ended and not run.errors and not self.stopped:
            # The plugin always says "end" after "done": it died in its session's teardown.
            run.runner_error(f"the runner ended (exit code {cmd.rc}) in its session's teardown")
        self._runner_errors.extend(run.errors)
        if run.channel.said_done or session.batches.done():
            return True
        await self.stdio.addHeader(
            f"warm runner ended (exit code {cmd.rc}) before the shard: batch by batch\n"
        )
        return False


class _WarmRun:
    """One warm runner's life on the master: its channel and command, the
    timers of its batches, its session's teardown and its exit, and its
    errors outside any test."""

    def __init__(self, step: Any, session: ShardSession, shard_index: int):
        self.step = step
        self.session = session
        self.shard_index = shard_index
        self.timers: dict[int, IDelayedCall] = {}
        self.timed_out: set[int] = set()
        self.errors: list[str] = []  # the run's own, outside any test (ShardSession.runner_errors)
        # The session's teardown gets a batch's timeout from "done", and the
        # runner's exit another from "end".
        self.teardown_timer: IDelayedCall | None = None
        self.exit_timer: IDelayedCall | None = None
        self.cmd: remotecommand.RemoteShellCommand | None = None
        self.channel = WarmChannel(
            self.next_batch,
            self.hand_in,
            step.master.reactor.seconds,
            session.settings.max_report_bytes,
            on_end=self.session_ended,
        )

    def command(self, workdir: str, reports_dir: str) -> remotecommand.RemoteShellCommand:
        settings = self.session.settings
        # The plugin file sits in the reports directory, relative to the
        # command's working directory; the worker joins a list with os.pathsep
        # and expands ${PYTHONPATH} from its own environment.
        env = {
            **settings.env,
            PYTHONPATH: [reports_dir, settings.env.get(PYTHONPATH, "${PYTHONPATH}")],
            QUEUE_URL_ENV: settings.queue_url,
            QUEUE_TOKEN_ENV: self.channel.token,
        }
        self.cmd = remotecommand.RemoteShellCommand(
            workdir,
            list(settings.warm_command or []),
            env=env,
            timeout=None,  # each batch has its own; between batches the master decides
            logEnviron=False,  # the environment holds the shard's secret
        )
        return self.cmd

    async def next_batch(self) -> Any:
        """A request held while the shard waits: ASK_AGAIN after HOLD_S (the
        runner asks again, well within its request timeout) or once the runner
        has ended (a request it gave up on must not take a batch nobody runs).
        None ("done") starts the session teardown's timeout."""
        reactor = self.step.master.reactor
        answer_by = reactor.seconds() + HOLD_S
        batch = await self.step._next_batch_to_run(
            self.session, self.shard_index, lambda: self.channel.closed or reactor.seconds() >= answer_by
        )
        timeout_s = self.session.settings.timeout_s
        told_done = batch is None and not self.channel.closed and not self.step.stopped
        if told_done and timeout_s and self.teardown_timer is None:
            self.teardown_timer = reactor.callLater(timeout_s, self.teardown_overran)
        if batch is not None and batch is not ASK_AGAIN:
            # Not awaited: nothing may come between taking the batch and the channel recording it.
            self.step.stdio.addHeader(f"\n=== warm batch {batch.id}: {len(batch.tests)} tests\n")
            if timeout_s:
                self.timers[batch.id] = reactor.callLater(timeout_s, self.expire, batch.id)
        return batch

    def hand_in(self, batch: Any, results: list[JUnitTestResult], wall_s: float, problem: str | None) -> None:
        _cancel(self.timers.pop(batch.id, None))
        if self.session.batch_obsolete(batch.id):
            self.step._drop_obsolete(self.session, batch)
        else:
            self.step._hand_in(self.session, batch, results, problem, None, wall_s)
        self.step.updateSummary()

    def session_ended(self, after: str, error: str | None) -> None:
        """What the runner said of its session's teardown ("end")."""
        if self.teardown_timer is not None and not self.teardown_timer.active():
            return  # it said so past the timeout, which counted already
        _cancel(self.teardown_timer)
        timeout_s = self.session.settings.timeout_s
        if timeout_s:
            self.exit_timer = self.step.master.reactor.callLater(timeout_s, self.exit_overran)
        if error:
            self.runner_error(f"its session's teardown failed after {after or 'its last test'}:\n{error}")

    def teardown_overran(self) -> None:
        self._stop_overrun("its session's teardown ran over the batch timeout")

    def exit_overran(self) -> None:
        """pytest's own end (reports, a plugin's) or a thread left running held the runner."""
        self._stop_overrun("it did not exit within the batch timeout after its session ended")

    def _stop_overrun(self, what: str) -> None:
        if self.cmd is None or not self.cmd.active or self.step.stopped:
            return  # the runner has ended, or is being stopped with its build
        self.runner_error(f"{what} ({self.session.settings.timeout_s:.0f} s)")
        self._interrupt(what)

    def runner_error(self, what: str) -> None:
        """An error of the run outside any test: in no test's verdict, it fails the build."""
        text = f"shard {self.shard_index}: {what}"
        self.errors.append(text)
        self.session.runner_errors.append(text)
        self.step.stdio.addHeader(f"\n=== {indented_after_first_line(text)}\n")
        self.step.updateSummary()

    def expire(self, batch_id: int) -> None:
        self.timed_out.add(batch_id)
        self._interrupt(f"batch {batch_id} ran over its {self.session.settings.timeout_s:.0f} s timeout")

    def stop_if_only_copies_left(self) -> None:
        running = self.channel.running
        if running and self.session.batches.done() and all(self.session.batch_obsolete(i) for i in running):
            self._interrupt("every test is decided: stopping the warm runner's leftover copy")

    def _interrupt(self, why: str) -> None:
        if self.cmd is not None and self.cmd.active and not self.cmd.interrupted:
            self.step.stdio.addHeader(f"{why}\n")
            self.cmd.interrupt(why)

    def cancel_timers(self) -> None:
        for timer in [*self.timers.values(), self.teardown_timer, self.exit_timer]:
            _cancel(timer)

    def settle_unreported(self, rc: int | None) -> None:
        """After the runner ended (and cancel_timers): the batches it held and never reported."""
        for running in self.channel.running.values():
            batch = running.batch
            if self.session.batch_obsolete(batch.id):
                self.step._drop_obsolete(self.session, batch)
                continue
            why = (
                "ran over its timeout" if batch.id in self.timed_out else "was running when the runner ended"
            )
            self.step._hand_in(self.session, batch, [], f"the batch {why}", rc)
        self.channel.running.clear()


def _cancel(timer: IDelayedCall | None) -> None:
    if timer is not None and timer.active():
        timer.cancel()
