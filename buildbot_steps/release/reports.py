"""What a run reports, per host and in all, read from the engine's results and
the host script's output: the words an operator reads in a refusal or a failure."""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field

from buildbot_steps.release.inventory import Host

# host_release.sh's exit code when another run holds the deploy root's lock.
EXIT_HOST_BUSY = 6
BUSY_LINE = re.compile(r"busy since=(\S+) what=(\S+)")
# The holding master's UTC time, as runner.owner_word writes it (the script
# takes it from the owner word: no `date` process on every host).
SINCE_WORD = re.compile(r"^(\d{4})(\d\d)(\d\d)T(\d\d)(\d\d)(\d\d)Z$")
COMMITTED_LINE = re.compile(r"^host_release: committed (slot=\d+ seq=\d+)$", re.MULTILINE)
NO_SPACE_TEXT = "No space left on device"
# host_release.sh's die: why the script refused or stopped (a missing tool, a
# `current` it does not recognise...); its other lines are a commit or a note.
SCRIPT_STOP_LINE = re.compile(r"^host_release: (?!committed |note: )(.+)$", re.MULTILINE)
# The fan-out's note for each retry of a step (cpp/src/fanout.cpp, schedule_retry).
RETRY_NOTE = re.compile(r"^\[fanout\] step \d+ exited -?\d+, a transient code: retry", re.MULTILINE)
BYTE_UNITS = ("bytes", "KB", "MB", "GB", "TB")


class HostState(enum.StrEnum):
    """How a host's run ended: the fan-out engine's words (HostResult.status)."""

    OK = "ok"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    SKIPPED = "skipped"
    CANCELLED = "cancelled"


# What a host that printed nothing on stderr is told, by how its run ended.
STATE_ERRORS = {
    HostState.TIMED_OUT: "host timeout",
    HostState.SKIPPED: "skipped: failure budget exhausted",
    HostState.CANCELLED: "cancelled",
}


@dataclass
class HostReport:
    host: str
    status: HostState
    exit_code: int = -1
    attempts: int = 0  # commands started, every step's first run and its retries
    retries: int = 0  # re-runs of a step after a transient failure
    failed_step: str | None = None
    error: str = ""
    duration_s: float = 0.0
    bytes_sent: int = 0
    details: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == HostState.OK


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
            f"{len(self.failed_hosts)} failed, {human_bytes(self.bytes_sent)} sent, {self.duration_s:.1f} s"
        )

    def to_text(self) -> str:
        lines = [
            self.summary(),
            f"{'host':<20} {'status':<10} {'step':<9} {'exit':>4} {'retries':>7} {'secs':>7} {'bytes':>12}  "
            "detail",
        ]
        for h in self.hosts:
            detail = h.error or " ".join(f"{k}={v}" for k, v in h.details.items() if not isinstance(v, dict))
            lines.append(
                f"{h.host:<20} {h.status:<10} {h.failed_step or '-':<9} {h.exit_code:>4} {h.retries:>7} "
                f"{h.duration_s:>7.2f} {h.bytes_sent:>12}  {detail}"
            )
            lines.extend(slot_lines(h.details))
        return "\n".join(lines) + "\n"


def slot_lines(details: dict) -> list[str]:
    """A status report's slots, one indented line each, the live one marked."""
    slots = details.get("slots")
    if not isinstance(slots, dict):
        return []
    lines = []
    for slot in sorted(
        slots, key=lambda name: (not name.isdigit(), int(name) if name.isdigit() else 0, name)
    ):
        fields = " ".join(f"{k}={v}" for k, v in slots[slot].items() if v != "")
        marker = "  (live)" if slot == details.get("live") else ""
        lines.append(f"    slot {slot}: {fields}{marker}")
    return lines


def human_bytes(count: int) -> str:
    """12345678 -> '11.8 MB' (powers of 1024; whole bytes below 1 KB)."""
    value, unit = float(count), BYTE_UNITS[0]
    for unit in BYTE_UNITS:
        if value < 1024 or unit == BYTE_UNITS[-1]:
            break
        value /= 1024
    return f"{count} bytes" if unit == BYTE_UNITS[0] else f"{value:.1f} {unit}"


def retries_of(result, steps: int) -> int:
    """Re-runs among a host's commands: `attempts` counts every command started.

    A host that finished, or failed at a known step, ran each step up to it
    once plus its retries; otherwise (timed out, cancelled) the fan-out's
    retry notes in its log are counted.
    """
    if HostState(result.status) == HostState.OK:
        return max(0, result.attempts - steps)
    if 0 <= result.failed_step < steps:
        return max(0, result.attempts - (result.failed_step + 1))
    return len(RETRY_NOTE.findall(result.stderr_tail))


def parse_key_values(line: str) -> dict:
    return dict(word.split("=", 1) for word in line.split() if "=" in word)


def parse_status(stdout: str) -> dict:
    """host_release.sh status output -> {"live", "live_revision", "live_complete", "slots"}."""
    live, slots, current = None, {}, {}
    for line in stdout.splitlines():
        fields = parse_key_values(line)
        if line.startswith("live="):
            live = fields.get("live") or None
            # A `current` the host script does not recognise (made by hand): see host_release.sh.
            current = {"current": fields["current"]} if "current" in fields else {}
        elif "slot" in fields:
            slots[fields.pop("slot")] = fields
    live_slot = slots.get(live, {}) if live is not None else {}
    return {
        "live": live,
        "live_revision": live_slot.get("revision"),
        "live_complete": live_slot.get("state") == "complete",
        **current,
        "slots": slots,
    }


def last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""


def busy_message(host: Host, stderr: str) -> str | None:
    """host_release.sh's lock refusal, named by host and deploy root."""
    found = BUSY_LINE.search(stderr)
    if found is None:
        return None
    since, what = found.groups()
    stamp = SINCE_WORD.match(since)
    if stamp:
        since = "{}-{}-{} {}:{}:{} UTC".format(*stamp.groups())
    parts = what.split("/")
    if len(parts) == 4:
        what = f"{parts[0]} {parts[1]} from {parts[2]} pid {parts[3]}"
    return f"another deploy holds {host.name}:{host.deploy_root} since {since} ({what})"


def failure_message(result, host: Host) -> str:
    stderr = result.stderr_tail
    # Exit code EXIT_HOST_BUSY from a script step; inside the transfer, rsync's
    # own code (the protocol stream ended): the script's line says it either way.
    busy = busy_message(host, stderr)
    if busy:
        return busy
    # rsync's receiver (or the script's mv) says ENOSPC; what reaches the end
    # of stderr is often the sender's "broken pipe", which explains nothing.
    if NO_SPACE_TEXT in stderr:
        return f"no space left on {host.name}:{host.deploy_root}"
    # Inside the transfer, what ends stderr is rsync's "protocol data stream" line.
    stops = SCRIPT_STOP_LINE.findall(stderr)
    if stops:
        return f"{host.name}: {stops[-1]}"
    return last_line(stderr) or STATE_ERRORS.get(HostState(result.status), f"exit code {result.exit_code}")


def host_report(result, step_names, host: Host) -> HostReport:
    failed = result.failed_step if 0 <= result.failed_step < len(step_names) else None
    report = HostReport(
        host=result.host,
        status=HostState(result.status),
        exit_code=result.exit_code,
        attempts=result.attempts,
        retries=retries_of(result, len(step_names)),
        failed_step=step_names[failed] if failed is not None else None,
        duration_s=result.duration_s,
        bytes_sent=result.bytes_sent,
    )
    if report.ok:
        report.details = {"stdout": result.stdout_tail, "stderr": result.stderr_tail}
    else:
        report.error = failure_message(result, host)
    return report
