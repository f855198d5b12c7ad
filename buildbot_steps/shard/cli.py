"""`buildbot-cd plan` and `buildbot-cd simulate`: the shard scheduler outside Buildbot.

buildbot-cd plan --history OLD.json NEW.json --shards 8 [--tests FILE|-] [--json | --ids]
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
    plan.add_argument("--shards", type=int, required=True, help=f"number of shards (1-{planning.MAX_SHARDS})")
    plan.add_argument(
        "--tests",
        metavar="FILE",
        help="test ids to plan, one per line ('-' for stdin); default: the ids in the newest history file",
    )
    plan.add_argument(
        "--ids",
        action="store_true",
        help="print only the plan's test ids, one line each: shard number, a tab, the test id",
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
    simulate.add_argument(
        "--workers", type=int, required=True, help=f"simulated workers (1-{planning.MAX_SHARDS})"
    )
    simulate.add_argument(
        "--mode",
        choices=MODES,
        default=DYNAMIC,
        help="dynamic: workers pull batches as they finish; static: each worker gets a fixed list",
    )
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
        help="seconds each batch (dynamic) or shard and re-run (static) costs to start "
        f"(0-{planning.MAX_BATCH_OVERHEAD_S:.0f})",
    )
    simulate.add_argument(
        "--flake-rate", type=float, default=0.0, metavar="P", help="chance that any one test run fails"
    )
    simulate.add_argument("--seed", type=int, default=0, metavar="K", help="random seed for --flake-rate")
    simulate.add_argument(
        "--max-attempts",
        type=int,
        default=2,
        help=f"runs of a failing test before it is failed (1-{planning.MAX_ATTEMPTS})",
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


def _tests_to_plan(args) -> list[str] | None:
    """The --tests list, or None for the default set."""
    if args.tests is None:
        return None
    if args.tests == "-":
        # Bytes, decoded strictly: the text layer of stdin may be lenient
        # (surrogateescape) and hand on ids that no later step can encode.
        text = planning.decode_utf8(sys.stdin.buffer.read(), "standard input")
        return planning.read_test_list(text.splitlines(), "standard input")
    return planning.read_test_file(args.tests)


def _print_json(data: dict) -> None:
    # allow_nan=False: Infinity and NaN are not JSON, and a consumer of
    # `--json` must never get them; the bounds on every input keep the
    # figures finite, so this only turns a future bug into an error.
    print(json.dumps(data, indent=1, allow_nan=False))


def run_plan(args) -> int:
    planning.check_count("--shards", args.shards, planning.MAX_SHARDS)
    if args.json and args.ids:
        raise InvalidInputError("--json and --ids each choose the output: give one of them")
    # Read, estimated and planned in the core: a million tests never become
    # Python objects on the --json path.
    history = _core.read_duration_files(args.history)
    tests = _tests_to_plan(args)  # None: the tests of the newest file
    if args.json:
        sys.stdout.write(_core.plan_to_json(_core.plan_from_history(history, args.shards, tests)))
    elif args.ids:
        print(planning.format_plan_ids(_core.plan_from_history(history, args.shards, tests)))
    else:
        estimates = (
            _core.estimate_durations(history) if tests is None else _core.estimate_durations(tests, history)
        )
        print(planning.format_plan(_core.plan_static(estimates, args.shards), estimates))
    return 0


def run_simulate(args) -> int:
    history = _core.read_duration_files(args.history)
    actual = planning.read_durations(args.actual)
    estimates = planning.estimate(_tests_to_plan(args) or list(actual), history)
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
    if args.json:
        _print_json(result.to_dict())
    else:
        print(planning.format_simulation(result))
    return 0
