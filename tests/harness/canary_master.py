"""A real Buildbot master that deploys to a web fleet through CanaryRelease,
with logins on: for the browser tests and the README's screenshots.

    with WebFleet(TEST_FLEET_SIZE, root / "web") as fleet, CanaryMaster(root, fleet) as master:
        master.add_release("r2", GOOD)                 # a tree under the release root
        ...force "deploy" with deploy_revision=r2 (as a deployer), read the build...

The deploy builder pushes the chosen revision's tree (under the release root)
and runs the canary on the hosts tagged "canary"; the rollback builder steps
hosts live on a bad revision back. Only the deployer login may force either.
"""

from __future__ import annotations

import base64
import json
import os
import urllib.request
from pathlib import Path

from buildbot_steps import release
from harness.local_master import LocalMaster, free_port
from harness.webfleet import CANARIES, WebFleet

DEPLOYER = ("deployer", "deploy-secret")
REQUEST_TIMEOUT_S = 30
RELEASE_TIME = 1_700_000_000  # mtimes of release files: one second apart, release by release

MASTER_CFG = """
from buildbot.plugins import schedulers, steps, util, worker
from buildbot_steps.canary import ScrapeSource
from buildbot_steps.force import OwnBuildersForceScheduler

c = BuildmasterConfig = {{}}
c["title"] = "buildbot-cd canary"
c["protocols"] = {{"pb": {{"port": "tcp:0:interface=127.0.0.1"}}}}
c["buildbotURL"] = "http://127.0.0.1:{web_port}/"
c["www"] = {{"port": "tcp:{web_port}:interface=127.0.0.1", "plugins": {{}}}}
c["www"]["auth"] = util.UserPasswordAuth({logins!r})
c["www"]["authz"] = util.Authz(
    roleMatchers=[util.RolesFromUsername(roles=["deployers"], usernames={deployers!r})],
    allowRules=[util.AnyControlEndpointMatcher(role="deployers")],
)
c["db"] = {{"db_url": "sqlite:///state.sqlite"}}
c["buildbotNetUsageData"] = None
c["workers"] = [worker.LocalWorker("deployer")]
hosts = {hosts!r}
release_dir = util.Interpolate("{release_root}/%(prop:deploy_revision)s")
deploy = util.BuildFactory([
    steps.PushRelease(inventory=hosts, transport="local", source=release_dir, release_root={release_root!r},
                      revision=util.Property("deploy_revision")),
    steps.CanaryRelease(
        inventory=hosts, transport="local", tag="canary",
        sources=ScrapeSource({urls!r}, timeout_s=2),
        metrics=[{{"name": "errors", "events": "app_errors_total", "exposure": "app_requests_total",
                   "min_effect": 0.2}}],
        baseline={baseline}, canary_window={window}, interval=1, monitor=0,
    ),
])
rollback = util.BuildFactory([
    steps.RollbackRelease(inventory=hosts, transport="local", revision=util.Property("bad_revision")),
])
deploy_lock = util.MasterLock("deploy")
c["builders"] = [
    util.BuilderConfig(name="deploy", workernames=["deployer"], factory=deploy,
                       locks=[deploy_lock.access("exclusive")]),
    util.BuilderConfig(name="rollback", workernames=["deployer"], factory=rollback,
                       locks=[deploy_lock.access("exclusive")]),
]
no_source = [util.CodebaseParameter(
    "", label="",
    branch=util.FixedParameter(name="branch", default=""),
    revision=util.FixedParameter(name="revision", default=""),
    repository=util.FixedParameter(name="repository", default=""),
    project=util.FixedParameter(name="project", default=""),
)]
c["schedulers"] = [
    OwnBuildersForceScheduler(
        name="force-deploy", builderNames=["deploy"], buttonName="Deploy", label="Deploy a release",
        codebases=no_source,
        properties=[util.StringParameter(name="deploy_revision", label="Revision", required=True,
                                         regex=r"^[A-Za-z0-9._-]+$", size=40)],
    ),
    OwnBuildersForceScheduler(
        name="force-rollback", builderNames=["rollback"], buttonName="Roll back", label="Roll back",
        codebases=no_source,
        properties=[util.StringParameter(name="bad_revision", label="Bad revision", required=True,
                                         regex=r"^[A-Za-z0-9._-]+$", size=40)],
    ),
]
"""


class CanaryMaster(LocalMaster):
    """The master in `root / "master"` (LocalMaster), release trees in `root / "trees"`."""

    def __init__(self, root: Path, fleet: WebFleet, baseline_s: int = 3, window_s: int = 10):
        self.release_root = Path(root).resolve() / "trees"
        self.release_root.mkdir(parents=True, exist_ok=True)
        self.hosts = fleet.inventory_entries(canaries=CANARIES)
        web_port = free_port()
        config = MASTER_CFG.format(
            web_port=web_port, logins=dict([DEPLOYER]), deployers=[DEPLOYER[0]], hosts=self.hosts,
            release_root=str(self.release_root), urls=fleet.metrics_urls(),
            baseline=baseline_s, window=window_s,
        )  # fmt: skip
        super().__init__(root, config, workers=[], local_workers=["deployer"], web_port=web_port)
        self._releases = 0

    def __enter__(self) -> CanaryMaster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def add_release(self, revision: str, behaviour: dict) -> Path:
        """A release tree for `revision` under the release root; the web server reads behaviour.json."""
        tree = self.release_root / revision
        tree.mkdir()
        (tree / "index.html").write_text(f"release {revision}\n")
        behaviour_file = tree / "behaviour.json"
        behaviour_file.write_text(json.dumps(behaviour))
        # rsync's quick check compares size and mtime: {"error_rate": 0.1} and 0.3
        # are the same size, and trees made in the same second would look alike.
        self._releases += 1
        stamp = RELEASE_TIME + self._releases
        for path in (tree / "index.html", behaviour_file):
            os.utime(path, (stamp, stamp))
        return tree

    def make_live_everywhere(self, revision: str) -> None:
        """Push and flip `revision` on every host, outside the master: the fleet's starting point."""
        runner = self.runner()
        pushed = runner.push(str(self.release_root / revision), revision)
        assert runner.flip(revision, only_hosts=pushed.ok_hosts).all_ok

    def runner(self) -> release.ReleaseRunner:
        return release.ReleaseRunner(release.Inventory.from_entries(self.hosts), release.LocalTransport())

    def force_as_deployer(self, scheduler: str, builder: str, **properties: str) -> int:
        """Force a build through the REST API with the deployer's login; its build request id."""
        token = base64.b64encode(":".join(DEPLOYER).encode()).decode()
        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor())
        # Logging in first gives the session cookie the data API's authz reads.
        login = urllib.request.Request(f"{self.url}auth/login", headers={"Authorization": f"Basic {token}"})
        opener.open(login, timeout=REQUEST_TIMEOUT_S).read()
        body = {
            "jsonrpc": "2.0", "method": "force", "id": 1,
            "params": {"builderid": str(self.builder_id(builder)), **properties},
        }  # fmt: skip
        request = urllib.request.Request(
            f"{self.url}api/v2/forceschedulers/{scheduler}",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        with opener.open(request, timeout=REQUEST_TIMEOUT_S) as response:
            reply = json.load(response)
        if "error" in reply:
            raise RuntimeError(f"force {scheduler} refused: {reply['error']}")
        return int(next(iter(reply["result"][1].values())))

    def finished_build(self, request_id: int) -> dict | None:
        """The finished build of a build request, else None (for wait_until)."""
        builds = self.api(f"buildrequests/{request_id}/builds")["builds"]
        return next((b for b in builds if b["complete"]), None)

    def build_properties(self, buildid: int) -> dict:
        return self.api(f"builds/{buildid}?property=*")["builds"][0]["properties"]
