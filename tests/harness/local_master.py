"""One Buildbot master and its workers on this machine, for the demo, the
integration tests and the benchmarks.

`LocalMaster` creates a master from a master.cfg (text or file) and real
buildbot-worker processes under one root directory, on ports chosen by the OS,
and waits for readiness through the REST API (`/api/v2`) with deadlines, never
a fixed sleep. The processes it starts are recorded in `root/pids.json`, so
that `stop_recorded(root)` can stop exactly those from another process
(`make demo-stop`). Subclasses (harness.cluster.BuildbotCluster,
harness.demo.DemoCluster) only say which master.cfg, environment and workers.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

REPO = Path(__file__).resolve().parents[2]
# free_port's search: above the ports only root may bind, below the ephemeral
# range; random, so that masters started one after another do not probe the
# same ports; a few tries, since other listeners hold only a handful.
FIRST_UNPRIVILEGED_PORT = 1024
LINUX_DEFAULT_EPHEMERAL = (32768, 60999)
PORT_TRIES = 100
_PORT_PICKER = random.Random()
VENV_BIN = Path(sys.executable).parent
WORKER_PASSWORD = "pass"
# Poll period of wait_until: short, since every wait is bounded by a deadline.
POLL_S = 0.2
# A GET is retried: on a swamped machine Buildbot's web server now and then
# closes a response early (IncompleteRead). A POST (it may have started a
# build) is never retried.
GET_ATTEMPTS = 3
REQUEST_TIMEOUT_S = 30
# Seconds for a master or worker to come up on a loaded 2-core box, and for
# the `buildbot create-master` / `create-worker` commands.
STARTUP_DEADLINE_S = 120
# Seconds for one build when the caller names no deadline of its own.
BUILD_DEADLINE_S = 300
# Seconds for running builds to stop, then for the processes to exit, before SIGKILL.
STOP_DEADLINE_S = 30
# Errors of a master that is not (or no longer) answering.
UNREACHABLE = (OSError, ValueError, KeyError, TypeError, http.client.HTTPException)

T = TypeVar("T")
# A decoded REST answer: Buildbot's JSON objects, as the tests read them.
Json = dict[str, Any]


class LocalMasterError(RuntimeError):
    """The master or a worker could not be created, started or driven (one line, no traceback)."""


def free_port() -> int:
    """An unused loopback port for a listener that binds it a moment later,
    taken below the kernel's ephemeral range. A port the OS picks (bind to 0)
    comes from that range, from which every outgoing connection's local port
    comes too: in the moment before the master bound it, one of the suite's
    own connections could take it ("Address already in use" at a demo
    master's start, seen once in a full run). Below the range only another
    listener can hold a port, and the bind here skips those."""
    low = ephemeral_range()[0]
    for port in _PORT_PICKER.sample(range(FIRST_UNPRIVILEGED_PORT, low), PORT_TRIES):
        with socket.socket() as sock, contextlib.suppress(OSError):
            sock.bind(("127.0.0.1", port))
            return port
    raise LocalMasterError(f"no free loopback port below {low} after {PORT_TRIES} tries")


def ephemeral_range() -> tuple[int, int]:
    """The kernel's range for outgoing connections' local ports (Linux's default if unreadable)."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return LINUX_DEFAULT_EPHEMERAL


def wait_until(predicate: Callable[[], T], deadline_s: float, what: str) -> T:
    """The first truthy value of `predicate()`; TimeoutError naming `what` past the deadline."""
    deadline = time.monotonic() + deadline_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {deadline_s:.0f} s waiting for {what}")
        time.sleep(POLL_S)


def call(base_url: str, path: str, body: dict | None = None, timeout_s: float = REQUEST_TIMEOUT_S) -> Json:
    """GET `base_url/api/v2/path`, or POST `body` as JSON; the decoded answer."""
    url = f"{base_url.rstrip('/')}/api/v2/{path}"
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    attempts = GET_ATTEMPTS if body is None else 1
    for attempt in range(1, attempts + 1):
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as response:
                return json.load(response)
        except (http.client.IncompleteRead, ConnectionResetError):
            if attempt == attempts:
                raise
            time.sleep(POLL_S)
    raise AssertionError("unreachable: the last attempt returns or raises")


def rpc(method: str, **params: str) -> dict:
    """The JSON-RPC body of a control call (force, cancel, stop) of the REST API."""
    return {"jsonrpc": "2.0", "method": method, "id": 1, "params": params}


# ------------------------------------------------------------------ processes


def descendants(pid: int) -> list[int]:
    """Child processes of `pid`, recursively (from /proc)."""
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children = (task / "children").read_text().split()
        except OSError:
            continue
        for child in map(int, children):
            found.append(child)
            found.extend(descendants(child))
    return found


# What the command line of a process we started holds: buildbot and
# buildbot-worker, or one of the harness's own (the demo's web hosts run
# harness/webserver.py, its traffic `-m harness.loadgen`).
OUR_COMMAND_MARKERS = (b"buildbot", b"harness")


def is_buildbot_process(pid: int) -> bool:
    """Alive and still a process of ours (not a pid reused by something else)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return any(marker in cmdline for marker in OUR_COMMAND_MARKERS) and not has_ended(pid)


def has_ended(pid: int) -> bool:
    """Gone, or a zombie that its parent has not reaped yet."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


def _signal(pids: Sequence[int], signum: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)


def stop_processes(pids: Sequence[int], deadline_s: float = STOP_DEADLINE_S) -> None:
    """SIGTERM the given buildbot processes, wait for them with a deadline, then SIGKILL."""
    alive = [pid for pid in pids if is_buildbot_process(pid)]
    _signal(alive, signal.SIGTERM)
    deadline = time.monotonic() + deadline_s
    while alive and time.monotonic() < deadline:
        for pid in list(alive):
            with contextlib.suppress(ChildProcessError):  # reap it if it is our child
                os.waitpid(pid, os.WNOHANG)
            if not is_buildbot_process(pid):
                alive.remove(pid)
        if alive:
            time.sleep(POLL_S)
    _signal(alive, signal.SIGKILL)


def stop_builds(url: str, reason: str) -> None:
    """Best effort: cancel pending requests and stop running builds, so the
    master can exit at once (it otherwise waits for a build whose shard
    workers are gone). Silent: the processes are stopped next anyway."""
    stop_call_timeout_s = 10  # a master that is already going away answers late or never
    try:
        for request in call(url, "buildrequests?complete=false", timeout_s=stop_call_timeout_s)[
            "buildrequests"
        ]:
            if not request["claimed"]:
                path = f"buildrequests/{request['buildrequestid']}"
                call(url, path, rpc("cancel", reason=reason), timeout_s=stop_call_timeout_s)
        for build in call(url, "builds?complete=false", timeout_s=stop_call_timeout_s)["builds"]:
            call(url, f"builds/{build['buildid']}", rpc("stop", reason=reason), timeout_s=stop_call_timeout_s)
        # A master told to exit while builds are still stopping can hang.
        wait_until(
            lambda: not call(url, "builds?complete=false", timeout_s=stop_call_timeout_s)["builds"],
            STOP_DEADLINE_S, "running builds to stop",
        )  # fmt: skip
    except (*UNREACHABLE, TimeoutError):
        pass


def recorded(root: Path) -> tuple[list[int], str | None]:
    """The process ids and the URL that a LocalMaster under `root` recorded."""
    try:
        record = json.loads((root / "pids.json").read_text())
        return [int(pid) for pid in record["pids"].values()], str(record["url"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return [], None


def stop_recorded(root: Path, reason: str = "stopped") -> int:
    """Stops the processes a LocalMaster under `root` started, possibly in
    another process (by their recorded ids); how many were running."""
    pids, url = recorded(root)
    running = [pid for pid in pids if is_buildbot_process(pid)]
    if running and url:
        stop_builds(url, reason)
    stop_processes(running)
    return len(running)


# --------------------------------------------------------------- the master


class LocalMaster:
    """A master and its workers under `root`: root/master, root/workers/<name>,
    root/logs/<process>.log, root/pids.json.

    `master_cfg` is the text of master.cfg or a file to copy; `env` the whole
    environment of every buildbot command (default: this one, with the
    repository on PYTHONPATH); `workers` the buildbot-worker processes to start;
    `local_workers` the workers that run inside the master (LocalWorker) and
    must be connected as well. `web_port` and `pb_port` default to free ports;
    pass them when master.cfg or `env` must name them.
    """

    wait_until = staticmethod(wait_until)

    def __init__(
        self,
        root: Path,
        master_cfg: str | Path,
        workers: Sequence[str],
        env: Mapping[str, str] | None = None,
        *,
        local_workers: Sequence[str] = (),
        web_port: int | None = None,
        pb_port: int | None = None,
        db_url: str | None = None,
        build_deadline_s: float = BUILD_DEADLINE_S,
    ):
        self.root = Path(root).resolve()
        self.master_dir = self.root / "master"
        self.logs_dir = self.root / "logs"
        self.master_cfg = master_cfg
        self.worker_names = list(workers)
        self.local_workers = list(local_workers)
        self.env = dict(env) if env is not None else dict(os.environ, PYTHONPATH=str(REPO))
        self.web_port = web_port or free_port()
        self.pb_port = pb_port or free_port()
        self.db_url = db_url
        self.build_deadline_s = build_deadline_s
        self.url = f"http://127.0.0.1:{self.web_port}/"
        self.pid_file = self.root / "pids.json"
        self.processes: dict[str, subprocess.Popen] = {}

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Creates and starts the master, then the workers; returns when all are connected."""
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        db_option = [f"--db={self.db_url}"] if self.db_url else []
        self._run([str(VENV_BIN / "buildbot"), "create-master", "-q", *db_option, str(self.master_dir)],
                  "buildbot create-master")  # fmt: skip
        if isinstance(self.master_cfg, Path):
            shutil.copyfile(self.master_cfg, self.master_dir / "master.cfg")
        else:
            (self.master_dir / "master.cfg").write_text(self.master_cfg)
        self._spawn("master", [str(VENV_BIN / "buildbot"), "start", "--nodaemon", str(self.master_dir)])
        self.wait_for_api()
        for name in self.worker_names:
            self._start_worker(name)
        self.wait_for_workers([*self.worker_names, *self.local_workers])

    def stop(self, reason: str = "stopped") -> None:
        """Cancels pending requests, stops running builds, then ends every process
        started here (SIGTERM, SIGKILL past the deadline)."""
        if "master" in self.processes:
            stop_builds(self.url, reason)
        stop_processes([process.pid for process in self.processes.values()])
        for process in self.processes.values():
            process.poll()  # reaped already: records the exit, no "still running" warning

    def _start_worker(self, name: str) -> None:
        worker_dir = self.root / "workers" / name
        worker_dir.parent.mkdir(exist_ok=True)
        self._run([
            str(VENV_BIN / "buildbot-worker"), "create-worker", "-q", str(worker_dir),
            f"127.0.0.1:{self.pb_port}", name, WORKER_PASSWORD,
        ], "buildbot-worker create-worker")  # fmt: skip
        self._spawn(name, [str(VENV_BIN / "buildbot-worker"), "start", "--nodaemon", str(worker_dir)])

    def _run(self, argv: list[str], what: str) -> None:
        try:
            done = subprocess.run(argv, cwd=self.root, env=self.env, capture_output=True, text=True,
                                  timeout=STARTUP_DEADLINE_S)  # fmt: skip
        except subprocess.TimeoutExpired:
            raise LocalMasterError(f"{what} did not finish within {STARTUP_DEADLINE_S} s") from None
        if done.returncode != 0:
            last = (done.stderr.strip() or done.stdout.strip()).splitlines()[-1:]
            raise LocalMasterError(f"{what} failed: {last[0] if last else f'exit code {done.returncode}'}")

    def _spawn(self, name: str, argv: list[str]) -> None:
        # A session of its own: the demo's processes outlive `make demo`, on
        # purpose, and a test can kill a worker's whole process group.
        with open(self.logs_dir / f"{name}.log", "wb") as log:
            self.processes[name] = subprocess.Popen(
                argv, cwd=self.root, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )  # fmt: skip
        self._record_pids()

    def adopt(self, name: str, process: subprocess.Popen) -> None:
        """Records a process started elsewhere (the demo's web hosts, its load
        generator), so that stop() and stop_recorded() end it too."""
        self.processes[name] = process
        self._record_pids()

    def _record_pids(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        pids = {process_name: process.pid for process_name, process in self.processes.items()}
        self.pid_file.write_text(json.dumps({"pids": pids, "url": self.url}) + "\n")

    def kill_worker(self, name: str) -> None:
        """SIGKILL a worker and the commands it runs, as if its machine died."""
        process = self.processes[name]
        _signal([process.pid, *descendants(process.pid)], signal.SIGKILL)
        process.wait(timeout=STOP_DEADLINE_S)

    def worker_running(self, pid: int, among: Sequence[str] | None = None) -> str | None:
        """The worker (of `among`, default all) whose command tree holds process `pid`."""
        for name in among if among is not None else self.worker_names:
            process = self.processes[name]
            if process.poll() is None and pid in descendants(process.pid):
                return name
        return None

    def _master_exited(self) -> str | None:
        """None while the master runs, else the last error line of its log."""
        process = self.processes.get("master")
        if process is None or process.poll() is None:
            return None
        log = self.master_dir / "twistd.log"
        lines = log.read_text(errors="replace").splitlines() if log.exists() else []
        errors = [line for line in lines if "error" in line.lower()]
        return (errors or lines or ["no log"])[-1].strip()

    # ------------------------------------------------------------- REST API

    def api(self, path: str, body: dict | None = None) -> Json:
        return call(self.url, path, body)

    def wait_for_api(self) -> None:
        def ready() -> Json | None:
            problem = self._master_exited()
            if problem is not None:
                raise LocalMasterError(
                    f"the master exited; last log line: {problem} (see {self.master_dir}/twistd.log)"
                )
            try:
                return self.api("builders")
            except UNREACHABLE:
                return None

        wait_until(ready, STARTUP_DEADLINE_S, f"the master's REST API at {self.url}")

    def wait_for_workers(self, names: Sequence[str]) -> None:
        def connected() -> bool:
            workers = self.api("workers")["workers"]
            return set(names) <= {w["name"] for w in workers if w["connected_to"]}

        wait_until(connected, STARTUP_DEADLINE_S, f"workers {', '.join(names)} to connect")

    def builder_id(self, name: str) -> int:
        builders = self.api(f"builders/{name}")["builders"]
        if not builders:
            raise LocalMasterError(f"the master has no builder {name!r}")
        return builders[0]["builderid"]

    def force(self, scheduler: str, builder: str, **params: str) -> int:
        """Starts a build through a ForceScheduler; returns its build request id."""
        body = rpc("force", builderid=str(self.builder_id(builder)), **params)
        try:
            reply = self.api(f"forceschedulers/{scheduler}", body)
        except urllib.error.HTTPError as error:
            detail = error.read().decode(errors="replace")[:300]
            raise LocalMasterError(f"forcing {builder} was refused: HTTP {error.code} {detail}") from None
        if "error" in reply:
            raise LocalMasterError(f"forcing {builder} was refused: {reply['error'].get('message')}")
        _, brids = reply["result"]
        return int(next(iter(brids.values())))

    def running_build(self, brid: int) -> Json | None:
        builds = self.api(f"buildrequests/{brid}/builds")["builds"]
        return builds[0] if builds else None

    def wait_for_build(self, brid: int, deadline_s: float | None = None) -> Json:
        """The finished build of request `brid`, with its properties as {name: value}."""

        def finished() -> Json | None:
            builds = self.api(f"buildrequests/{brid}/builds")["builds"]
            return next((b for b in builds if b["complete"]), None)

        deadline_s = deadline_s if deadline_s is not None else self.build_deadline_s
        build = wait_until(finished, deadline_s, f"build request {brid} to finish")
        properties = self.api(f"builds/{build['buildid']}?property=*")["builds"][0]["properties"]
        build["properties"] = {key: value[0] for key, value in properties.items()}
        return build

    def build_url(self, build: Json) -> str:
        return f"{self.url}#/builders/{build['builderid']}/builds/{build['number']}"

    def steps(self, buildid: int) -> list[Json]:
        return self.api(f"builds/{buildid}/steps")["steps"]

    def step_logs(self, stepid: int) -> list[Json]:
        return self.api(f"steps/{stepid}/logs")["logs"]

    def step_log(self, buildid: int, step_name: str, log_name: str) -> str:
        """The whole text of log `log_name` of step `step_name` of a build."""
        step = next(s for s in self.steps(buildid) if s["name"] == step_name)
        log = next(entry for entry in self.step_logs(step["stepid"]) if entry["slug"] == log_name)
        chunks = self.api(f"logs/{log['logid']}/contents")["logchunks"]
        return "".join(chunk["content"] for chunk in chunks)

    def test_result_sets(self, buildid: int) -> list[Json]:
        return self.api(f"builds/{buildid}/test_result_sets")["test_result_sets"]

    def test_results(self, setid: int) -> list[Json]:
        return self.api(f"test_result_sets/{setid}/results")["test_results"]
