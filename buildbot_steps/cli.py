"""``buildbot-cd``: the scheduler and the release push for people and scripts.

    buildbot-cd plan --history OLD.json NEW.json --shards 8 [--tests FILE|-] [--json]
    buildbot-cd simulate --history ... --actual NEXT.json --workers 32 [--mode static]
    buildbot-cd push|flip|rollback|status --inventory hosts.json ...   (see release_cli.py)

Every error a person can cause ends in one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

from buildbot_steps import _core
from buildbot_steps.release_cli import add_release_commands

EXIT_USAGE = 2  # argparse's own status for bad arguments; ours match it


def _add_history_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--history", nargs="+", required=True, metavar="FILE",
                        help="pytest-split .test_durations files (JSON {test id: seconds}), oldest first")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")


def _tests_to_plan(args, default: dict[str, float]) -> list[str]:
    from buildbot_steps import sharding

    if args.tests is None:
        return list(default)
    if args.tests == "-":
        return sharding.read_test_list(sys.stdin, "standard input")
    try:
        with open(args.tests, encoding="utf-8") as handle:
            return sharding.read_test_list(handle, args.tests)
    except OSError as error:
        raise sharding.InputError(f"cannot read test list {args.tests}: {error.strerror or error}") from None


def run_plan(args) -> int:
    from buildbot_steps import sharding

    if args.shards < 1:
        raise sharding.InputError(f"--shards must be at least 1, got {args.shards}")
    history = sharding.read_history(args.history)
    estimates = sharding.estimate(_tests_to_plan(args, history[-1]), history)
    plan = _core.plan_static(estimates, args.shards)
    if args.json:
        print(json.dumps(sharding.plan_to_dict(plan), indent=1))
    else:
        print(sharding.format_plan(plan, estimates))
    return 0


def run_simulate(args) -> int:
    from buildbot_steps import sharding

    history = sharding.read_history(args.history)
    actual = sharding.read_durations(args.actual)
    estimates = sharding.estimate(_tests_to_plan(args, actual), history)
    result = sharding.simulate(estimates, actual, args.workers, mode=args.mode,
                               batch_overhead_s=args.batch_overhead, flake_rate=args.flake_rate,
                               seed=args.seed, max_attempts=args.max_attempts)
    print(json.dumps(result.to_dict(), indent=1) if args.json else sharding.format_simulation(result))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="buildbot-cd", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    plan = commands.add_parser("plan", help="split a suite into N shards from past durations")
    _add_history_arguments(plan)
    plan.add_argument("--shards", type=int, required=True, help="number of shards")
    plan.add_argument("--tests", metavar="FILE", help="test ids to plan, one per line ('-' for stdin); "
                      "default: the ids in the newest history file")
    plan.set_defaults(func=run_plan)

    simulate = commands.add_parser("simulate", help="replay a suite through the scheduler on a virtual clock")
    _add_history_arguments(simulate)
    simulate.add_argument("--actual", required=True, metavar="FILE",
                          help="durations the tests really take (a test absent there takes its estimate)")
    simulate.add_argument("--workers", type=int, required=True)
    simulate.add_argument("--mode", choices=("dynamic", "static"), default="dynamic")
    simulate.add_argument("--tests", metavar="FILE", help="test ids to run, one per line ('-' for stdin); "
                          "default: the ids in --actual, the run being replayed")
    simulate.add_argument("--batch-overhead", type=float, default=0.0, metavar="S",
                          help="seconds each batch (dynamic) or shard and re-run (static) costs to start")
    simulate.add_argument("--flake-rate", type=float, default=0.0, metavar="P",
                          help="chance that any one test run fails")
    simulate.add_argument("--seed", type=int, default=0, metavar="K", help="random seed for --flake-rate")
    simulate.add_argument("--max-attempts", type=int, default=2, help="runs of a failing test before it is failed")
    simulate.set_defaults(func=run_simulate)

    add_release_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from buildbot_steps import sharding

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (sharding.InputError, sharding.CdError) as error:
        print(f"buildbot-cd {args.command}: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:  # `buildbot-cd plan ... | head` is not an error
        return 0


if __name__ == "__main__":
    sys.exit(main())
