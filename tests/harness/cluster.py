"""Real Buildbot masters and workers, and a PostgreSQL server, on this machine.

`BuildbotCluster` creates a master (its master.cfg written here) and real
buildbot-worker processes in a directory of its own, on ports chosen by the
OS, and waits for readiness through the REST API with a deadline (never a
fixed sleep). `PostgresServer` runs Debian's PostgreSQL as the `postgres`
user in a temporary directory. Used by the integration tests
(tests/buildbot/conftest.py) and by bench/shard_buildbot_bench.py.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import signal
import subprocess
import sys

from harness import local_master
from harness.local_master import free_port, wait_until

REPO = pathlib.Path(__file__).resolve().parents[2]
FIXTURE_SUITE = REPO / "tests" / "sharding_fixture_suite"
VENV_BIN = pathlib.Path(sys.executable).parent
PYTHON = sys.executable

# Seconds allowed for a master or worker to come up on a loaded 2-core box.
STARTUP_DEADLINE_S = 60
# Seconds allowed for one sharded build of the fixture suite (~6 s of sleep).
BUILD_DEADLINE_S = 120
WORKER_PASSWORD = "pass"

MASTER_CFG = """
from buildbot.plugins import schedulers, steps, util, worker
from buildbot_steps.shard import shard_builder_config

c = BuildmasterConfig = {{}}
c["title"] = "shard integration test"
c["buildbotURL"] = "http://127.0.0.1:{web_port}/"
c["protocols"] = {{"pb": {{"port": "tcp:{pb_port}:interface=127.0.0.1"}}}}
c["www"] = {{"port": "tcp:{web_port}:interface=127.0.0.1", "plugins": {{}}}}
c["db"] = {{"db_url": {db_url!r}}}
c["buildbotNetUsageData"] = None
c["workers"] = [worker.Worker(name, {password!r}) for name in {all_workers!r}]

shard_builder, shard_scheduler = shard_builder_config("tests-shard", workernames={shard_workers!r})
def tests_factory(mode):
    return util.BuildFactory([
        steps.ShardedTest(
            shard_scheduler="tests-shard",
            mode=mode,
            test_workdir={suite!r},
            discover_command=[{python!r}, "-m", "pytest", "--collect-only", "-q"],
            test_command=[{python!r}, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          "--junitxml={{junit}}", "@{{tests_file}}"],
            env={{"SHARD_FIXTURE_STATE_DIR": {state_dir!r}}},
            **{step_kwargs!r},
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


def descendants(pid: int) -> list[int]:
    """Child processes of `pid`, recursively (from /proc)."""
    found = []
    for task in pathlib.Path(f"/proc/{pid}/task").glob("*"):
        try:
            children = (task / "children").read_text().split()
        except OSError:
            continue
        for child in map(int, children):
            found.append(child)
            found.extend(descendants(child))
    return found


class BuildbotCluster:
    wait_until = staticmethod(wait_until)

    def __init__(
        self,
        root: pathlib.Path,
        shard_workers: int,
        db_url: str | None,
        step_kwargs: dict,
        suite_source: pathlib.Path = FIXTURE_SUITE,
        build_deadline_s: float = BUILD_DEADLINE_S,
    ):
        self.suite_source = suite_source
        self.build_deadline_s = build_deadline_s
        self.root = root
        self.pb_port = free_port()
        self.web_port = free_port()
        self.shard_workers = [f"shard{i}" for i in range(shard_workers)]
        self.suite = root / "suite"
        self.state_dir = root / "state"
        self.db_url = db_url or f"sqlite:///{root / 'master' / 'state.sqlite'}"
        self.step_kwargs = step_kwargs
        self.master_process: subprocess.Popen | None = None
        self.workers: dict[str, subprocess.Popen] = {}

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        shutil.copytree(self.suite_source, self.suite, ignore=shutil.ignore_patterns("__pycache__"))
        self.state_dir.mkdir()
        self._create_master()
        self.master_process = self._spawn([str(VENV_BIN / "buildbot"), "start", "--nodaemon", "master"])
        self.wait_for_api()
        for name in ["coordinator", *self.shard_workers]:
            self._start_worker(name)
        self.wait_for_workers(["coordinator", *self.shard_workers])

    def stop(self) -> None:
        for process in self.workers.values():
            self._terminate(process)
        if self.master_process is not None:
            self._terminate(self.master_process)

    def _create_master(self) -> None:
        master_dir = self.root / "master"
        self._run([str(VENV_BIN / "buildbot"), "create-master", "-q", f"--db={self.db_url}", str(master_dir)])
        (master_dir / "master.cfg").write_text(
            MASTER_CFG.format(
                web_port=self.web_port,
                pb_port=self.pb_port,
                db_url=self.db_url,
                password=WORKER_PASSWORD,
                all_workers=["coordinator", *self.shard_workers],
                shard_workers=self.shard_workers,
                suite=str(self.suite),
                python=PYTHON,
                state_dir=str(self.state_dir),
                step_kwargs=self.step_kwargs,
            )
        )

    def _start_worker(self, name: str) -> None:
        worker_dir = self.root / "workers" / name
        worker_dir.parent.mkdir(exist_ok=True)
        self._run([
            str(VENV_BIN / "buildbot-worker"), "create-worker", "-q", str(worker_dir),
            f"127.0.0.1:{self.pb_port}", name, WORKER_PASSWORD,
        ])  # fmt: skip
        self.workers[name] = self._spawn(
            [str(VENV_BIN / "buildbot-worker"), "start", "--nodaemon", str(worker_dir)]
        )

    def _spawn(self, argv: list[str]) -> subprocess.Popen:
        env = dict(os.environ, PYTHONPATH=str(REPO))
        return subprocess.Popen(
            argv, cwd=self.root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip

    def _run(self, argv: list[str]) -> None:
        env = dict(os.environ, PYTHONPATH=str(REPO))
        subprocess.run(argv, cwd=self.root, env=env, check=True, capture_output=True, timeout=120)

    @staticmethod
    def _terminate(process: subprocess.Popen) -> None:
        if process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)

    def kill_worker(self, name: str) -> None:
        """SIGKILL a worker and the commands it runs, as if its machine died."""
        process = self.workers[name]
        victims = [process.pid, *descendants(process.pid)]
        for pid in victims:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        process.wait(timeout=10)

    def worker_running(self, pid: int) -> str | None:
        """The shard worker whose command tree holds process `pid`."""
        for name in self.shard_workers:
            process = self.workers[name]
            if process.poll() is None and pid in descendants(process.pid):
                return name
        return None

    # ------------------------------------------------------------- REST API

    def api(self, path: str, body: dict | None = None):
        return local_master.call(f"http://127.0.0.1:{self.web_port}/", path, body)

    def wait_for_api(self) -> None:
        def ready():
            if self.master_process.poll() is not None:
                log = (self.root / "master" / "twistd.log").read_text()[-3000:]
                raise RuntimeError(f"master exited:\n{log}")
            try:
                return self.api("builders")
            except OSError:
                return None

        wait_until(ready, STARTUP_DEADLINE_S, "the master's REST API")

    def wait_for_workers(self, names: list[str]) -> None:
        def connected():
            workers = self.api("workers")["workers"]
            online = {w["name"] for w in workers if w["connected_to"]}
            return set(names) <= online

        wait_until(connected, STARTUP_DEADLINE_S, f"workers {names} to connect")

    def builder_id(self, name: str) -> int:
        return self.api(f"builders/{name}")["builders"][0]["builderid"]

    def force_build(self, builder: str = "tests", scheduler: str = "force") -> int:
        """Starts a build of `builder`; returns its build request id."""
        reply = self.api(
            f"forceschedulers/{scheduler}",
            {"jsonrpc": "2.0", "method": "force", "id": 1,
             "params": {"builderid": str(self.builder_id(builder))}},
        )  # fmt: skip
        _, brids = reply["result"]
        return int(next(iter(brids.values())))

    def running_build(self, brid: int) -> dict | None:
        builds = self.api(f"buildrequests/{brid}/builds")["builds"]
        return builds[0] if builds else None

    def wait_for_build(self, brid: int) -> dict:
        def finished():
            builds = self.api(f"buildrequests/{brid}/builds")["builds"]
            return next((b for b in builds if b["complete"]), None)

        build = wait_until(finished, self.build_deadline_s, f"build request {brid} to finish")
        build["properties"] = {
            k: v[0]
            for k, v in self.api(f"builds/{build['buildid']}?property=*")["builds"][0]["properties"].items()
        }
        return build

    def test_result_sets(self, buildid: int) -> list[dict]:
        return self.api(f"builds/{buildid}/test_result_sets")["test_result_sets"]

    def test_results(self, setid: int) -> list[dict]:
        return self.api(f"test_result_sets/{setid}/results")["test_results"]

    def step_log(self, buildid: int, step_name: str, log_name: str) -> str:
        steps = self.api(f"builds/{buildid}/steps")["steps"]
        step = next(s for s in steps if s["name"] == step_name)
        logs = self.api(f"steps/{step['stepid']}/logs")["logs"]
        log = next(entry for entry in logs if entry["slug"] == log_name)
        lines = self.api(f"logs/{log['logid']}/contents")["logchunks"]
        return "".join(chunk["content"] for chunk in lines)


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
