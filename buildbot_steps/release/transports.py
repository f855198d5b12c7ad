"""How commands reach a host: over ssh (the real one), or on local paths (the demo).

A transport turns "run the host script's ACTION with ARGS on HOST" and "rsync
SOURCE to HOST's staging directory" into argument vectors for the fan-out.
"""

from __future__ import annotations

import atexit
import functools
import hashlib
import os
import shlex
import shutil
import stat
import tempfile
import threading
from dataclasses import dataclass
from importlib import resources
from typing import NamedTuple

from buildbot_steps.release.inventory import (
    SAFE_OPTION_PATH,
    Host,
    InvalidInput,
    check_option_path,
    check_ssh_option,
)  # fmt: skip

# The destination a push names: the host script replaces it with the slot it
# chose (the master does not know which one that is on each host).
NEXT_SLOT_DIR = "releases/next"
# Names in a release tree that rsync never transfers: the manifest is the host
# script's word alone (host_release.sh removes them again before writing it).
MANIFEST_NAMES = (".release", ".release.tmp")
# The file, sent next to the tree, that lists every file and directory of the
# tree with its mode, and a file's size and mtime (see host_transfer.sh's
# apply_modes and changed_since_old_list); a tree must not have its own at its top.
ENTRY_LIST_NAME = ".release.list"
_control_dir_lock = threading.Lock()  # guards the lazily made shared control directory
# The host script's parts, joined in this order into the one text every host
# runs (see host_release.sh's top): the layout and actions, then the transfer.
HOST_SCRIPT_PARTS = ("host_release.sh", "host_transfer.sh")
# The last line of the joined text: the actions run only once every part's
# functions are defined.
HOST_SCRIPT_MAIN = 'main "$@"\n'
# The script's $0 when it runs as the text of `sh -c` (its words follow).
HOST_SCRIPT_NAME = "host_release"
# A unix socket path must stay under ~100 bytes and rsync splits -e on
# whitespace: a TMPDIR longer than this, or with unsafe characters, is not used.
MAX_CONTROL_BASE_LENGTH = 40
FALLBACK_CONTROL_BASE = "/tmp"
# rsync gives up on a connection silent for this long (exit 30, retried).
RSYNC_IO_TIMEOUT_S = 120
# A host silent for interval x count seconds is dropped by ssh.
SERVER_ALIVE_INTERVAL_S = 5
SERVER_ALIVE_COUNT_MAX = 3

# --- transports ------------------------------------------------------------


@functools.cache
def host_script_text() -> str:
    """The one script every host runs, over ssh or locally: its parts, then `main "$@"`.

    Without its comment lines, which are for the readers of the parts: every
    host parses the text on every push and flip (over ssh, the user's shell
    parses it as one quoted word first), and they are half its bytes.
    """
    package = resources.files("buildbot_steps.release")
    parts = [without_comment_lines(package.joinpath(part).read_text()) for part in HOST_SCRIPT_PARTS]
    return "\n".join([*parts, HOST_SCRIPT_MAIN])


def without_comment_lines(text: str) -> str:
    """`text` without the lines whose first non-blank character is `#`."""
    return "".join(line for line in text.splitlines(keepends=True) if not line.lstrip().startswith("#"))


def host_script_argv(action: str, args: list[str]) -> list[str]:
    """`sh -c TEXT host_release ACTION ARG...`: the host script as one argument
    vector (~14 kB, far below Linux's 128 kB limit on one argument)."""
    return ["sh", "-c", host_script_text(), HOST_SCRIPT_NAME, action, *args]


@dataclass(frozen=True)
class CommandSpec:
    argv: list
    stdin_data: str = ""
    parse_rsync_stats: bool = False


# One step of a push on one host: its name in reports, and its command.
PushStep = tuple[str, CommandSpec]


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
    # Reproduce owners, groups, device and special files and setuid/setgid
    # bits from the tree (rsync as root would): off unless asked for.
    preserve_privileged: bool = False

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
        # ssh takes the first value given for an option: the user's (allowed,
        # harmless) options come first, so they override our defaults.
        options: list[str] = []
        for option in self.extra_options:
            options += ["-o", option]
        options += ["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes"]
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

    def push_steps(
        self, host: Host, source: str, entry_list: str, transfer_args: list[str]
    ) -> list[PushStep]:
        """One rsync, one ssh session: the host script runs as rsync's receiving side.

        rsync starts its receiving side as `<--rsync-path> --server ...` on the
        host. That is `sh -c <the host script's text> host_release transfer ...`:
        the script takes the deploy root's lock, chooses and invalidates the
        slot, runs the receiving rsync into it and commits, so the whole push on
        the host happens under one lock, with nothing installed beforehand.
        """
        # rsync splits -e on whitespace, and the remote shell splits
        # --rsync-path: every word of both is fixed or checked, and the
        # script's text (fixed, ours) is quoted as one word.
        remote_shell = " ".join(["ssh", *self.ssh_options(host)])
        remote = f"{host.user}@{host.address}:{host.deploy_root}"
        receiver = shlex.join(host_script_argv("transfer", [host.deploy_root, *transfer_args, "--", "rsync"]))
        transfer = [
            *rsync_base(host, self.preserve_privileged), "-e", remote_shell,
            f"--rsync-path={receiver}", f"{source}/", entry_list, f"{remote}/{NEXT_SLOT_DIR}/",
        ]  # fmt: skip
        return [("transfer", CommandSpec(transfer, parse_rsync_stats=True))]


_shared_control_dir: list[str] = []


def shared_control_dir() -> str:
    """One private (0700) socket directory per process, made on first use.

    Shared by every runner of the process, so the flip after a push (another
    step, another runner) reuses the push's ssh connections. Short, because a
    unix socket path must stay under ~100 bytes.
    """
    with _control_dir_lock:
        if not _shared_control_dir:
            _shared_control_dir.append(tempfile.mkdtemp(prefix="bbcd-ssh-", dir=control_base()))
            # Masters still lingering (ControlPersist) lose their socket and
            # exit after the persist delay: nothing is left in /tmp.
            atexit.register(shutil.rmtree, _shared_control_dir[0], True)
        return _shared_control_dir[0]


def control_base() -> str:
    """The temp directory for ssh's sockets: TMPDIR when safe for rsync's -e."""
    base = tempfile.gettempdir()
    if SAFE_OPTION_PATH.match(base) and "%" not in base and len(base) <= MAX_CONTROL_BASE_LENGTH:
        return base
    return FALLBACK_CONTROL_BASE


@dataclass
class LocalTransport:
    """Deploy roots that are local paths (the embedded demo, tests)."""

    preserve_privileged: bool = False  # as SshTransport's

    def script_command(self, host: Host, action: str, args: list[str]) -> CommandSpec:
        return CommandSpec(host_script_argv(action, args))

    def command(self, host: Host, argv: list[str]) -> CommandSpec:
        return CommandSpec(host_words(host, argv))

    def push_steps(
        self, host: Host, source: str, entry_list: str, transfer_args: list[str]
    ) -> list[PushStep]:
        """The rsync, run by the host script under its lock (as over ssh, the same text)."""
        rsync = [
            *rsync_base(host, self.preserve_privileged),
            f"{source}/",
            entry_list,
            f"{host.deploy_root}/{NEXT_SLOT_DIR}/",
        ]
        transfer = host_script_argv("transfer", [host.deploy_root, *transfer_args, "--", *rsync])
        return [("transfer", CommandSpec(transfer, parse_rsync_stats=True))]


def host_words(host: Host, argv: list[str]) -> list[str]:
    """`argv` with {deploy_root} and {name} in any word replaced by the host's own."""
    if not argv or not all(isinstance(word, str) for word in argv):
        raise InvalidInput(f"host command must be a non-empty list of strings, got {argv!r}")
    return [word.replace("{deploy_root}", host.deploy_root).replace("{name}", host.name) for word in argv]


# What a tree must not carry onto a host unless preserve_privileged: rsync -a
# as root would recreate owners, device and special files, setuid/setgid bits.
UNPRIVILEGED_RSYNC_OPTIONS = ("--no-owner", "--no-group", "--no-devices", "--no-specials", "--chmod=ug-s")


def rsync_base(host: Host, preserve_privileged: bool = False) -> list[str]:
    # -a copies symlinks as symlinks (never -L: a link pointing out of the
    # tree must not pull outside files in). Never --inplace: a hard-linked
    # file shared with the live slot would be rewritten under it; rsync writes
    # a changed file to a temporary name and renames it, which breaks the link.
    # --no-perms: rsync would chmod such a shared file in place when only its
    # mode changed; the host script sets modes from the entry list instead.
    # No --link-dest: the host script hard-links the slot to the live release
    # before the rsync (host_transfer.sh, link_from_live: rsync 3.4+ would look
    # every file up in the --link-dest directory, path component by component).
    # --modify-window=-1: the quick check compares mtimes to the nanosecond
    # (receiver rsync 3.1.3+); at whole seconds, a same-size change built
    # within the second of the slot's copy would be taken for unchanged.
    base = [
        "rsync", "-a", "--no-perms", "--delete", "--modify-window=-1", "--stats",
        f"--timeout={RSYNC_IO_TIMEOUT_S}",
        *(f"--exclude=/{name}" for name in MANIFEST_NAMES),
    ]  # fmt: skip
    return base if preserve_privileged else [*base, *UNPRIVILEGED_RSYNC_OPTIONS]


class EntryList(NamedTuple):
    path: str
    # BLAKE2b-256 in hex, as the host's `b2sum -l 256` prints it: the host
    # records it in the slot's manifest without hashing the list again.
    digest: str


# The digest's size in bytes: host_release.sh's LIST_DIGEST_BITS / 8.
LIST_DIGEST_BYTES = 32


def write_entry_list(source: str, directory: str, keep_setid: bool) -> EntryList:
    """Write ENTRY_LIST_NAME into `directory`: a line "MODE SIZE MTIME PATH"
    per file and "MODE - - PATH" per directory of `source` (MODE octal as
    find's %m, MTIME in nanoseconds, "." for the top), sorted bytewise, so
    that the order is the same from push to push and rsync sends only the
    lines that changed. The manifest names at the top are left out: rsync
    never transfers them.

    Without keep_setid the setuid/setgid bits are dropped, as --chmod=ug-s does.
    """
    lines: list[bytes] = []
    top = os.fsencode(source)
    never_sent = {name.encode() for name in MANIFEST_NAMES}
    for dirpath, dirnames, filenames in os.walk(top):
        for name in [b"", *dirnames, *filenames] if dirpath == top else [*dirnames, *filenames]:
            path = os.path.join(dirpath, name) if name else dirpath
            relative = os.path.relpath(path, top)
            if b"\n" in relative:
                raise InvalidInput(
                    f"release source has a name with a newline: {os.fsdecode(relative)!r}; rename it"
                )
            if relative == ENTRY_LIST_NAME.encode():
                raise InvalidInput(
                    f"release source {source!r} has {ENTRY_LIST_NAME!r} at its top, a name the release "
                    "layout reserves; remove or rename it"
                )
            if relative in never_sent:
                continue
            info = os.lstat(path)
            mode = stat.S_IMODE(info.st_mode) & (~0 if keep_setid else ~(stat.S_ISUID | stat.S_ISGID))
            if stat.S_ISREG(info.st_mode):
                lines.append(b"%o %d %d %s" % (mode, info.st_size, info.st_mtime_ns, relative))
            elif stat.S_ISDIR(info.st_mode):
                lines.append(b"%o - - %s" % (mode, relative))
    # Sorted without their newlines: a name may hold bytes below "\n".
    lines.sort()
    text = b"".join(line + b"\n" for line in lines)
    path = os.path.join(directory, ENTRY_LIST_NAME)
    with open(path, "wb") as out:
        out.write(text)
    return EntryList(path, hashlib.blake2b(text, digest_size=LIST_DIGEST_BYTES).hexdigest())


# The transports a step or the command line may name.
TRANSPORTS = {"ssh": SshTransport, "local": LocalTransport}
