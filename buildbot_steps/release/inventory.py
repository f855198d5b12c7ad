"""What the release engine trusts and checks: hosts, the inventory, selections.

The inventory (JSON, a list of hosts or {"defaults": {...}, "hosts": [...]})
is trusted configuration, but every value in it that reaches a command line
is still checked here against a narrow pattern, so a typo cannot become a
shell word or a path outside the deploy root.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from buildbot_steps.errors import CdError, InvalidInputError, InvalidStateError

DEFAULT_SLOTS = 5  # IMVU's five copies; enough for live + rollback target + spares
MIN_SLOTS = 3  # live, its rollback target, and one to transfer into
MAX_SLOTS = 100
DEFAULT_SSH_PORT = 22
DEFAULT_USER = "root"
# Values that reach a remote shell or rsync's -e splitting: no whitespace,
# quotes, globs or shell metacharacters, so they mean the same after any split.
# Always used with fullmatch: with match, "$" also matches before a final
# newline, and "host\n" would pass as a host name.
SAFE_WORD = re.compile(r"^[A-Za-z0-9._/-]+$")
SAFE_HOST = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?$")
SAFE_USER = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")
SAFE_TAG = re.compile(r"^[A-Za-z0-9_.-]+$")
# Also allows '%' for ssh's ControlPath tokens (%C); ssh expands them itself.
SAFE_OPTION_PATH = re.compile(r"^/[A-Za-z0-9._/%+-]*$")
SSH_OPTION = re.compile(r"^[A-Za-z]+=[A-Za-z0-9._,@/+-]+$")
# The ssh options configuration may add: tuning of the connection, nothing
# that runs a command, reaches another host, or loosens host-key checking or
# authentication (deny by default; lower case, as ssh compares them).
ALLOWED_SSH_OPTIONS = frozenset({
    "addressfamily", "ciphers", "compression", "connectionattempts", "connecttimeout",
    "hostkeyalgorithms", "ipqos", "kexalgorithms", "loglevel", "macs", "pubkeyacceptedalgorithms",
    "rekeylimit", "serveralivecountmax", "serveraliveinterval", "tcpkeepalive",
})  # fmt: skip
# A deploy root is emptied and rewritten: never the root nor a system directory.
SYSTEM_DIRECTORIES = frozenset({
    "/", "/bin", "/boot", "/dev", "/etc", "/home", "/lib", "/lib32", "/lib64", "/libx32", "/media",
    "/mnt", "/opt", "/proc", "/root", "/run", "/sbin", "/srv", "/sys", "/tmp", "/usr", "/var",
    "/usr/bin", "/usr/lib", "/usr/local", "/usr/sbin", "/usr/share", "/var/lib", "/var/log",
})  # fmt: skip
MAX_WORD_LENGTH = 255

ReleaseError = CdError
InvalidInput = InvalidInputError  # the name the release engine's callers know


class DeployInProgress(InvalidStateError):
    """Another push, flip or rollback is running on the same hosts."""


# --- validation ------------------------------------------------------------


def check_slots(value: object) -> int:
    """A number of release slots per host, within MIN_SLOTS..MAX_SLOTS."""
    if isinstance(value, bool) or not isinstance(value, int) or not MIN_SLOTS <= value <= MAX_SLOTS:
        raise InvalidInput(f"slots must be an integer {MIN_SLOTS}..{MAX_SLOTS}, got {value!r}")
    return value


def check_word(value, what: str) -> str:
    """A value that will travel as one argument to a remote shell."""
    text = str(value)
    if (
        not SAFE_WORD.fullmatch(text)
        or text.startswith("-")
        or ".." in text.split("/")
        or len(text) > MAX_WORD_LENGTH
    ):
        raise InvalidInput(
            f"{what}: unsafe value {text!r} (allowed: letters, digits, '._/-'; no leading '-', no '..')"
        )
    return text


def check_deploy_root(value, what: str) -> str:
    root = check_word(value, what)
    if not root.startswith("/"):
        raise InvalidInput(f"{what}: deploy root must be an absolute path, got {root!r}")
    normalized = "/" + "/".join(part for part in root.split("/") if part not in ("", "."))
    if normalized in SYSTEM_DIRECTORIES:
        raise InvalidInput(
            f"{what}: deploy root {root!r} is a system directory; use a directory of its own, e.g. /srv/app"
        )
    return normalized


def check_option_path(value, what: str) -> str:
    text = str(value)
    if not SAFE_OPTION_PATH.fullmatch(text) or ".." in text.split("/"):
        raise InvalidInput(
            f"{what}: must be an absolute path without spaces or shell characters, got {text!r}"
        )
    return text


def check_ssh_option(value) -> str:
    """One `Key=Value` ssh option, its key from ALLOWED_SSH_OPTIONS."""
    text = str(value)
    if not SSH_OPTION.fullmatch(text):
        raise InvalidInput(f"ssh option {text!r}: expected Key=Value of letters, digits and '._,@/+-'")
    key = text.split("=", 1)[0]
    if key.lower() not in ALLOWED_SSH_OPTIONS:
        raise InvalidInput(
            f"ssh option {key!r} is not allowed; allowed: {', '.join(sorted(ALLOWED_SSH_OPTIONS))} "
            "(host keys, identity and connection sharing have options of their own)"
        )
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
    if not SAFE_HOST.fullmatch(address) or len(address) > MAX_WORD_LENGTH:
        raise InvalidInput(f"{label}: unsafe or missing host address {address!r}")
    label = f"{label} ({address})"
    name = str(merged.get("name", address))
    if not SAFE_TAG.fullmatch(name):
        raise InvalidInput(f"{label}: unsafe host name {name!r}")
    port = merged.get("port", DEFAULT_SSH_PORT)
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise InvalidInput(f"{label}: port must be an integer 1..65535, got {port!r}")
    user = str(merged.get("user", DEFAULT_USER))
    if not SAFE_USER.fullmatch(user):
        raise InvalidInput(f"{label}: unsafe user name {user!r}")
    if "deploy_root" not in merged:
        raise InvalidInput(f"{label}: missing deploy_root")
    root = check_deploy_root(merged["deploy_root"], f"{label} deploy_root")
    tags = merged.get("tags", [])
    if not isinstance(tags, (list, tuple)) or not all(
        isinstance(t, str) and SAFE_TAG.fullmatch(t) for t in tags
    ):
        raise InvalidInput(f"{label}: tags must be a list of simple words, got {tags!r}")
    return Host(name, address, port, user, root, frozenset(tags))


@dataclass(frozen=True)
class Inventory:
    hosts: tuple

    @classmethod
    def from_entries(cls, entries: Sequence[dict], source: str = "inventory", defaults: dict | None = None):
        """From master.cfg: [{"address", "port", "user", "deploy_root", "tags", "name"}]."""
        if not isinstance(entries, (list, tuple)):
            raise InvalidInput(f"{source}: expected a list of hosts, got {type(entries).__name__}")
        if defaults is not None and not isinstance(defaults, dict):
            raise InvalidInput(f"{source}: defaults must be a mapping of host fields")
        hosts = tuple(host_from_entry(e, f"{source} entry {i}", defaults) for i, e in enumerate(entries))
        if not hosts:
            raise InvalidInput(f"{source}: no hosts")
        seen: set[str] = set()
        targets: dict[tuple, str] = {}
        for host in hosts:
            if host.name in seen:
                raise InvalidInput(f"{source}: duplicate host name {host.name!r}")
            seen.add(host.name)
            target = (host.address, host.port, host.deploy_root)
            if target in targets:
                raise InvalidInput(
                    f"{source}: hosts {targets[target]!r} and {host.name!r} are the same deploy root "
                    f"{host.address}:{host.port}:{host.deploy_root}; remove one"
                )
            targets[target] = host.name
        return cls(hosts)

    @classmethod
    def from_file(cls, path) -> Inventory:
        """JSON: a list of hosts, or {"defaults": {...}, "hosts": [...]}."""
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except OSError as error:
            raise InvalidInput(f"inventory {path}: {error.strerror}") from None
        except (ValueError, RecursionError) as error:  # bad JSON or UTF-8, huge numbers, deep nesting
            raise InvalidInput(f"inventory {path}: not valid JSON: {type(error).__name__}: {error}") from None
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
        if self.count is not None and (
            isinstance(self.count, bool) or not isinstance(self.count, int) or self.count < 1
        ):
            raise InvalidInput(f"host count must be a positive integer, got {self.count!r}")
        if self.fraction is not None and not (
            isinstance(self.fraction, (int, float)) and 0 < self.fraction <= 1
        ):
            raise InvalidInput(f"host fraction must be in (0, 1], got {self.fraction!r}")
        if self.tag is not None and not SAFE_TAG.fullmatch(str(self.tag)):
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
