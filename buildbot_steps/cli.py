"""buildbot-cd: each engine's commands for people and scripts.

    buildbot-cd plan|simulate ...                   the shard scheduler (shard/cli.py)
    buildbot-cd push|flip|rollback|status ...       the release push (release/cli.py)
    buildbot-cd judge SAMPLES ...                   the canary judge, offline (canary/cli.py)

Every error a person can cause ends in one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from buildbot_steps.canary.cli import add_canary_commands
from buildbot_steps.errors import CdError
from buildbot_steps.release.cli import add_release_commands
from buildbot_steps.shard.cli import add_shard_commands
from buildbot_steps.shard.planning import printable

EXIT_USAGE = 2  # argparse's own status for bad arguments; ours match it


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's default in its help, "(default: ...)", unless there is none to show.

    Required options, flags and options whose absence means something the
    help already says (default None) are left as written.
    """

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        # Identity, not ==: a default of 0 or 0.0 equals False and must still show.
        no_default = any(action.default is nothing for nothing in (None, False, argparse.SUPPRESS))
        no_default = no_default or action.required
        if no_default or not action.option_strings or "default" in text:
            return text
        return f"{text} (default: %(default)s)" if text else "(default: %(default)s)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="buildbot-cd", description=__doc__.splitlines()[0], formatter_class=DefaultsHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_shard_commands(commands)
    add_release_commands(commands)
    add_canary_commands(commands)
    for subcommand in commands.choices.values():
        subcommand.formatter_class = DefaultsHelpFormatter
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except CdError as error:
        # One line whatever the message quotes (a test id or host name with a
        # newline, from a file or from the C++ core's own message).
        print(f"buildbot-cd {args.command}: error: {printable(str(error))}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:  # `buildbot-cd plan ... | head` is not an error
        return 0


if __name__ == "__main__":
    sys.exit(main())
