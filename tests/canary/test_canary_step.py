"""CanaryRelease under Buildbot's step test harness, after a real PushRelease,
on a real web fleet under load: results, summaries, logs and properties, and
the checks of its arguments."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from buildbot.process.results import FAILURE, SUCCESS
from buildbot.test.reactor import TestReactorMixin
from buildbot.test.steps import TestBuildStepMixin
from buildbot.test.util.config import ConfigErrorsMixin
from twisted.trial import unittest

from buildbot_steps import release
from buildbot_steps.canary import ScrapeSource, report
from buildbot_steps.canary.step import CanaryRelease, describe_metric
from buildbot_steps.release.steps import PushRelease
from harness.webfleet import BAD, CANARIES, GOOD, TEST_FLEET_SIZE, LoadGenerator, WebFleet, live_revisions

METRICS = [
    {"name": "errors", "events": "app_errors_total", "exposure": "app_requests_total", "min_effect": 0.2}
]


class CanaryStepTest(TestBuildStepMixin, TestReactorMixin, ConfigErrorsMixin, unittest.TestCase):
    timeout = 240

    def setUp(self):
        self.setup_test_reactor()
        self.setup_test_build_step()
        self.workdir = Path(tempfile.mkdtemp(prefix="bbcd-canary-"))
        self.addCleanup(shutil.rmtree, self.workdir, True)
        # Started by the tests that need live hosts; the others only read its names.
        self.fleet = WebFleet(TEST_FLEET_SIZE, self.workdir / "web")
        self.addCleanup(self.fleet.stop)
        self.hosts = [
            {
                "name": f"web{i}",
                "address": "127.0.0.1",
                "deploy_root": str(self.workdir / f"web{i}"),
                "tags": ["canary"] if i <= CANARIES else [],
            }
            for i in range(1, TEST_FLEET_SIZE + 1)
        ]

    def tree(self, name: str, behaviour: dict) -> str:
        root = self.workdir / "trees" / name
        root.mkdir(parents=True)
        (root / "behaviour.json").write_text(json.dumps(behaviour))
        return str(root)

    def canary(self, **kwargs) -> CanaryRelease:
        options = {
            "inventory": self.hosts,
            "transport": "local",
            "tag": "canary",
            "metrics": METRICS,
            "sources": ScrapeSource(
                self.fleet.metrics_urls() or "http://{address}:9100/metrics", timeout_s=2
            ),
            "baseline": 3,
            "canary_window": 10,
            "interval": 1,
            "monitor": 0,
            **kwargs,
        }
        return CanaryRelease(**options)

    async def test_a_bad_release_fails_the_step_and_is_rolled_back(self):
        self.fleet.start()
        self.hosts = self.fleet.inventory_entries(canaries=CANARIES)
        runner = release.ReleaseRunner(release.Inventory.from_entries(self.hosts), release.LocalTransport())
        runner.flip("r1", only_hosts=runner.push(self.tree("r1", GOOD), "r1").ok_hosts)
        self.setup_step(
            PushRelease(
                source=self.tree("r2", BAD),
                release_root=str(self.workdir / "trees"),
                revision="r2",
                inventory=self.hosts,
                transport="local",
            )
        )
        self.setup_step(self.canary())
        self.expect_outcome(result=SUCCESS)
        self.expect_outcome(result=FAILURE)
        with LoadGenerator(self.fleet.urls(), rate_per_host=20, duration_s=120, max_requests=5000):
            await self.run_step()
        self.assertEqual(set(live_revisions(runner).values()), {"r1"})
        props = self.build.getProperties()
        self.assertEqual(props.getProperty("canary_verdict"), "FAIL")
        self.assertEqual(props.getProperty("canary_failing_metric"), "errors")
        self.assertEqual(props.getProperty("canary_action"), "rolled back canary")
        self.assertEqual(props.getProperty("canary_hosts"), [f"web{i}" for i in range(1, CANARIES + 1)])
        self.assertGreater(props.getProperty("canary_figures")["errors"]["estimate"], 2)
        step = self.get_nth_step(1)
        summary = step.getResultSummary()["step"]
        self.assertRegex(summary, r"^canary FAIL \(canary\): rolled back canary; errors \+\d+% p=")
        samples = json.loads(step.logs["samples.json"].stdout)
        self.assertEqual(samples["format"], "buildbot-cd/canary-samples/1")
        self.assertEqual(samples["phases"][0]["looks"][-1]["verdict"], "FAIL")
        self.assertIn("roll back canary", [e["what"] for e in samples["events"]])
        self.assertIn("web1", step.logs["actions"].stdout)
        html = report.render(samples, step._outcome)  # what the `report` log holds
        self.assertEqual(html.count("<svg"), len(METRICS))
        for text in ("flip canary", "roll back canary", "decision", "always-valid p", "time since the step"):
            self.assertIn(text, html)
        # The deciding look host by host: every canary named in the table with its rate.
        hosts_table = html[html.index('<table class="hosts"') :]
        self.assertIn("events / exposure = rate", hosts_table)
        for name in props.getProperty("canary_hosts"):
            self.assertRegex(hosts_table, rf"<td>{name}</td><td>canary</td><td>[\d.]+ / [\d.]+ = ")

    def test_describe_metric(self):
        count = {"name": "errors", "status": "TESTED", "kind": "COUNT", "estimate": 2.8, "p_value": 0.0004}
        self.assertEqual(describe_metric(count), "errors +180% p=0.0004")
        latency = {
            "name": "latency",
            "status": "TESTED",
            "kind": "CONTINUOUS",
            "estimate": 12.5,
            "p_value": 0.2,
        }
        self.assertEqual(describe_metric(latency, "ms"), "latency +12.5 ms p=0.2")

    def test_static_arguments_are_validated(self):
        with self.assertRaisesConfigError("give exactly one of"):
            self.canary(metrics=[{"name": "errors"}])
        with self.assertRaisesConfigError("on_inconclusive must be one of"):
            self.canary(on_inconclusive="shrug")
        with self.assertRaisesConfigError("sampling interval"):
            self.canary(interval=0)
        with self.assertRaisesConfigError("alpha"):
            self.canary(alpha=2.0)
        # What the judge refuses is refused here, not after the canary flip.
        with self.assertRaisesConfigError("max_missing_fraction"):
            self.canary(max_missing_fraction=1.5)
        with self.assertRaisesConfigError("min_hosts_per_arm"):
            self.canary(min_hosts_per_arm=0)
        with self.assertRaisesConfigError("min_hosts_per_arm must be an integer"):
            self.canary(min_hosts_per_arm=2.5)
        with self.assertRaisesConfigError("max_missing_fraction must be a number"):
            self.canary(max_missing_fraction=None)
