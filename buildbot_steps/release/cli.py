"""`buildbot-cd push | flip | rollback | status`: the release engine for operators.

These work with the master down: everything comes from an inventory file and
options. `buildbot_steps.cli` registers them beside `plan` and `simulate`.

Exit codes: 0 every host ok, 1 some host failed, 2 bad input or refused.
"""

from __future__ import annotations

import argparse
import json
import sys

from buildbot_steps import release

EXIT_OK = 0
EXIT_HOST_FAILED = 1
EXIT_BAD_INPUT = 2


def add_release_commands(subparsers) -> None:
    push = subparsers.add_parser("push", help="transfer a release tree into a free slot on every host")
    add_common_options(push)
    push.add_argument("--source", required=True, help="directory whose contents become the release")
    push.add_argument("--revision", required=True, help="revision recorded in the manifest")
    push.add_argument("--build", default="0", help="build number recorded in the manifest")
    push.add_argument("--hosts", help="comma-separated host names (default: all)")
    push.set_defaults(func=run_push)

    flip = subparsers.add_parser("flip", help="make a pushed revision live (atomic symlink flip)")
    add_common_options(flip)
    flip.add_argument("--revision", required=True)
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


def add_common_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--inventory", required=True, help="JSON inventory file")
    parser.add_argument("--transport", choices=sorted(release.TRANSPORTS), default="ssh")
    parser.add_argument("--known-hosts", help="ssh known_hosts file (host keys are always checked)")
    parser.add_argument("--identity", help="ssh private key")
    parser.add_argument(
        "--ssh-option", action="append", default=[], metavar="KEY=VALUE", help="extra ssh -o option"
    )
    parser.add_argument("--slots", type=int, default=release.DEFAULT_SLOTS)
    parser.add_argument("--concurrency", type=int, default=release.FANOUT_DEFAULTS.concurrency)
    parser.add_argument(
        "--timeout", type=float, default=release.FANOUT_DEFAULTS.host_timeout_s, help="seconds per host"
    )
    parser.add_argument("--retries", type=int, default=release.FANOUT_DEFAULTS.max_retries)
    parser.add_argument(
        "--max-fail", type=float, default=release.FANOUT_DEFAULTS.max_fail_fraction,
        help="abort hosts not yet started once this share of hosts failed (0..1)",
    )  # fmt: skip


def add_selection_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--hosts", help="comma-separated host names")
    parser.add_argument("--tag", help="only hosts with this tag (e.g. canary)")
    share = parser.add_mutually_exclusive_group()
    share.add_argument("--count", type=int, help="at most this many hosts")
    share.add_argument("--fraction", type=float, help="this share of the hosts (0..1], at least one")


def runner_from(args) -> release.ReleaseRunner:
    inventory = release.Inventory.from_file(args.inventory)
    if args.transport == "ssh":
        transport = release.SshTransport(
            known_hosts=args.known_hosts, identity_file=args.identity, extra_options=tuple(args.ssh_option)
        )
    else:
        transport = release.LocalTransport()
    settings = release.FanoutSettings(
        concurrency=args.concurrency, host_timeout_s=args.timeout,
        max_retries=args.retries, max_fail_fraction=args.max_fail,
    )  # fmt: skip
    return release.ReleaseRunner(inventory, transport, settings, args.slots, progress=print_progress)


def print_progress(host: release.HostReport, done: int, total: int, failed: int) -> None:
    note = f" ({host.error})" if host.error else ""
    print(f"[{done}/{total}, {failed} failed] {host.host}: {host.status}{note}", file=sys.stderr, flush=True)


def host_names(text: str | None):
    return tuple(n for n in text.split(",") if n) if text else None


def selection_from(args) -> release.Selection:
    return release.Selection(
        names=host_names(args.hosts), tag=args.tag, count=args.count, fraction=args.fraction
    )


def guarded(action):
    """Bad input -> one line on stderr and exit 2, never a traceback."""

    def run(args) -> int:
        try:
            report = action(args)
        except (release.InvalidInput, release.DeployInProgress) as error:
            print(f"buildbot-cd {args.command}: {error}", file=sys.stderr)
            return EXIT_BAD_INPUT
        except KeyboardInterrupt:
            print(f"buildbot-cd {args.command}: interrupted", file=sys.stderr)
            return EXIT_HOST_FAILED
        if getattr(args, "json", False):
            print(json.dumps([vars(h) for h in report.hosts], indent=2, sort_keys=True))
        else:
            print(report.to_text(), end="")
        return EXIT_OK if report.all_ok else EXIT_HOST_FAILED

    return run


@guarded
def run_push(args):
    return runner_from(args).push(args.source, args.revision, args.build, host_names(args.hosts))


@guarded
def run_flip(args):
    return runner_from(args).flip(args.revision, selection_from(args))


@guarded
def run_rollback(args):
    return runner_from(args).rollback(args.revision, selection_from(args))


@guarded
def run_status(args):
    return runner_from(args).status(selection_from(args))
