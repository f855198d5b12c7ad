"""Release push: parallel rsync fan-out into release slots, atomic flip, rollback.

The Python side of engine 2 (DESIGN.md section 4). The per-host layout and its
operations live in one fixed POSIX sh script, `host_release.sh`, shipped with
this package; every fan-out runs through `buildbot_steps._core.Fanout`.

    inventory = Inventory.from_file("hosts.json")      # or Inventory.from_entries([...])
    runner = ReleaseRunner(inventory, SshTransport(known_hosts=..., identity_file=...))
    pushed = runner.push("/path/to/tree", revision="abc123", build="42")
    runner.flip("abc123", Selection(tag="canary"), only_hosts=pushed.ok_hosts)
    runner.flip("abc123", only_hosts=pushed.ok_hosts)   # everyone else
    runner.rollback(revision="abc123")                  # hosts live on abc123 go back
    runner.status().hosts[0].details  # {"live": "2", "live_revision": ..., "slots": {...}}

Every report is a RunReport of HostReport, one per host, in inventory order.

Serving from `current`: PHP (opcache) and similar runtimes cache compiled
files by the symlinked path, so after a flip they may keep serving the old
release; point the web server at the resolved path (nginx: `$realpath_root`
for SCRIPT_FILENAME and DOCUMENT_ROOT).

rsync decides what changed by size and mtime (its quick check), as every
rsync-based deploy does: a build must not rewrite a file with the same size
and the same mtime second. Unchanged files should keep their mtime so that
`--link-dest` can hard-link them from the live slot.

Safety of command lines: commands are argument vectors. Over ssh, the remote
side joins the words after the destination into one line for the user's
shell, so those words are fixed ones plus values checked against SAFE_WORD.
The one string that is split again is rsync's `-e` value (rsync splits it on
whitespace): it is built from fixed options and checked values only.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import math
import re
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Callable, Iterable, Iterator

from buildbot_steps import _core

# --- constants -------------------------------------------------------------

DEFAULT_SLOTS = 5  # IMVU's five copies; enough for live + rollback target + spares
MIN_SLOTS = 3  # live, its rollback target, and one to transfer into
MAX_SLOTS = 100
DEFAULT_SSH_PORT = 22
DEFAULT_USER = "root"
# Values that reach a remote shell or rsync's -e splitting: no whitespace,
# quotes, globs or shell metacharacters, so they mean the same after any split.
SAFE_WORD = re.compile(r"^[A-Za-z0-9._/-]+$")
SAFE_HOST = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?$")
SAFE_USER = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")
SAFE_TAG = re.compile(r"^[A-Za-z0-9_.-]+$")
# Also allows '%' for ssh's ControlPath tokens (%C); ssh expands them itself.
SAFE_OPTION_PATH = re.compile(r"^/[A-Za-z0-9._/%+-]*$")
SSH_OPTION = re.compile(r"^[A-Za-z]+=[A-Za-z0-9._,@/+-]+$")
# Options whose value is a command line: never from configuration.
SSH_OPTIONS_THAT_RUN_COMMANDS = {"proxycommand", "localcommand", "permitlocalcommand", "knownhostscommand", "remotecommand", "match"}
MAX_WORD_LENGTH = 255
STAGING_DIR = "releases/.incoming"
_deploy_state_lock = threading.Lock()  # guards module-level lazily made state
HOST_SCRIPT = "host_release.sh"
# rsync gives up on a connection silent for this long (exit 30, retried).
RSYNC_IO_TIMEOUT_S = 120
# A host silent for interval x count seconds is dropped by ssh.
SERVER_ALIVE_INTERVAL_S = 5
SERVER_ALIVE_COUNT_MAX = 3
# Status lists every slot; give its output room beyond the engine default.
STATUS_OUTPUT_BYTES = 64 * 1024

PUSH_STEPS = ("prepare", "transfer", "commit")


class ReleaseError(Exception):
    """Base class of errors this module raises on purpose."""


class InvalidInput(ReleaseError, ValueError):
    """Bad inventory, option or argument; the message names the culprit."""


class DeployInProgress(ReleaseError):
    """Another push, flip or rollback is running in this process."""


# --- validation ------------------------------------------------------------


def check_word(value, what: str) -> str:
    """A value that will travel as one argument to a remote shell."""
    text = str(value)
    if (
        not SAFE_WORD.match(text)
        or text.startswith("-")
        or ".." in text.split("/")
        or len(text) > MAX_WORD_LENGTH
    ):
        raise InvalidInput(f"{what}: unsafe value {text!r} (allowed: letters, digits, '._/-'; no leading '-', no '..')")
    return text


def check_deploy_root(value, what: str) -> str:
    root = check_word(value, what)
    if not root.startswith("/"):
        raise InvalidInput(f"{what}: deploy root must be an absolute path, got {root!r}")
    return root.rstrip("/") or "/"


def check_option_path(value, what: str) -> str:
    text = str(value)
    if not SAFE_OPTION_PATH.match(text) or ".." in text.split("/"):
        raise InvalidInput(f"{what}: must be an absolute path without spaces or shell characters, got {text!r}")
    return text


def check_ssh_option(value) -> str:
    """One `Key=Value` ssh option; the key may not run commands."""
    text = str(value)
    key = text.split("=", 1)[0].lower()
    if not SSH_OPTION.match(text) or key in SSH_OPTIONS_THAT_RUN_COMMANDS:
        raise InvalidInput(f"ssh option {text!r}: expected Key=Value of letters, digits and '._,@/+-'")
    return text


# --- inventory -------------------------------------------------------------


@dataclass(frozen=True)
class Host:
    name: str
    address: str
    port: int
    user: str
    deploy_root: str
    tags: frozenset = frozenset()


HOST_KEYS = {"name", "address", "port", "user", "deploy_root", "tags"}


def host_from_entry(entry: dict, label: str, defaults: dict | None = None) -> Host:
    if not isinstance(entry, dict):
        raise InvalidInput(f"{label}: expected a mapping of host fields, got {type(entry).__name__}")
    merged = {**(defaults or {}), **entry}
    unknown = set(merged) - HOST_KEYS
    if unknown:
        raise InvalidInput(f"{label}: unknown field(s) {sorted(unknown)}")
    address = str(merged.get("address", ""))
    if not SAFE_HOST.match(address) or len(address) > MAX_WORD_LENGTH:
        raise InvalidInput(f"{label}: unsafe or missing host address {address!r}")
    label = f"{label} ({address})"
    name = str(merged.get("name", address))
    if not SAFE_TAG.match(name):
        raise InvalidInput(f"{label}: unsafe host name {name!r}")
    port = merged.get("port", DEFAULT_SSH_PORT)
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise InvalidInput(f"{label}: port must be an integer 1..65535, got {port!r}")
    user = str(merged.get("user", DEFAULT_USER))
    if not SAFE_USER.match(user):
        raise InvalidInput(f"{label}: unsafe user name {user!r}")
    if "deploy_root" not in merged:
        raise InvalidInput(f"{label}: missing deploy_root")
    root = check_deploy_root(merged["deploy_root"], f"{label} deploy_root")
    tags = merged.get("tags", [])
    if isinstance(tags, str) or not all(isinstance(t, str) and SAFE_TAG.match(t) for t in tags):
        raise InvalidInput(f"{label}: tags must be a list of simple words, got {tags!r}")
    return Host(name, address, port, user, root, frozenset(tags))


@dataclass(frozen=True)
class Inventory:
    hosts: tuple

    @classmethod
    def from_entries(cls, entries: Iterable[dict], source: str = "inventory", defaults: dict | None = None):
        """From master.cfg: [{"address", "port", "user", "deploy_root", "tags", "name"}]."""
        if isinstance(entries, (str, bytes, dict)):
            raise InvalidInput(f"{source}: expected a list of hosts")
        hosts = tuple(host_from_entry(e, f"{source} entry {i}", defaults) for i, e in enumerate(entries))
        if not hosts:
            raise InvalidInput(f"{source}: no hosts")
        seen: set[str] = set()
        for host in hosts:
            if host.name in seen:
                raise InvalidInput(f"{source}: duplicate host name {host.name!r}")
            seen.add(host.name)
        return cls(hosts)

    @classmethod
    def from_file(cls, path) -> "Inventory":
        """JSON: a list of hosts, or {"defaults": {...}, "hosts": [...]}."""
        try:
            data = json.loads(Path(path).read_text())
        except OSError as error:
            raise InvalidInput(f"inventory {path}: {error.strerror}") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise InvalidInput(f"inventory {path}: not valid JSON: {error}") from None
        if isinstance(data, dict):
            unknown = set(data) - {"defaults", "hosts"}
            if unknown or not isinstance(data.get("defaults", {}), dict):
                raise InvalidInput(f"inventory {path}: expected keys 'defaults' (a mapping) and 'hosts'")
            return cls.from_entries(data.get("hosts", []), f"inventory {path}", data.get("defaults"))
        return cls.from_entries(data, f"inventory {path}")

    def names(self) -> list[str]:
        return [h.name for h in self.hosts]


@dataclass(frozen=True)
class Selection:
    """Which hosts an action takes: by names, tag, then count or fraction."""

    names: tuple | None = None
    tag: str | None = None
    count: int | None = None
    fraction: float | None = None

    def __post_init__(self):
        if self.count is not None and self.fraction is not None:
            raise InvalidInput("select hosts by count or by fraction, not both")
        if self.count is not None and (isinstance(self.count, bool) or not isinstance(self.count, int) or self.count < 1):
            raise InvalidInput(f"host count must be a positive integer, got {self.count!r}")
        if self.fraction is not None and not (isinstance(self.fraction, (int, float)) and 0 < self.fraction <= 1):
            raise InvalidInput(f"host fraction must be in (0, 1], got {self.fraction!r}")
        if self.tag is not None and not SAFE_TAG.match(str(self.tag)):
            raise InvalidInput(f"unsafe tag {self.tag!r}")

    def apply(self, hosts: Iterable[Host]) -> list[Host]:
        chosen = list(hosts)
        if self.names is not None:
            wanted = set(self.names)
            chosen = [h for h in chosen if h.name in wanted]
        if self.tag is not None:
            chosen = [h for h in chosen if self.tag in h.tags]
        if self.count is not None:
            chosen = chosen[: self.count]
        if self.fraction is not None:
            # At least one host: "10% of 5 hosts" means a canary, not nobody.
            chosen = chosen[: max(1, math.ceil(self.fraction * len(chosen)))] if chosen else []
        return chosen


ALL_HOSTS = Selection()


# --- transports ------------------------------------------------------------


def host_script_text() -> str:
    return resources.files("buildbot_steps").joinpath(HOST_SCRIPT).read_text()


def host_script_path() -> str:
    return str(resources.files("buildbot_steps").joinpath(HOST_SCRIPT))


@dataclass(frozen=True)
class CommandSpec:
    argv: list
    stdin_data: str = ""
    parse_rsync_stats: bool = False


@dataclass
class SshTransport:
    """Real hosts over OpenSSH, with strict host keys and connection reuse."""

    known_hosts: str | None = None  # None: ssh's defaults (~/.ssh/known_hosts)
    identity_file: str | None = None
    control_dir: str | None = None  # None: a private temp dir, made on first use
    connect_timeout_s: int = 10
    control_persist_s: int = 60  # keeps the flip after a push one round trip
    # More `-o Key=Value` options, e.g. ("Ciphers=aes128-gcm@openssh.com",).
    extra_options: tuple = ()

    def __post_init__(self):
        self.extra_options = tuple(check_ssh_option(o) for o in self.extra_options)
        for attr in ("known_hosts", "identity_file", "control_dir"):
            if getattr(self, attr) is not None:
                check_option_path(getattr(self, attr), f"ssh {attr}")
        for attr in ("connect_timeout_s", "control_persist_s"):
            value = getattr(self, attr)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidInput(f"ssh {attr} must be a positive integer, got {value!r}")

    def _control_dir(self) -> str:
        return self.control_dir or shared_control_dir()

    def ssh_options(self, host: Host) -> list[str]:
        options = ["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes"]
        if self.known_hosts:
            options += ["-o", f"UserKnownHostsFile={self.known_hosts}"]
        if self.identity_file:
            options += ["-o", "IdentitiesOnly=yes", "-i", self.identity_file]
        options += [
            "-o", "ControlMaster=auto",
            "-o", f"ControlPath={self._control_dir()}/%C",
            "-o", f"ControlPersist={self.control_persist_s}",
            "-o", f"ConnectTimeout={self.connect_timeout_s}",
            # A hung host (up but not answering) must end the connection: the
            # ControlPersist master holds the pipes of every session it
            # carries, so without this a killed client's output never closes.
            "-o", f"ServerAliveInterval={SERVER_ALIVE_INTERVAL_S}",
            "-o", f"ServerAliveCountMax={SERVER_ALIVE_COUNT_MAX}",
        ]  # fmt: skip
        for option in self.extra_options:
            options += ["-o", option]
        return options + ["-p", str(host.port)]

    def script_command(self, host: Host, action: str, args: list[str]) -> CommandSpec:
        # The script arrives on stdin; only fixed words and checked args are
        # on the remote command line.
        argv = ["ssh", *self.ssh_options(host), f"{host.user}@{host.address}", "sh", "-s", "--", action, *args]
        return CommandSpec(argv, stdin_data=host_script_text())

    def rsync_command(self, host: Host, source: str) -> CommandSpec:
        # rsync splits -e on whitespace: every part is fixed or checked above.
        remote_shell = " ".join(["ssh", *self.ssh_options(host)])
        destination = f"{host.user}@{host.address}:{host.deploy_root}/{STAGING_DIR}/"
        return CommandSpec([*rsync_base(host), "-e", remote_shell, f"{source}/", destination], parse_rsync_stats=True)


_shared_control_dir: list[str] = []


def shared_control_dir() -> str:
    """One private (0700) socket directory per process, made on first use.

    Shared by every runner of the process, so the flip after a push (another
    step, another runner) reuses the push's ssh connections. Short, because a
    unix socket path must stay under ~100 bytes.
    """
    with _deploy_state_lock:
        if not _shared_control_dir:
            _shared_control_dir.append(tempfile.mkdtemp(prefix="bbcd-ssh-"))
            # Masters still lingering (ControlPersist) lose their socket and
            # exit after the persist delay: nothing is left in /tmp.
            atexit.register(shutil.rmtree, _shared_control_dir[0], True)
        return _shared_control_dir[0]


@dataclass
class LocalTransport:
    """Deploy roots that are local paths (the embedded demo, tests)."""

    def script_command(self, host: Host, action: str, args: list[str]) -> CommandSpec:
        return CommandSpec(["sh", host_script_path(), action, *args])

    def rsync_command(self, host: Host, source: str) -> CommandSpec:
        return CommandSpec([*rsync_base(host), f"{source}/", f"{host.deploy_root}/{STAGING_DIR}/"], parse_rsync_stats=True)


def rsync_base(host: Host) -> list[str]:
    # -a copies symlinks as symlinks (never -L: a link pointing out of the
    # tree must not pull outside files in). Never --inplace: a hard-linked
    # file shared with the live slot would be rewritten under it. --link-dest
    # goes through `current`, which the host resolves to the live slot.
    return [
        "rsync", "-a", "--delete", "--stats", f"--timeout={RSYNC_IO_TIMEOUT_S}",
        f"--link-dest={host.deploy_root}/current",
    ]  # fmt: skip


TRANSPORTS = {"ssh": SshTransport, "local": LocalTransport}


# --- reports ---------------------------------------------------------------


@dataclass
class HostReport:
    host: str
    status: str  # ok, failed, timed_out, skipped or cancelled (the engine's words)
    exit_code: int = -1
    attempts: int = 0
    failed_step: str | None = None
    error: str = ""
    duration_s: float = 0.0
    bytes_sent: int = 0
    details: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == "ok"


@dataclass
class RunReport:
    action: str
    hosts: list
    duration_s: float = 0.0
    revision: str | None = None

    @property
    def ok_hosts(self) -> list[str]:
        return [h.host for h in self.hosts if h.ok]

    @property
    def failed_hosts(self) -> list[str]:
        return [h.host for h in self.hosts if not h.ok]

    @property
    def bytes_sent(self) -> int:
        return sum(h.bytes_sent for h in self.hosts)

    @property
    def all_ok(self) -> bool:
        return bool(self.hosts) and all(h.ok for h in self.hosts)

    def by_host(self) -> dict:
        return {h.host: h for h in self.hosts}

    def summary(self) -> str:
        what = f" {self.revision}" if self.revision else ""
        return (
            f"{self.action}{what}: {len(self.ok_hosts)}/{len(self.hosts)} hosts ok, "
            f"{len(self.failed_hosts)} failed, {self.bytes_sent} bytes sent, {self.duration_s:.1f} s"
        )

    def to_text(self) -> str:
        lines = [self.summary(), f"{'host':<20} {'status':<10} {'step':<9} {'exit':>4} {'tries':>5} {'secs':>7} {'bytes':>12}  detail"]
        for h in self.hosts:
            detail = h.error or " ".join(f"{k}={v}" for k, v in h.details.items() if not isinstance(v, dict))
            lines.append(
                f"{h.host:<20} {h.status:<10} {h.failed_step or '-':<9} {h.exit_code:>4} {h.attempts:>5} "
                f"{h.duration_s:>7.2f} {h.bytes_sent:>12}  {detail}"
            )
        return "\n".join(lines) + "\n"


def parse_key_values(line: str) -> dict:
    return dict(word.split("=", 1) for word in line.split() if "=" in word)


def parse_status(stdout: str) -> dict:
    """host_release.sh status output -> {"live", "live_revision", "live_complete", "slots"}."""
    live, slots = None, {}
    for line in stdout.splitlines():
        fields = parse_key_values(line)
        if line.startswith("live="):
            live = fields.get("live") or None
        elif "slot" in fields:
            slots[fields.pop("slot")] = fields
    live_slot = slots.get(live, {}) if live is not None else {}
    return {
        "live": live,
        "live_revision": live_slot.get("revision"),
        "live_complete": live_slot.get("state") == "complete",
        "slots": slots,
    }


def last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""


# --- the one-deploy-at-a-time lock -------------------------------------------

# (address, port, deploy_root) of every host some push/flip/rollback of this
# process is working on -> what that run is.
_busy_targets: dict[tuple, str] = {}


def deploy_target(host: Host) -> tuple:
    return (host.address, host.port, host.deploy_root)


@contextlib.contextmanager
def deploy_lock(what: str, hosts: Iterable[Host]) -> Iterator[None]:
    """One push/flip/rollback at a time over any host of `hosts`; refuse, never queue.

    Runs over disjoint inventories (staging and production) may overlap. Across
    processes and builds, the master's util.MasterLock serializes deploys (see
    master.cfg.example); this guards the CLI and direct callers.
    """
    targets = {deploy_target(h) for h in hosts}
    with _deploy_state_lock:
        busy = sorted(targets & _busy_targets.keys())
        if busy:
            raise DeployInProgress(f"refusing to {what}: {_busy_targets[busy[0]]} is running on the same hosts")
        _busy_targets.update(dict.fromkeys(targets, what))
    try:
        yield
    finally:
        with _deploy_state_lock:
            for target in targets:
                _busy_targets.pop(target, None)


def deploy_in_progress() -> bool:
    return bool(_busy_targets)


# --- the runner ----------------------------------------------------------------


@dataclass
class FanoutSettings:
    concurrency: int = 32  # pssh's default window
    host_timeout_s: float = 600.0
    max_retries: int = 2
    retry_backoff_s: float = 0.5
    max_fail_fraction: float = 1.0  # 1.0: never abort the remaining hosts

    def __post_init__(self):
        if isinstance(self.concurrency, bool) or not isinstance(self.concurrency, int) or self.concurrency < 1:
            raise InvalidInput(f"concurrency must be a positive integer, got {self.concurrency!r}")
        if not self.host_timeout_s > 0:
            raise InvalidInput(f"host timeout must be positive, got {self.host_timeout_s!r}")
        if isinstance(self.max_retries, bool) or not isinstance(self.max_retries, int) or self.max_retries < 0:
            raise InvalidInput(f"retries must be a non-negative integer, got {self.max_retries!r}")
        if not 0 <= self.max_fail_fraction <= 1:
            raise InvalidInput(f"failure budget must be in [0, 1], got {self.max_fail_fraction!r}")


# progress(host_report, done, total, failed), from the engine's thread
ProgressCallback = Callable[[HostReport, int, int, int], None]


class ReleaseRunner:
    def __init__(self, inventory: Inventory, transport=None, settings: FanoutSettings | None = None,
                 slots: int = DEFAULT_SLOTS, progress: ProgressCallback | None = None):  # fmt: skip
        if isinstance(slots, bool) or not isinstance(slots, int) or not MIN_SLOTS <= slots <= MAX_SLOTS:
            raise InvalidInput(f"slots must be an integer {MIN_SLOTS}..{MAX_SLOTS}, got {slots!r}")
        self.inventory = inventory
        self.transport = transport if transport is not None else SshTransport()
        self.settings = settings or FanoutSettings()
        self.slots = slots
        self.progress = progress
        self._fanout = None
        self._cancelled = False
        self._lock = threading.Lock()

    # -- actions ---------------------------------------------------------

    def push(self, source, revision: str, build="0", hosts: Iterable[str] | None = None) -> RunReport:
        """Transfer `source` into a fresh slot on every host (or `hosts`)."""
        source_dir = self._check_source(source)
        revision = check_word(revision, "revision")
        build = check_word(build, "build")
        now = str(int(time.time()))
        chosen = self._hosts(Selection(names=tuple(hosts)) if hosts is not None else ALL_HOSTS)

        def steps(host: Host) -> list[CommandSpec]:
            return [
                self._script(host, "prepare"),
                self.transport.rsync_command(host, source_dir),
                self._script(host, "commit", str(self.slots), revision, build, now),
            ]

        with deploy_lock(f"push {revision}", self.inventory.hosts):
            report = self._run("push", chosen, steps, PUSH_STEPS, revision)
        for host in report.hosts:
            if host.ok:
                host.details = parse_key_values(last_line(host.details.pop("stdout", "")))
        return report

    def flip(self, revision: str, selection: Selection = ALL_HOSTS, only_hosts: Iterable[str] | None = None) -> RunReport:
        """Make `revision` live on the selected hosts.

        `only_hosts` limits the flip to hosts whose push succeeded; a host
        without a complete release of `revision` refuses the flip anyway.
        """
        revision = check_word(revision, "revision")
        chosen = self._eligible(selection, only_hosts)
        with deploy_lock(f"flip {revision}", self.inventory.hosts):
            return self._simple("flip", chosen, [revision], revision)

    def rollback(self, revision: str | None = None, selection: Selection = ALL_HOSTS) -> RunReport:
        """Flip back to the recorded previous release.

        With `revision` (the bad one), only hosts live on it move; the others
        (never flipped, or already rolled back) report changed=no.
        """
        args = [check_word(revision, "revision")] if revision is not None else []
        chosen = self._eligible(selection, None)
        with deploy_lock("rollback" + (f" {revision}" if revision else ""), self.inventory.hosts):
            return self._simple("rollback", chosen, args, revision)

    def status(self, selection: Selection = ALL_HOSTS) -> RunReport:
        """What is live and what is in every slot, per host (no lock: read only)."""
        report = self._run("status", self._hosts(selection),
                           lambda h: [self._script(h, "status", str(self.slots))], ("status",), None)  # fmt: skip
        for host in report.hosts:
            stdout = host.details.pop("stdout", "")
            if host.ok:
                host.details = parse_status(stdout)
        return report

    def cancel(self) -> None:
        """Thread-safe: running transfers are killed, hosts not started are skipped."""
        with self._lock:
            self._cancelled = True
            if self._fanout is not None:
                self._fanout.cancel()

    # -- internals -------------------------------------------------------

    def _check_source(self, source) -> str:
        path = Path(source)
        if not path.is_dir():
            raise InvalidInput(f"release source {str(source)!r} is not a directory")
        # Absolute, so rsync never reads "name:path" as a remote source.
        return str(path.resolve())

    def _hosts(self, selection: Selection) -> list[Host]:
        return self._hosts_from(selection, self.inventory.hosts)

    def _eligible(self, selection: Selection, only_hosts) -> list[Host]:
        hosts = self.inventory.hosts
        if only_hosts is not None:
            allowed = set(only_hosts)
            hosts = [h for h in hosts if h.name in allowed]
        return self._hosts_from(selection, hosts)

    def _hosts_from(self, selection: Selection, hosts) -> list[Host]:
        if selection.names is not None:
            unknown = set(selection.names) - set(self.inventory.names())
            if unknown:
                raise InvalidInput(f"unknown host(s): {', '.join(sorted(unknown))}")
        return selection.apply(hosts)

    def _script(self, host: Host, action: str, *args: str) -> CommandSpec:
        return self.transport.script_command(host, action, [host.deploy_root, *args])

    def _simple(self, action: str, hosts: list[Host], args: list[str], revision) -> RunReport:
        report = self._run(action, hosts, lambda h: [self._script(h, action, *args)], (action,), revision)
        for host in report.hosts:
            stdout = host.details.pop("stdout", "")
            if host.ok:
                host.details = parse_key_values(last_line(stdout))
        return report

    def _run(self, action, hosts: list[Host], steps_for, step_names, revision) -> RunReport:
        if not hosts:
            raise InvalidInput(f"{action}: no hosts selected")
        jobs = [_core.HostJob(host=h.name, steps=[to_command(s) for s in steps_for(h)]) for h in hosts]
        options = _core.FanoutOptions(
            concurrency=self.settings.concurrency,
            host_timeout_s=float(self.settings.host_timeout_s),
            max_retries=self.settings.max_retries,
            retry_backoff_s=float(self.settings.retry_backoff_s),
            max_fail_fraction=float(self.settings.max_fail_fraction),
            output_tail_bytes=STATUS_OUTPUT_BYTES,
        )
        fanout = _core.Fanout(options)
        with self._lock:
            if self._cancelled:
                fanout.cancel()
            self._fanout = fanout
        started = time.monotonic()
        callback = self._progress_adapter(step_names) if self.progress else None
        try:
            results = fanout.run(jobs, callback) if callback else fanout.run(jobs)
        except ValueError as error:  # the engine's InvalidInputError
            raise InvalidInput(str(error)) from None
        finally:
            with self._lock:
                self._fanout = None
        reports = [host_report(r, step_names) for r in results]
        return RunReport(action, reports, time.monotonic() - started, revision)

    def _progress_adapter(self, step_names):
        def on_host_done(result, progress) -> None:
            self.progress(host_report(result, step_names), progress.done, progress.total, progress.failed)

        return on_host_done


def to_command(spec: CommandSpec) -> _core.Command:
    return _core.Command(argv=list(spec.argv), stdin_data=spec.stdin_data, parse_rsync_stats=spec.parse_rsync_stats)


def host_report(result, step_names) -> HostReport:
    failed = result.failed_step if 0 <= result.failed_step < len(step_names) else None
    report = HostReport(
        host=result.host,
        status=str(result.status),
        exit_code=result.exit_code,
        attempts=result.attempts,
        failed_step=step_names[failed] if failed is not None else None,
        duration_s=result.duration_s,
        bytes_sent=result.bytes_sent,
    )
    if report.ok:
        report.details = {"stdout": result.stdout_tail}
    else:
        report.error = last_line(result.stderr_tail) or {
            "timed_out": "host timeout",
            "skipped": "skipped: failure budget exhausted",
            "cancelled": "cancelled",
        }.get(report.status, f"exit code {result.exit_code}")
    return report


def make_transport(kind: str, **options):
    if kind not in TRANSPORTS:
        raise InvalidInput(f"unknown transport {kind!r} (choose from {', '.join(TRANSPORTS)})")
    try:
        return TRANSPORTS[kind](**options)
    except TypeError as error:
        raise InvalidInput(f"transport {kind}: {error}") from None
