"""How commands reach a host: over ssh (the real one), or on local paths (the demo).

A transport turns "run the host script's ACTION with ARGS on HOST" and "rsync
SOURCE to HOST's staging directory" into argument vectors for the fan-out.
"""

from __future__ import annotations

import atexit
import shlex
import shutil
import tempfile
import threading
from dataclasses import dataclass
from importlib import resources

from buildbot_steps.release.inventory import (
    Host,
    InvalidInput,
    check_option_path,
    check_ssh_option,
)  # fmt: skip

STAGING_DIR = "releases/.incoming"
_control_dir_lock = threading.Lock()  # guards the lazily made shared control directory
HOST_SCRIPT = "host_release.sh"
# rsync gives up on a connection silent for this long (exit 30, retried).
RSYNC_IO_TIMEOUT_S = 120
# A host silent for interval x count seconds is dropped by ssh.
SERVER_ALIVE_INTERVAL_S = 5
SERVER_ALIVE_COUNT_MAX = 3

# --- transports ------------------------------------------------------------


def host_script_text() -> str:
    return resources.files("buildbot_steps.release").joinpath(HOST_SCRIPT).read_text()


def host_script_path() -> str:
    return str(resources.files("buildbot_steps.release").joinpath(HOST_SCRIPT))


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
        argv = [
            "ssh",
            *self.ssh_options(host),
            f"{host.user}@{host.address}",
            "sh",
            "-s",
            "--",
            action,
            *args,
        ]
        return CommandSpec(argv, stdin_data=host_script_text())

    def command(self, host: Host, argv: list[str]) -> CommandSpec:
        """A read-only command on the host (e.g. a metrics probe). The remote
        side joins the words for the user's shell, so each is quoted exactly."""
        words = host_words(host, argv)
        return CommandSpec(["ssh", *self.ssh_options(host), f"{host.user}@{host.address}", shlex.join(words)])

    def rsync_command(self, host: Host, source: str) -> CommandSpec:
        # rsync splits -e on whitespace: every part is fixed or checked above.
        remote_shell = " ".join(["ssh", *self.ssh_options(host)])
        destination = f"{host.user}@{host.address}:{host.deploy_root}/{STAGING_DIR}/"
        return CommandSpec(
            [*rsync_base(host), "-e", remote_shell, f"{source}/", destination], parse_rsync_stats=True
        )


_shared_control_dir: list[str] = []


def shared_control_dir() -> str:
    """One private (0700) socket directory per process, made on first use.

    Shared by every runner of the process, so the flip after a push (another
    step, another runner) reuses the push's ssh connections. Short, because a
    unix socket path must stay under ~100 bytes.
    """
    with _control_dir_lock:
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

    def command(self, host: Host, argv: list[str]) -> CommandSpec:
        return CommandSpec(host_words(host, argv))

    def rsync_command(self, host: Host, source: str) -> CommandSpec:
        return CommandSpec(
            [*rsync_base(host), f"{source}/", f"{host.deploy_root}/{STAGING_DIR}/"], parse_rsync_stats=True
        )


def host_words(host: Host, argv: list[str]) -> list[str]:
    """`argv` with {deploy_root} and {name} in any word replaced by the host's own."""
    if not argv or not all(isinstance(word, str) for word in argv):
        raise InvalidInput(f"host command must be a non-empty list of strings, got {argv!r}")
    return [word.replace("{deploy_root}", host.deploy_root).replace("{name}", host.name) for word in argv]


def rsync_base(host: Host) -> list[str]:
    # -a copies symlinks as symlinks (never -L: a link pointing out of the
    # tree must not pull outside files in). Never --inplace: a hard-linked
    # file shared with the live slot would be rewritten under it. --link-dest
    # goes through `current`, which the host resolves to the live slot.
    return [
        "rsync", "-a", "--delete", "--stats", f"--timeout={RSYNC_IO_TIMEOUT_S}",
        f"--link-dest={host.deploy_root}/current",
    ]  # fmt: skip


# The transports a step or the command line may name.
TRANSPORTS = {"ssh": SshTransport, "local": LocalTransport}
