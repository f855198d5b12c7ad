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

A batch copy made obsolete by another worker is not interrupted here (the
runner holds no per-batch command to stop); its results are dropped.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from buildbot.process import remotecommand
from twisted.internet.interfaces import IDelayedCall

from buildbot_steps.shard.junit import JUnitTestResult
from buildbot_steps.shard.warm_channel import (
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


class WarmRunnerMixin:
    """RunShard's `_run_warm`; needs its `_next_batch_to_run`, `_hand_in` and `_send_text`."""

    async def _run_warm(
        self: Any, session: ShardSession, shard_index: int, workdir: str, reports_dir: str
    ) -> bool:
        """Runs the shard's batches in one warm runner; True if it ran until the
        dispatcher said done, False if the shard must go on batch by batch."""
        settings = session.settings
        plugin_path = self.build.path_module.join(reports_dir, f"{PLUGIN_MODULE}.py")
        if not await self._send_text(workdir, plugin_path, PLUGIN_SOURCE.read_text()):
            await self.stdio.addHeader(f"could not write {plugin_path} on the worker: batch by batch\n")
            return False
        timers: dict[int, IDelayedCall] = {}
        timed_out: set[int] = set()
        cmd: remotecommand.RemoteShellCommand | None = None

        async def next_batch() -> Any:
            batch = await self._next_batch_to_run(session, shard_index)
            if batch is not None:
                await self.stdio.addHeader(f"\n=== warm batch {batch.id}: {len(batch.tests)} tests\n")
                if settings.timeout_s:
                    timers[batch.id] = self.master.reactor.callLater(settings.timeout_s, expire, batch.id)
            return batch

        def hand_in(batch: Any, results: list[JUnitTestResult], wall_s: float, problem: str | None) -> None:
            _cancel(timers.pop(batch.id, None))
            if session.batch_obsolete(batch.id):
                self._drop_obsolete(session, batch)
            else:
                self._hand_in(session, batch, results, problem, None, wall_s)
            self.updateSummary()

        def expire(batch_id: int) -> None:
            timed_out.add(batch_id)
            if cmd is not None and cmd.active:
                cmd.interrupt(f"batch {batch_id} ran over its {settings.timeout_s:.0f} s timeout")

        channel = WarmChannel(next_batch, hand_in, self.master.reactor.seconds, settings.max_report_bytes)
        cmd = remotecommand.RemoteShellCommand(
            workdir,
            list(settings.warm_command),
            env=self._warm_env(settings.env, reports_dir, settings.queue_url, channel.token),
            timeout=None,  # each batch has its own; between batches the master decides
            logEnviron=False,  # the environment holds the shard's secret
        )
        cmd.useLog(self.stdio, False)
        open_channel(channel)
        try:
            await self.runCommand(cmd)
        finally:
            close_channel(channel)
            for timer in timers.values():
                _cancel(timer)
        for running in list(channel.running.values()):
            why = (
                "ran over its timeout"
                if running.batch.id in timed_out
                else "was running when the warm runner ended"
            )
            self._hand_in(session, running.batch, [], f"the batch {why}", cmd.rc)
        if channel.said_done and not channel.running:
            return True
        await self.stdio.addHeader(
            f"warm runner ended (exit code {cmd.rc}) before the shard: batch by batch\n"
        )
        return False

    @staticmethod
    def _warm_env(env: dict[str, str], reports_dir: str, queue_url: str, token: str) -> dict[str, Any]:
        # The plugin file sits in the reports directory, relative to the
        # command's working directory; the worker joins a list with os.pathsep
        # and expands ${PYTHONPATH} from its own environment.
        return {
            **env,
            PYTHONPATH: [reports_dir, env.get(PYTHONPATH, "${PYTHONPATH}")],
            QUEUE_URL_ENV: queue_url,
            QUEUE_TOKEN_ENV: token,
        }


def _cancel(timer: IDelayedCall | None) -> None:
    if timer is not None and timer.active():
        timer.cancel()
