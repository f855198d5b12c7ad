"""`buildbot-cd plan` and `buildbot-cd simulate`: the shard scheduler outside Buildbot.

buildbot-cd plan --history OLD.json NEW.json --shards 8 [--tests FILE|-] [--json]
buildbot-cd simulate --history ... --actual NEXT.json --workers 32 [--mode static]
"""

from __future__ import annotations

import argparse
import json
import sys

from buildbot_steps import _core
from buildbot_steps.errors import InvalidInputError
from buildbot_steps.shard import planning
from buildbot_steps.shard.commands import DYNAMIC, MODES


def add_shard_commands(commands) -> None:
    plan = commands.add_parser("plan", help="split a suite into N shards from past durations")
    _add_history_arguments(plan)
    plan.add_argument("--shards", type=int, required=True, help="number of shards")
    plan.add_argument(
        "--tests",
        metavar="FILE",
        help="test ids to plan, one per line ('-' for stdin); default: the ids in the newest history file",
    )
    plan.set_defaults(func=run_plan)

    simulate = commands.add_parser("simulate", help="replay a suite through the scheduler on a virtual clock")
    _add_history_arguments(simulate)
    simulate.add_argument(
        "--actual",
        required=True,
        metavar="FILE",
        help="durations the tests really take (a test absent there takes its estimate)",
    )
    simulate.add_argument("--workers", type=int, required=True)
    simulate.add_argument("--mode", choices=MODES, default=DYNAMIC)
    simulate.add_argument(
        "--tests",
        metavar="FILE",
        help="test ids to run, one per line ('-' for stdin); "
        "default: the ids in --actual, the run being replayed",
    )
    simulate.add_argument(
        "--batch-overhead",
        type=float,
        default=0.0,
        metavar="S",
        help="seconds each batch (dynamic) or shard and re-run (static) costs to start",
    )
    simulate.add_argument(
        "--flake-rate", type=float, default=0.0, metavar="P", help="chance that any one test run fails"
    )
    simulate.add_argument("--seed", type=int, default=0, metavar="K", help="random seed for --flake-rate")
    simulate.add_argument(
        "--max-attempts", type=int, default=2, help="runs of a failing test before it is failed"
    )
    simulate.set_defaults(func=run_simulate)


def _add_history_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--history",
        nargs="+",
        required=True,
        metavar="FILE",
        help="pytest-split .test_durations files (JSON {test id: seconds}), oldest first",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")


def _tests_to_plan(args, default: dict[str, float]) -> list[str]:
    if args.tests is None:
        return list(default)
    if args.tests == "-":
        return planning.read_test_list(sys.stdin, "standard input")
    try:
        with open(args.tests, encoding="utf-8") as handle:
            return planning.read_test_list(handle, args.tests)
    except OSError as error:
        raise InvalidInputError(f"cannot read test list {args.tests}: {error.strerror or error}") from None


def run_plan(args) -> int:
    if args.shards < 1:
        raise InvalidInputError(f"--shards must be at least 1, got {args.shards}")
    history = planning.read_history(args.history)
    estimates = planning.estimate(_tests_to_plan(args, history[-1]), history)
    plan = _core.plan_static(estimates, args.shards)
    if args.json:
        print(json.dumps(planning.plan_to_dict(plan), indent=1))
    else:
        print(planning.format_plan(plan, estimates))
    return 0


def run_simulate(args) -> int:
    history = planning.read_history(args.history)
    actual = planning.read_durations(args.actual)
    estimates = planning.estimate(_tests_to_plan(args, actual), history)
    result = planning.simulate(
        estimates,
        actual,
        args.workers,
        mode=args.mode,
        batch_overhead_s=args.batch_overhead,
        flake_rate=args.flake_rate,
        seed=args.seed,
        max_attempts=args.max_attempts,
    )
    print(json.dumps(result.to_dict(), indent=1) if args.json else planning.format_simulation(result))
    return 0
