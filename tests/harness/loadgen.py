"""The web fleet's load generator as a process of its own (the demo leaves it running).

    python -m harness.loadgen --rate 10 --duration 3600 URL [URL ...]

Runs harness.webfleet.LoadGenerator until its duration or request budget is
spent, or until SIGTERM; prints what it sent when it ends.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading

from harness.webfleet import LoadGenerator

# A demo left running should not hammer the machine forever: at most this long.
MAX_DURATION_S = 4 * 3600


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Steady GET traffic to every URL.")
    parser.add_argument("--rate", type=float, default=10.0, help="requests a second to each URL")
    parser.add_argument("--duration", type=float, default=3600.0, help=f"seconds (at most {MAX_DURATION_S})")
    parser.add_argument(
        "--label", default="", help="shown in ps: whose traffic this is (the demo's directory)"
    )
    parser.add_argument("urls", nargs="+")
    args = parser.parse_args(argv)
    if not 0 < args.duration <= MAX_DURATION_S or args.rate <= 0:
        parser.error(f"--rate must be positive and --duration within (0, {MAX_DURATION_S}] seconds")
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    max_requests = int(args.rate * args.duration) + 1
    with LoadGenerator(args.urls, args.rate, args.duration, max_requests) as load:
        stopped.wait(args.duration)
    print(f"loadgen: {load.sent} requests sent, {load.failed} answered with an error or not at all")
    return 0


if __name__ == "__main__":
    sys.exit(main())
