"""A fleet of real sshd hosts on loopback addresses, for tests and benchmarks.

Plain module (no pytest import), shared by the tests and bench/:

    from harness import sshd_hosts
    ...
    with SshdFleet(20, workdir) as fleet:
        fleet.hosts[0].address, .port, .deploy_root
        fleet.identity_file, fleet.known_hosts
        fleet.inventory_entries()   # [{"name", "address", "port", "user", "deploy_root"}]
        fleet.kill(host); fleet.restart(host); fleet.freeze(host); fleet.thaw(host)
        fleet.mount_tmpfs(host, "1m")

Each host is `/usr/sbin/sshd -D -e -f <its config>` listening on its own
address 127.0.0.<k> (k from 2 upward) and on a port the OS picked, with its own
ed25519 host key and deploy root. One client key is authorized on every host,
and a known_hosts file lists every host key, so clients can (and must) run with
StrictHostKeyChecking=yes.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

SSHD = "/usr/sbin/sshd"
SSH_KEYGEN = "ssh-keygen"
# sshd refuses to start without its privilege-separation directory.
PRIVSEP_DIR = Path("/run/sshd")
FIRST_HOST_OCTET = 2  # 127.0.0.1 stays for everything else on the machine
MAX_HOSTS = 250  # the last octet runs out at 254
# A session's PATH after a test's stand-ins: sshd's own default.
SYSTEM_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
# Generous: 20+ sshd processes start at once on 2 cores.
READY_TIMEOUT_S = 30.0
READY_POLL_S = 0.02
STOP_GRACE_S = 5.0
SSH_BANNER_PREFIX = b"SSH-"

SSHD_CONFIG_TEMPLATE = """\
ListenAddress {address}:{port}
HostKey {host_key}
AuthorizedKeysFile {authorized_keys}
PidFile none
StrictModes no
UsePAM no
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
# ControlMaster multiplexes several sessions over one connection, and a
# fan-out opens many connections at once: raise sshd's small defaults.
MaxSessions 64
MaxStartups 200:30:400
SetEnv SHLVL=1
LogLevel {log_level}
"""


class HarnessError(RuntimeError):
    """The fleet could not be started or changed."""


@dataclass
class SshdHost:
    index: int
    address: str
    port: int
    directory: Path  # config, host key and log of this host
    deploy_root: Path
    process: subprocess.Popen | None = None
    tmpfs_mounted: bool = False

    @property
    def name(self) -> str:
        return f"host{self.index:02d}"

    @property
    def config_file(self) -> Path:
        return self.directory / "sshd_config"

    @property
    def log_file(self) -> Path:
        return self.directory / "sshd.log"


@dataclass
class SshdFleet:
    """Start `count` sshd hosts under `workdir`; stop them on exit."""

    count: int
    workdir: Path
    user: str = "root"
    hosts: list[SshdHost] = field(default_factory=list)
    # VERBOSE logs every session ("Starting session: ..."): see sessions().
    log_level: str = "ERROR"

    def __post_init__(self) -> None:
        if not 1 <= self.count <= MAX_HOSTS:
            raise HarnessError(f"host count must be 1..{MAX_HOSTS}, got {self.count}")
        self.workdir = Path(self.workdir)
        self.identity_file = self.workdir / "client_key"
        self.known_hosts = self.workdir / "known_hosts"
        self.authorized_keys = self.workdir / "authorized_keys"

    # -- lifecycle -------------------------------------------------------

    def __enter__(self) -> SshdFleet:
        self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def start(self) -> None:
        try:
            PRIVSEP_DIR.mkdir(mode=0o755, exist_ok=True)
            self.workdir.mkdir(parents=True, exist_ok=True)
            self._make_client_key()
            self.hosts = [self._make_host(i) for i in range(self.count)]
            self._write_known_hosts()
            # Start all, then wait for all: 20 hosts take about as long as one.
            for host in self.hosts:
                self._spawn(host)
            self._wait_all_ready(self.hosts)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        for host in self.hosts:
            self._terminate(host)
        for host in self.hosts:
            self.unmount_tmpfs(host)

    # -- faults ----------------------------------------------------------

    def kill(self, host: SshdHost) -> None:
        """SIGKILL the host's sshd and every session it started: a crash."""
        if host.process is None:
            return
        for pid in [*descendant_pids(host.process.pid), host.process.pid]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        host.process.wait()
        host.process = None

    def restart(self, host: SshdHost) -> None:
        self.kill(host)
        self._spawn(host)
        self._wait_all_ready([host])

    def set_session_env(self, host: SshdHost, env: dict[str, str]) -> None:
        """Restart the host with `env` in every session's environment (sshd's
        SetEnv, which overrides sshd's own PATH): e.g. a PATH that puts a
        test's stand-in for a command first."""
        lines = [line for line in host.config_file.read_text().splitlines() if not line.startswith("SetEnv ")]
        # One line: sshd keeps the first SetEnv it reads and ignores the others.
        lines.append(" ".join(["SetEnv SHLVL=1", *(f"{name}={value}" for name, value in env.items())]))
        host.config_file.write_text("\n".join(lines) + "\n")
        self.restart(host)

    def put_stand_in(self, host: SshdHost, directory: Path, name: str, script: str) -> Path:
        """The executable `directory`/`name` (the text `script`), first on the
        PATH of every session of the host (restarted): a test's stand-in for a
        command the host script runs."""
        directory.mkdir(parents=True, exist_ok=True)
        command = directory / name
        command.write_text(script)
        command.chmod(0o755)
        self.set_session_env(host, {"PATH": f"{directory}:{SYSTEM_PATH}"})
        return command

    def freeze(self, host: SshdHost) -> None:
        """SIGSTOP the host's sshd and its sessions: connections hang, nothing answers."""
        for pid in [host.process.pid, *descendant_pids(host.process.pid)]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)

    def thaw(self, host: SshdHost) -> None:
        for pid in [host.process.pid, *descendant_pids(host.process.pid)]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)

    def mount_tmpfs(self, host: SshdHost, size: str) -> None:
        """Make the host's deploy root a tiny filesystem (size like "2m")."""
        host.deploy_root.mkdir(parents=True, exist_ok=True)
        run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(host.deploy_root)])
        host.tmpfs_mounted = True

    def unmount_tmpfs(self, host: SshdHost) -> None:
        if host.tmpfs_mounted:
            # Lazy: a session killed a moment ago may still hold a file open.
            subprocess.run(["umount", "-l", str(host.deploy_root)], check=False)
            host.tmpfs_mounted = False

    def session_pids(self, host: SshdHost, command: str | None = None) -> list[int]:
        """Processes running for this host's clients, optionally by name ("rsync")."""
        pids = descendant_pids(host.process.pid) if host.process else []
        return [p for p in pids if command is None or process_name(p) == command]

    # -- what clients need -----------------------------------------------

    def sessions(self, host: SshdHost) -> list[str]:
        """The sessions (commands, shells, subsystems) this host's sshd has started so
        far, one log line each; needs log_level="VERBOSE"."""
        if self.log_level != "VERBOSE":
            raise HarnessError("sessions() needs SshdFleet(log_level='VERBOSE')")
        return [line for line in host.log_file.read_text().splitlines() if "Starting session: " in line]

    def inventory_entries(self, hosts: list[SshdHost] | None = None) -> list[dict]:
        return [
            {
                "name": h.name,
                "address": h.address,
                "port": h.port,
                "user": self.user,
                "deploy_root": str(h.deploy_root),
            }
            for h in (self.hosts if hosts is None else hosts)
        ]

    def ssh_argv(self, host: SshdHost, *command: str) -> list[str]:
        return [
            "ssh", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
            "-o", f"UserKnownHostsFile={self.known_hosts}", "-o", "IdentitiesOnly=yes",
            "-i", str(self.identity_file), "-p", str(host.port),
            f"{self.user}@{host.address}", *command,
        ]  # fmt: skip

    # -- internals -------------------------------------------------------

    def _make_client_key(self) -> None:
        self.identity_file.unlink(missing_ok=True)
        run(
            [
                SSH_KEYGEN,
                "-q",
                "-t",
                "ed25519",
                "-N",
                "",
                "-C",
                "sshd_hosts-client",
                "-f",
                str(self.identity_file),
            ]
        )
        shutil.copyfile(f"{self.identity_file}.pub", self.authorized_keys)

    def _make_host(self, index: int) -> SshdHost:
        address = f"127.0.0.{FIRST_HOST_OCTET + index}"
        directory = self.workdir / f"sshd{index:02d}"
        directory.mkdir(parents=True, exist_ok=True)
        host = SshdHost(
            index, address, free_port(address), directory, self.workdir / "roots" / f"host{index:02d}"
        )
        host.deploy_root.mkdir(parents=True, exist_ok=True)
        host_key = directory / "ssh_host_ed25519_key"
        host_key.unlink(missing_ok=True)
        run([SSH_KEYGEN, "-q", "-t", "ed25519", "-N", "", "-C", host.name, "-f", str(host_key)])
        host.config_file.write_text(
            SSHD_CONFIG_TEMPLATE.format(
                address=address,
                port=host.port,
                host_key=host_key,
                authorized_keys=self.authorized_keys,
                log_level=self.log_level,
            )
        )
        return host

    def _write_known_hosts(self) -> None:
        lines = []
        for host in self.hosts:
            key_type, key = (host.directory / "ssh_host_ed25519_key.pub").read_text().split()[:2]
            lines.append(f"[{host.address}]:{host.port} {key_type} {key}\n")
        self.known_hosts.write_text("".join(lines))

    def _spawn(self, host: SshdHost) -> None:
        with open(host.log_file, "ab") as log:
            host.process = subprocess.Popen(
                [SSHD, "-D", "-e", "-f", str(host.config_file)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                # Own process group: a test's Ctrl-C does not hit the hosts first.
                start_new_session=True,
                preexec_fn=die_with_parent if threading.current_thread() is threading.main_thread() else None,
            )  # fmt: skip

    def _wait_all_ready(self, hosts: list[SshdHost]) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        pending = list(hosts)
        while pending:
            for host in list(pending):
                if host.process.poll() is not None:
                    raise HarnessError(f"sshd for {host.name} exited: {host.log_file.read_text()[-2000:]}")
                if banner_ready(host.address, host.port):
                    pending.remove(host)
            if pending and time.monotonic() > deadline:
                raise HarnessError(f"sshd not ready in {READY_TIMEOUT_S}s: {[h.name for h in pending]}")
            if pending:
                time.sleep(READY_POLL_S)  # polling interval under a deadline

    def _terminate(self, host: SshdHost) -> None:
        process = host.process
        if process is None:
            return
        children = descendant_pids(process.pid)
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGCONT)  # a frozen sshd cannot handle SIGTERM
            process.terminate()
        try:
            process.wait(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        # Sessions outlive their listener: end them so no ssh client hangs.
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        host.process = None


PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def die_with_parent() -> None:
    """In the child before exec: SIGTERM when the thread that started us dies,
    so a killed test run leaves no sshd behind. Only used for hosts started by
    the main thread: another thread may end before the fleet does."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def banner_ready(address: str, port: int) -> bool:
    """True once sshd answers with its version banner: it is serving."""
    try:
        with socket.create_connection((address, port), timeout=1.0) as conn:
            return conn.recv(4).startswith(SSH_BANNER_PREFIX)
    except OSError:
        return False


def free_port(address: str) -> int:
    """A port the OS considers free on `address` (each host has its own address)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((address, 0))
        return sock.getsockname()[1]


def descendant_pids(root_pid: int) -> list[int]:
    """All processes below root_pid, from /proc (children first found, then theirs)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        # The command name may contain spaces; the ppid follows its ')'.
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    found, queue = [], [root_pid]
    while queue:
        for child in children.get(queue.pop(), []):
            found.append(child)
            queue.append(child)
    return found


def process_name(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


def run(argv: list[str]) -> None:
    result = subprocess.run(argv, capture_output=True, text=True)
    if result.returncode != 0:
        raise HarnessError(f"{argv[0]} failed ({result.returncode}): {result.stderr.strip()}")
