"""PushRelease, FlipRelease, RollbackRelease under Buildbot's step test harness.

The hosts are local deploy roots (the "local" transport): these tests are
about the steps (rendering, validation, results, logs, properties); the
transport and the faults are covered over ssh in test_release.py.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from buildbot.process.properties import Property
from buildbot.process.results import CANCELLED, FAILURE, SUCCESS, WARNINGS
from buildbot.test.reactor import TestReactorMixin
from buildbot.test.steps import TestBuildStepMixin
from buildbot.test.util.config import ConfigErrorsMixin
from twisted.trial import unittest

from buildbot_steps import release
from buildbot_steps.release.steps import FlipRelease, PushRelease, RollbackRelease

HOSTS = 4
SIZE = r"(\d+ bytes|\d+\.\d (KB|MB))"  # release.human_bytes


def summary_of(text: str) -> dict[str, str]:
    """A step's summary: the build's ends with a period (Buildbot joins them with spaces)."""
    return {"step": text, "build": f"{text}."}


class StoppedAfterFirstHost(PushRelease):
    """A push whose build is stopped (Buildbot calls interrupt()) once the first host is done."""

    def _progress_from_thread(self, host_report, done: int, total: int, failed: int) -> None:
        super()._progress_from_thread(host_report, done, total, failed)
        if done == 1:
            self.interrupt("stopped by the operator")


class ReleaseStepsTest(TestBuildStepMixin, TestReactorMixin, ConfigErrorsMixin, unittest.TestCase):
    def setUp(self):
        self.setup_test_reactor()
        self.setup_test_build_step()
        self.workdir = Path(tempfile.mkdtemp(prefix="bbcd-steps-"))
        self.addCleanup(shutil.rmtree, self.workdir, True)
        self.release_root = self.workdir / "releases"
        self.tree = self.release_root / "tree"
        (self.tree / "app").mkdir(parents=True)
        (self.tree / "app/version.txt").write_text("r1\n")
        self.hosts = [
            {
                "name": f"h{i}",
                "address": "localhost",
                "deploy_root": str(self.workdir / f"root{i}"),
                "tags": ["canary"] if i == 0 else [],
            }
            for i in range(HOSTS)
        ]

    def summary(self, index: int) -> str:
        return self.get_nth_step(index).getResultSummary()["step"]

    def common(self, **kwargs):
        return {"inventory": self.hosts, "transport": "local", **kwargs}

    def push_options(self, **kwargs):
        return self.common(release_root=str(self.release_root), **kwargs)

    def live_revisions(self):
        runner = release.ReleaseRunner(release.Inventory.from_entries(self.hosts), release.LocalTransport())
        return [h.details["live_revision"] for h in runner.status().hosts]

    async def test_push_then_canary_flip_then_all_then_rollback(self):
        self.setup_step(PushRelease(source=str(self.tree), revision="r1", build="7", **self.push_options()))
        self.setup_step(FlipRelease(tag="canary", **self.common()))
        self.setup_step(FlipRelease(**self.common()))
        self.expect_outcome(result=SUCCESS)
        self.expect_outcome(result=SUCCESS)
        self.expect_outcome(result=SUCCESS)
        # (expect_property is checked after every step: read them at the end)
        # None: the push's summary is checked below (what rsync sent is not fixed).
        self.expect_result_summary(
            None, summary_of("flip r1: 1/1 hosts ok"), summary_of("flip r1: 4/4 hosts ok")
        )
        await self.run_step()
        # What was sent depends on rsync's protocol: only its form is fixed.
        self.assertRegex(self.summary(0), rf"^push r1: 4/4 hosts ok, {SIZE} sent$")
        self.assertEqual(self.build.getProperties().getProperty("revision"), "r1")  # the UI's column
        self.assertEqual(self.live_revisions(), ["r1"] * HOSTS)
        self.assertIn("h3", self.get_nth_step(0).logs["hosts"].stdout)
        props = self.build.getProperties()
        self.assertEqual(props.getProperty("release_pushed_hosts"), ["h0", "h1", "h2", "h3"])
        self.assertEqual(props.getProperty("release_revision"), "r1")
        self.assertEqual(props.getProperty("release_push_hosts_ok"), HOSTS)
        self.assertEqual(props.getProperty("release_push_hosts_failed"), 0)
        self.assertGreater(props.getProperty("release_push_bytes_sent"), 0)
        self.assertEqual(props.getProperty("release_flip_hosts_ok"), HOSTS)

    async def test_rollback_returns_to_previous_release(self):
        runner = release.ReleaseRunner(release.Inventory.from_entries(self.hosts), release.LocalTransport())
        for revision in ("r1", "r2"):
            runner.flip(revision, only_hosts=runner.push(self.tree, revision).ok_hosts)
        self.setup_step(RollbackRelease(revision="r2", **self.common()))
        self.expect_outcome(result=SUCCESS)
        self.expect_property("release_rollback_hosts_ok", HOSTS, "ReleaseStep")
        self.expect_result_summary(summary_of("rollback of r2: 4/4 hosts ok"))
        await self.run_step()
        self.assertIn(" retries ", self.get_nth_step(0).logs["hosts"].stdout.splitlines()[1])
        self.assertEqual(self.live_revisions(), ["r1"] * HOSTS)

    async def test_a_host_that_fails_makes_the_push_fail_and_is_not_flipped(self):
        blocker = self.workdir / "not-a-dir"
        blocker.write_text("a file where a directory should be")
        self.hosts[2]["deploy_root"] = str(blocker / "root")
        self.setup_step(PushRelease(source=str(self.tree), revision="r1", retries=0, **self.push_options()))
        self.setup_step(FlipRelease(**self.common()))
        self.expect_outcome(result=FAILURE)
        self.expect_outcome(result=SUCCESS)
        self.expect_result_summary(None, summary_of("flip r1: 3/3 hosts ok"))
        await self.run_step()
        self.assertRegex(self.summary(0), rf"^push r1: 3/4 hosts ok, {SIZE} sent, failed: h2$")
        props = self.build.getProperties()
        self.assertEqual(props.getProperty("release_pushed_hosts"), ["h0", "h1", "h3"])
        self.assertEqual(props.getProperty("release_push_hosts_failed"), 1)
        self.assertEqual(self.live_revisions(), ["r1", "r1", None, "r1"])

    async def test_a_stopped_build_cancels_the_hosts_not_done_and_says_so(self):
        # One host at a time; the build is stopped as the first host reports.
        self.setup_step(
            StoppedAfterFirstHost(source=str(self.tree), revision="r1", concurrency=1, **self.push_options())
        )
        self.expect_outcome(result=CANCELLED)
        await self.run_step()
        self.assertRegex(self.get_nth_step(0).logs["hosts"].stdout, r"h3 +cancelled")
        self.assertRegex(self.summary(0), rf"^push r1: 1/4 hosts ok, {SIZE} sent, failed: h1, h2, h3$")
        self.assertEqual(self.build.getProperties().getProperty("release_pushed_hosts"), ["h0"])

    async def test_tolerated_failures_give_warnings(self):
        self.hosts[1]["deploy_root"] = "/proc/no-such-place"
        self.setup_step(
            PushRelease(
                source=str(self.tree), revision="r1", retries=0, tolerate_failures=1, **self.push_options()
            )
        )
        self.expect_outcome(result=WARNINGS)
        await self.run_step()

    async def test_flip_without_a_push_is_a_clear_failure(self):
        self.setup_step(FlipRelease(revision="r1", **self.common()))
        self.expect_outcome(result=FAILURE)
        await self.run_step()
        self.assertIn("run PushRelease first", self.get_nth_step(0).logs["error"].stdout)

    async def test_rendered_revision_is_checked_at_run_time(self):
        self.setup_step(PushRelease(source=str(self.tree), revision=Property("evil"), **self.push_options()))
        self.build.setProperty("evil", "x; rm -rf /", "test")
        self.expect_outcome(result=FAILURE)
        await self.run_step()
        self.assertIn("unsafe value", self.get_nth_step(0).logs["error"].stdout)

    def test_static_arguments_are_validated(self):
        with self.assertRaisesConfigError("inventory is required"):
            PushRelease(source="/x", revision="r1", release_root="/srv/builds")
        with self.assertRaisesConfigError("PushRelease: source"):
            PushRelease(**self.push_options())
        with self.assertRaisesConfigError("PushRelease: release_root is required"):
            PushRelease(source="/x", revision="r1", **self.common())
        with self.assertRaisesConfigError("PushRelease: release_root is required"):
            PushRelease(source="/x", revision="r1", release_root="relative/dir", **self.common())
        with self.assertRaisesConfigError("inventory entry 1: unsafe or missing host address 'bad;host'"):
            FlipRelease(
                inventory=[self.hosts[0], {"address": "bad;host", "deploy_root": "/srv"}], transport="local"
            )
        with self.assertRaisesConfigError("host count must be a positive integer"):
            FlipRelease(count=0, **self.common())
        with self.assertRaisesConfigError("by count or by fraction, not both"):
            FlipRelease(count=1, fraction=0.5, **self.common())
        with self.assertRaisesConfigError("transport must be one of"):
            FlipRelease(inventory=self.hosts, transport="ftp")
        with self.assertRaisesConfigError("concurrency"):
            FlipRelease(concurrency=0, **self.common())
        with self.assertRaisesConfigError("revision: unsafe value"):
            RollbackRelease(revision="$(reboot)", **self.common())


class ReleaseRootTest(TestBuildStepMixin, TestReactorMixin, unittest.TestCase):
    """PushRelease pushes nothing from outside its release root, however the path is spelled."""

    def setUp(self):
        self.setup_test_reactor()
        self.setup_test_build_step()
        self.workdir = Path(tempfile.mkdtemp(prefix="bbcd-root-"))
        self.addCleanup(shutil.rmtree, self.workdir, True)
        self.release_root = self.workdir / "releases"
        (self.release_root / "r1").mkdir(parents=True)
        (self.release_root / "r1" / "index.html").write_text("r1\n")
        # What must never reach a host: the master's own directory.
        self.secret = self.workdir / "master"
        self.secret.mkdir()
        (self.secret / "state.sqlite").write_text("the master's database\n")
        self.deploy_root = self.workdir / "host"
        self.hosts = [{"name": "h0", "address": "localhost", "deploy_root": str(self.deploy_root)}]

    async def push(self, source: str, result: int) -> str:
        self.setup_step(PushRelease(
            source=source, revision="r1", inventory=self.hosts, transport="local",
            release_root=str(self.release_root),
        ))  # fmt: skip
        self.expect_outcome(result=result)
        await self.run_step()
        logs = self.get_nth_step(0).logs
        return logs["error"].stdout if "error" in logs else ""

    def assert_nothing_pushed(self):
        self.assertEqual(list(self.deploy_root.rglob("state.sqlite")), [])
        self.assertFalse(
            (self.deploy_root / "releases").exists() and any(self.deploy_root.rglob("*.release"))
        )

    async def test_a_directory_inside_the_root_is_pushed(self):
        await self.push(str(self.release_root / "r1"), SUCCESS)
        self.assertTrue(any(self.deploy_root.rglob("index.html")))

    async def test_a_relative_name_is_taken_under_the_root(self):
        await self.push("r1", SUCCESS)
        self.assertTrue(any(self.deploy_root.rglob("index.html")))

    async def test_an_absolute_path_outside_the_root_is_refused(self):
        error = await self.push(str(self.secret), FAILURE)
        self.assertIn(f"refusing to push {str(self.secret)!r}", error)
        self.assertIn(f"not inside the release root {self.release_root}", error)
        self.assert_nothing_pushed()

    async def test_dot_dot_out_of_the_root_is_refused(self):
        error = await self.push(str(self.release_root / ".." / "master"), FAILURE)
        self.assertIn(f"resolves to {self.secret}", error)
        self.assert_nothing_pushed()

    async def test_a_symlink_inside_the_root_pointing_out_is_refused(self):
        (self.release_root / "escape").symlink_to(self.secret)
        error = await self.push(str(self.release_root / "escape"), FAILURE)
        self.assertIn(f"resolves to {self.secret}", error)
        self.assert_nothing_pushed()

    async def test_a_root_that_is_itself_a_symlink_still_confines(self):
        link_root = self.workdir / "link-root"
        link_root.symlink_to(self.release_root)
        self.setup_step(PushRelease(
            source=str(self.secret), revision="r1", inventory=self.hosts, transport="local",
            release_root=str(link_root),
        ))  # fmt: skip
        self.expect_outcome(result=FAILURE)
        await self.run_step()
        self.assert_nothing_pushed()

    async def test_the_root_itself_is_refused(self):
        error = await self.push(str(self.release_root), FAILURE)
        self.assertIn("not inside the release root", error)

    async def test_a_missing_release_directory_is_a_clear_failure(self):
        error = await self.push("r9", FAILURE)
        self.assertIn("'r9' is not a directory under", error)
