"""Real Buildbot masters and workers, and a PostgreSQL server, on this machine.

`BuildbotCluster` is a harness.local_master.LocalMaster whose master.cfg
(written here) runs the fixture suite with ShardedTest on a coordinator and
shard workers. `PostgresServer` runs Debian's PostgreSQL as the `postgres`
user in a temporary directory. Used by the integration tests
(tests/buildbot/conftest.py) and by bench/shard_buildbot_bench.py.
"""

from __future__ import annotations

import pathlib
import shutil
import subprocess
import sys
from collections.abc import Sequence

from harness.fixture_suite import FIXTURE_SUITE
from harness.local_master import WORKER_PASSWORD, LocalMaster, free_port

PYTHON = sys.executable

# Seconds allowed for one sharded build of the fixture suite (~6 s of sleep).
BUILD_DEADLINE_S = 120

MASTER_CFG = """
from buildbot.plugins import schedulers, steps, util, worker
from buildbot_steps.shard import shard_builder_config

c = BuildmasterConfig = {{}}
c["title"] = "shard integration test"
c["buildbotURL"] = "http://127.0.0.1:{web_port}/"
c["protocols"] = {{"pb": {{"port": "tcp:{pb_port}:interface=127.0.0.1"}}}}
c["www"] = {{"port": "tcp:{web_port}:interface=127.0.0.1", "plugins": {www_plugins!r}}}
c["db"] = {{"db_url": {db_url!r}}}
c["buildbotNetUsageData"] = None
c["workers"] = [worker.Worker(name, {password!r}) for name in {all_workers!r}]

shard_builder, shard_scheduler = shard_builder_config("tests-shard", workernames={shard_workers!r})
def tests_factory(mode, **extra):
    return util.BuildFactory([
        steps.ShardedTest(
            shard_scheduler="tests-shard",
            mode=mode,
            test_workdir={suite!r},
            discover_command=[{python!r}, "-m", "pytest", "--collect-only", "-q"],
            test_command=[{python!r}, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          "--junitxml={{junit}}", "@{{tests_file}}"],
            env={{"SHARD_FIXTURE_STATE_DIR": {state_dir!r}}},
            # The warm runner is for dynamic runs (a static shard is one batch).
            **{{k: v for k, v in {step_kwargs!r}.items() if mode == "dynamic" or k != "warm_runner"}},
            **extra,
        ),
    ])

c["builders"] = [
    util.BuilderConfig(name="tests", workernames=["coordinator"], factory=tests_factory("dynamic")),
    util.BuilderConfig(name="tests-static", workernames=["coordinator"], factory=tests_factory("static")),
    shard_builder,
]
c["schedulers"] = [
    schedulers.ForceScheduler(name="force", builderNames=["tests"]),
    schedulers.ForceScheduler(name="force-static", builderNames=["tests-static"]),
    shard_scheduler,
]
"""


class BuildbotCluster(LocalMaster):
    """A master (master.cfg above) with a coordinator and `shard_workers` shard
    workers, running the fixture suite (or `suite_source`) with ShardedTest."""

    def __init__(
        self,
        root: pathlib.Path,
        shard_workers: int,
        db_url: str | None,
        step_kwargs: dict,
        suite_source: pathlib.Path = FIXTURE_SUITE,
        build_deadline_s: float = BUILD_DEADLINE_S,
        www_plugins: dict | None = None,
    ):
        self.suite_source = suite_source
        self.suite = root / "suite"
        self.state_dir = root / "state"
        self.shard_workers = [f"shard{i}" for i in range(shard_workers)]
        db_url = db_url or f"sqlite:///{root / 'master' / 'state.sqlite'}"
        web_port, pb_port = free_port(), free_port()
        master_cfg = MASTER_CFG.format(
            web_port=web_port,
            pb_port=pb_port,
            db_url=db_url,
            password=WORKER_PASSWORD,
            all_workers=["coordinator", *self.shard_workers],
            shard_workers=self.shard_workers,
            suite=str(self.suite),
            python=PYTHON,
            state_dir=str(self.state_dir),
            step_kwargs=step_kwargs,
            www_plugins=www_plugins or {},
        )
        super().__init__(root, master_cfg, ["coordinator", *self.shard_workers], web_port=web_port,
                         pb_port=pb_port, db_url=db_url, build_deadline_s=build_deadline_s)  # fmt: skip

    def start(self) -> None:
        shutil.copytree(self.suite_source, self.suite, ignore=shutil.ignore_patterns("__pycache__"))
        self.state_dir.mkdir()
        super().start()

    def worker_running(self, pid: int, among: Sequence[str] | None = None) -> str | None:
        """The shard worker whose command tree holds process `pid`."""
        return super().worker_running(pid, among if among is not None else self.shard_workers)

    def force_build(self, builder: str = "tests", scheduler: str = "force") -> int:
        """Starts a build of `builder`; returns its build request id."""
        return self.force(scheduler, builder)


# ---------------------------------------------------------------- PostgreSQL


class PostgresServer:
    def __init__(self, root: pathlib.Path):
        self.root = root
        self.port = free_port()
        self.data_dir = root / "pgdata"
        self.socket_dir = root / "sockets"
        self.bin_dir = self._find_bin_dir()

    @staticmethod
    def _find_bin_dir() -> pathlib.Path:
        candidates = sorted(pathlib.Path("/usr/lib/postgresql").glob("*/bin/initdb"))
        if not candidates:
            raise RuntimeError("Debian's postgresql package is not installed (run `make deps`)")
        return candidates[-1].parent

    def _as_postgres(self, argv: list[str]) -> None:
        subprocess.run(
            ["runuser", "-u", "postgres", "--", *argv], check=True, capture_output=True, timeout=120
        )

    def start(self) -> str:
        self.root.chmod(0o755)
        self.socket_dir.mkdir()
        shutil.chown(self.socket_dir, "postgres")
        self.data_dir.mkdir()
        shutil.chown(self.data_dir, "postgres")
        self._as_postgres(
            [str(self.bin_dir / "initdb"), "-D", str(self.data_dir), "-A", "trust", "-U", "postgres"]
        )
        self._as_postgres([
            str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), "-w", "-t", "60",
            "-l", str(self.data_dir / "server.log"),
            "-o", f"-p {self.port} -k {self.socket_dir} -c listen_addresses=127.0.0.1",
            "start",
        ])  # fmt: skip
        self._as_postgres([
            str(self.bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres",
            "buildbot",
        ])  # fmt: skip
        # psycopg2 (installed) rather than SQLAlchemy 2's default driver, psycopg 3.
        return f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/buildbot"

    def stop(self) -> None:
        subprocess.run(
            ["runuser", "-u", "postgres", "--", str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir),
             "-m", "fast", "-w", "stop"],
            capture_output=True, timeout=60,
        )  # fmt: skip
