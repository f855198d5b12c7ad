"""`buildbot-cd push | flip | rollback | status`: the release engine for operators.

These work with the master down: everything comes from an inventory file and
options. `buildbot_steps.cli` registers them beside `plan` and `simulate`.

Exit codes: 0 every host ok, 1 some host failed, 2 bad input or refused,
130 interrupted (Ctrl-C): running transfers are cancelled at once and the
report says which hosts committed and which did not.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
from collections.abc import Callable

from buildbot_steps import release

EXIT_OK = 0
EXIT_HOST_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130  # the shell's 128 + SIGINT


def add_release_commands(subparsers) -> None:
    push = subparsers.add_parser("push", help="transfer a release tree into a free slot on every host")
    add_common_options(push)
    push.add_argument("--source", required=True, help="directory whose contents become the release")
    push.add_argument("--revision", required=True, help="revision recorded in the manifest")
    push.add_argument("--build", default="0", help="build number recorded in the manifest")
    push.add_argument("--hosts", help="comma-separated host names; default: every host of the inventory")
    push.add_argument(
        "--allow-empty", action="store_true", help="push an empty source tree (refused otherwise)"
    )
    push.add_argument(
        "--preserve-privileged", action="store_true",
        help="reproduce owners, groups, device/special files and setuid/setgid bits from the tree",
    )  # fmt: skip
    push.set_defaults(func=run_push)

    flip = subparsers.add_parser("flip", help="make a pushed revision live (atomic symlink flip)")
    add_common_options(flip)
    flip.add_argument("--revision", required=True, help="the pushed revision to make live")
    add_selection_options(flip)
    flip.set_defaults(func=run_flip)

    rollback = subparsers.add_parser("rollback", help="flip back to each host's recorded previous release")
    add_common_options(rollback)
    rollback.add_argument(
        "--revision",
        help="only hosts live on this (bad) revision move; without it every selected host steps back",
    )
    add_selection_options(rollback)
    rollback.set_defaults(func=run_rollback)

    status = subparsers.add_parser("status", help="what is live and what is in every slot, per host")
    add_common_options(status)
    add_selection_options(status)
    status.add_argument("--json", action="store_true", help="print the per-host report as JSON")
    status.set_defaults(func=run_status)


# The release's numeric settings, each an option with its type, default and help.
FANOUT_NUMBER_OPTIONS: tuple[tuple[str, type, float, str], ...] = (
    (
        "--slots", int, release.DEFAULT_SLOTS,
        f"release slots per host ({release.MIN_SLOTS}-{release.MAX_SLOTS})",
    ),
    ("--concurrency", int, release.FANOUT_DEFAULTS.concurrency, "hosts worked on at the same time"),
    ("--timeout", float, release.FANOUT_DEFAULTS.host_timeout_s, "seconds per host"),
    (
        "--retries", int, release.FANOUT_DEFAULTS.max_retries,
        "re-runs of a host's step after a transient failure (ssh or rsync connection lost)",
    ),
    (
        "--max-fail", float, release.FANOUT_DEFAULTS.max_fail_fraction,
        "abort hosts not yet started once this share of hosts failed (0..1)",
    ),
)  # fmt: skip


def add_common_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--inventory", required=True, help="JSON inventory file")
    parser.add_argument(
        "--transport",
        choices=sorted(release.TRANSPORTS),
        default="ssh",
        help="ssh to real hosts, or local for deploy roots on this machine",
    )
    parser.add_argument("--known-hosts", help="ssh known_hosts file (host keys are always checked)")
    parser.add_argument("--identity", help="ssh private key")
    parser.add_argument(
        "--ssh-option", action="append", default=[], metavar="KEY=VALUE", help="extra ssh -o option"
    )
    for flag, kind, default, text in FANOUT_NUMBER_OPTIONS:
        parser.add_argument(flag, type=kind, default=default, help=text)


def add_selection_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--hosts", help="comma-separated host names; default: every host of the inventory")
    parser.add_argument("--tag", help="only hosts with this tag (e.g. canary)")
    share = parser.add_mutually_exclusive_group()
    share.add_argument("--count", type=int, help="at most this many hosts; default: no limit")
    share.add_argument("--fraction", type=float, help="this share of the hosts (0..1], at least one")


def absolute(path: str | None) -> str | None:
    """A path given on the command line, from the current directory: ssh is
    given absolute ones (its -o options do not take a relative path)."""
    return os.path.abspath(os.path.expanduser(path)) if path else path


def runner_from(args) -> release.ReleaseRunner:
    inventory = release.Inventory.from_file(args.inventory)
    preserve = getattr(args, "preserve_privileged", False)
    if args.transport == "ssh":
        transport = release.SshTransport(
            known_hosts=absolute(args.known_hosts), identity_file=absolute(args.identity),
            extra_options=tuple(args.ssh_option), preserve_privileged=preserve,
        )  # fmt: skip
    else:
        transport = release.LocalTransport(preserve_privileged=preserve)
    settings = release.FanoutSettings(
        concurrency=args.concurrency, host_timeout_s=args.timeout,
        max_retries=args.retries, max_fail_fraction=args.max_fail,
    )  # fmt: skip
    return release.ReleaseRunner(inventory, transport, settings, args.slots, progress=print_progress)


def print_progress(host: release.HostReport, done: int, total: int, failed: int) -> None:
    note = f" ({host.error})" if host.error else ""
    print(f"[{done}/{total}, {failed} failed] {host.host}: {host.status}{note}", file=sys.stderr, flush=True)


def host_names(text: str | None):
    # Given but empty (`--hosts "$CANARY"` with CANARY unset) selects no host, which
    # is refused: never every host.
    return tuple(n for n in text.split(",") if n) if text is not None else None


def selection_from(args) -> release.Selection:
    return release.Selection(
        names=host_names(args.hosts), tag=args.tag, count=args.count, fraction=args.fraction
    )


Work = Callable[[], release.RunReport]


def run_interruptibly(runner: release.ReleaseRunner, work: Work) -> tuple[release.RunReport, bool]:
    """Run `work` in a thread; Ctrl-C cancels the fan-out and waits for its report.

    The fan-out blocks in the core for as long as the hosts take: in the main
    thread, Ctrl-C would only be seen after the last host (or its timeout).
    Returns the report and whether it was interrupted.
    """
    outcome: dict = {}
    finished = threading.Event()

    def target() -> None:
        try:
            outcome["report"] = work()
        except BaseException as error:  # handed to the main thread, raised there
            outcome["error"] = error
        finally:
            finished.set()

    worker = threading.Thread(target=target, name="buildbot-cd-fanout", daemon=True)
    worker.start()
    interrupted = False
    # Event.wait, not Thread.join: a join interrupted by Ctrl-C can leave the
    # thread looking finished while it runs (CPython gh-90882).
    while not finished.is_set():
        try:
            finished.wait()
        except KeyboardInterrupt:
            interrupted = True
            runner.cancel()  # children are killed; the report comes back promptly
    worker.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["report"], interrupted


def interrupted_summary(command: str, report: release.RunReport) -> str:
    done = ", ".join(report.ok_hosts) or "none"
    not_done = ", ".join(report.failed_hosts) or "none"
    # Over ssh a host's script runs on when its command is killed: one past
    # its transfer may still complete the slot (never live), a flip may land.
    return (
        f"buildbot-cd {command}: interrupted; done on {len(report.ok_hosts)} host(s): {done}; "
        f"not confirmed on {len(report.failed_hosts)} host(s): {not_done} "
        f"(one may have finished after the interruption: `buildbot-cd status` says where each is)"
    )


def guarded(action: Callable[[release.ReleaseRunner, argparse.Namespace], Work]):
    """Bad input -> one line on stderr and exit 2, never a traceback."""

    def run(args) -> int:
        try:
            runner = runner_from(args)
            report, interrupted = run_interruptibly(runner, action(runner, args))
        except (release.InvalidInput, release.DeployInProgress) as error:
            print(f"buildbot-cd {args.command}: {error}", file=sys.stderr)
            return EXIT_BAD_INPUT
        if getattr(args, "json", False):
            print(json.dumps([vars(h) for h in report.hosts], indent=2, sort_keys=True))
        else:
            print(report.to_text(), end="")
        if interrupted:
            print(interrupted_summary(args.command, report), file=sys.stderr)
            return EXIT_INTERRUPTED
        return EXIT_OK if report.all_ok else EXIT_HOST_FAILED

    return run


@guarded
def run_push(runner, args) -> Work:
    return lambda: runner.push(
        args.source, args.revision, args.build, host_names(args.hosts), allow_empty=args.allow_empty
    )


@guarded
def run_flip(runner, args) -> Work:
    return lambda: runner.flip(args.revision, selection_from(args))


@guarded
def run_rollback(runner, args) -> Work:
    return lambda: runner.rollback(args.revision, selection_from(args))


@guarded
def run_status(runner, args) -> Work:
    return lambda: runner.status(selection_from(args))
