"""`buildbot-cd judge SAMPLES [--alpha A] [--json]`: replay a canary's samples log offline.

SAMPLES is the `samples.json` log of a CanaryRelease step (format in
judging.py). Every look goes through the same judge as in the step, with the
recorded options or another alpha, and the verdict of each phase is printed.

Exit codes: 0 no phase failed, 1 a phase failed (the judge would roll back),
2 bad input.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from buildbot_steps.canary.judging import load_samples, replay
from buildbot_steps.errors import InvalidInputError

EXIT_OK = 0
EXIT_FAILED = 1


def add_canary_commands(subparsers) -> None:
    judge = subparsers.add_parser("judge", help="replay a canary's samples log through the judge")
    judge.add_argument("samples", help="the samples.json log of a CanaryRelease step ('-' for stdin)")
    judge.add_argument("--alpha", type=float, help="false-rollback budget (default: the recorded one)")
    judge.add_argument("--json", action="store_true", help="print every replayed look as JSON")
    judge.set_defaults(func=run_judge)


def read_text(path: str) -> str:
    if path == "-":
        return sys.stdin.read()
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as error:
        raise InvalidInputError(f"{path}: {error.strerror}") from None
    except UnicodeDecodeError:
        raise InvalidInputError(f"{path}: not UTF-8 text (a canary samples log is JSON)") from None


def run_judge(args: argparse.Namespace) -> int:
    if args.alpha is not None and not 0 < args.alpha < 1:
        raise InvalidInputError(f"--alpha must be in (0, 1), got {args.alpha}")
    document = load_samples(read_text(args.samples), args.samples)
    phases = replay(document, args.alpha)
    if args.json:
        print(json.dumps(phases, indent=1))
    else:
        for phase in phases:
            print(f"{phase['phase']}: {phase['verdict']} after {len(phase['looks'])} look(s)")
            for look in phase["looks"]:
                failing = f" ({look['failed_metric']})" if look["failed_metric"] else ""
                figures = ", ".join(
                    f"{r['name']} {r['estimate']:.4g} p={r['p_value']:.3g}"
                    if r["status"] == "TESTED"
                    else f"{r['name']} no data"
                    for r in look["results"]
                )
                print(f"  look {look['look']}: {look['verdict']}{failing}  {figures}")
    return EXIT_FAILED if any(p["verdict"] == "FAIL" for p in phases) else EXIT_OK
