"""`buildbot-cd` as a user finds it: every help page shows its defaults in plain
text, `plan` leads with its summary, and `status` lists every slot. Each run is
the real command in a subprocess (`python -m buildbot_steps.cli`)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

CLI = [sys.executable, "-m", "buildbot_steps.cli"]
SUBCOMMANDS = ("plan", "simulate", "push", "flip", "rollback", "status", "judge")
# Markup that help text shown in a terminal must not carry: Markdown or reST quoting.
MARKUP = re.compile(r"`|\*\*|:\w+:`")
# Options whose absence means something their help says in words (no value to show).
NO_DEFAULT_VALUE = {"--tests", "--hosts", "--tag", "--count", "--fraction", "--known-hosts", "--identity",
                    "--alpha", "--revision", "--history", "--shards", "--actual", "--workers", "--inventory",
                    "--source"}  # fmt: skip


def run(*args: object, check_status: int | None = 0) -> subprocess.CompletedProcess:
    done = subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, timeout=120)
    if check_status is not None:
        assert done.returncode == check_status, done.stdout + done.stderr
    return done


def options_with_values(help_text: str) -> dict[str, str]:
    """Each option of a help page -> the help text that follows it, up to the next option."""
    found: dict[str, str] = {}
    current = None
    for line in help_text.splitlines():
        match = re.match(r"^\s{2}(-\w, )?(--[\w-]+)", line)
        if match:
            current = match.group(2)
            found[current] = line
        elif current and line.startswith(" " * 8):
            found[current] += " " + line.strip()
        else:
            current = None
    return found


def test_top_level_help_lists_every_subcommand_without_markup():
    text = run("--help").stdout
    for name in SUBCOMMANDS:
        assert name in text
    assert not MARKUP.search(text), text


@pytest.mark.parametrize("subcommand", SUBCOMMANDS)
def test_every_subcommand_help_shows_each_default(subcommand):
    text = run(subcommand, "--help").stdout
    assert not MARKUP.search(text), text
    options = options_with_values(text)
    assert options, text
    for option, help_line in options.items():
        if option in ("--help", "--json", "--ids", "--allow-empty", "--preserve-privileged"):
            continue  # flags: off unless given
        if option in NO_DEFAULT_VALUE:
            continue
        assert "default" in help_line, f"{subcommand} {option} shows no default: {help_line!r}"


def test_a_default_shown_is_the_value_used():
    options = options_with_values(run("simulate", "--help").stdout)
    assert "(default: dynamic)" in options["--mode"]
    assert "(default: 2)" in options["--max-attempts"]
    push = options_with_values(run("push", "--help").stdout)
    assert "(default: ssh)" in push["--transport"]
    assert re.search(r"\(default: \d+\)", push["--slots"])


@pytest.fixture
def history(tmp_path):
    path = tmp_path / "durations.json"
    path.write_text(json.dumps({"tests/a.py::t1": 1.0, "tests/a.py::t2": 2.0, "tests/b.py::t1": 4.0}))
    return path


def test_plan_prints_its_summary_before_the_ids(history):
    lines = run("plan", "--history", history, "--shards", 2).stdout.splitlines()
    assert lines[0].startswith("3 tests in 2 shards: makespan 4.00 s, lower bound 4.00 s"), lines
    assert lines[1].startswith("estimates: 3 from history")
    assert lines[2].startswith("shard 1: ") and lines[3].startswith("shard 2: ")
    first_id = next(i for i, line in enumerate(lines) if line.startswith("  tests/"))
    assert first_id > 3
    assert sorted(line.strip() for line in lines if line.startswith("  ")) == [
        "tests/a.py::t1",
        "tests/a.py::t2",
        "tests/b.py::t1",
    ]


def test_plan_ids_flag_prints_only_shard_and_id(history):
    lines = run("plan", "--history", history, "--shards", 2, "--ids").stdout.splitlines()
    assert sorted(lines) == ["1\ttests/b.py::t1", "2\ttests/a.py::t1", "2\ttests/a.py::t2"]
    both = run("plan", "--history", history, "--shards", 2, "--ids", "--json", check_status=2)
    assert both.stderr.count("\n") == 1 and "--json and --ids" in both.stderr


def test_status_text_shows_every_slot_and_the_live_one(tmp_path):
    roots = [tmp_path / f"host{n}" for n in range(2)]
    inventory = tmp_path / "inventory.json"
    inventory.write_text(
        json.dumps([{"name": root.name, "address": "localhost", "deploy_root": str(root)} for root in roots])
    )
    common = ["--inventory", inventory, "--transport", "local"]
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "version").write_text("r1")
    run("push", *common, "--source", tree, "--revision", "r1")
    run("flip", *common, "--revision", "r1")
    text = run("status", *common).stdout
    for root in roots:
        assert root.name in text
    slot_lines = [line for line in text.splitlines() if line.startswith("    slot ")]
    slots = json.loads(run("status", *common, "--json").stdout)[0]["details"]["slots"]
    assert len(slot_lines) == len(slots) * len(roots), text
    live = [line for line in slot_lines if line.endswith("(live)")]
    assert len(live) == len(roots) and all(
        "revision=r1" in line and "state=complete" in line for line in live
    )
    assert any("state=empty" in line for line in slot_lines)
    assert os.path.isdir(roots[0] / "current")
