"""`buildbot-cd plan` and `simulate` as a person runs them: the installed
console script in a subprocess, real files, bad input included."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

HYPHA = Path(__file__).resolve().parents[2] / "data" / "test-durations" / "hypha"
CLI = [sys.executable, "-m", "buildbot_steps.cli"]


def run(*args, stdin=None):
    return subprocess.run([*CLI, *map(str, args)], input=stdin, capture_output=True, text=True, timeout=120)


@pytest.fixture
def history(tmp_path):
    old = {"tests/a.py::t1": 1.0, "tests/a.py::t2": 2.0, "tests/b.py::t1": 10.0, "tests/c.py::t1": 3.0}
    new = {**old, "tests/b.py::t1": 11.0, "tests/d.py::t1": 4.0}
    paths = []
    for name, data in (("old.json", old), ("new.json", new)):
        path = tmp_path / name
        path.write_text(json.dumps(data))
        paths.append(path)
    return paths


def test_plan_json_covers_every_test_of_the_newest_file(history):
    result = run("plan", "--history", *history, "--shards", 2, "--json")
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    planned = sorted(t for shard in plan["shards"] for t in shard["tests"])
    assert planned == sorted(json.loads(history[1].read_text()))
    assert len(plan["shards"]) == 2
    assert all(shard["estimate_s"] > 0 for shard in plan["shards"])


def test_plan_text_and_tests_from_stdin(history):
    result = run(
        "plan",
        "--history",
        *history,
        "--shards",
        3,
        "--tests",
        "-",
        stdin="tests/a.py::t1\n# a comment\ntests/new.py::t9\n\n",
    )
    assert result.returncode == 0, result.stderr
    assert "tests/new.py::t9" in result.stdout
    assert "tests/b.py::t1" not in result.stdout
    assert "1 from global_median" in result.stdout and "1 from history" in result.stdout


def test_simulate_reports_the_bound_and_flakes(history, tmp_path):
    actual = tmp_path / "actual.json"
    actual.write_text(
        json.dumps(
            {
                "tests/a.py::t1": 1.5,
                "tests/a.py::t2": 2.0,
                "tests/b.py::t1": 12.0,
                "tests/c.py::t1": 3.0,
                "tests/d.py::t1": 4.0,
            }
        )
    )
    result = run("simulate", "--history", *history, "--actual", actual, "--workers", 2, "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["tests"] == 5 and report["workers"] == 2 and report["mode"] == "dynamic"
    assert report["lower_bound_s"] == 12.0  # the longest actual test beats half of the 22.5 s total
    assert report["makespan_s"] >= report["lower_bound_s"]
    flaky = run(
        "simulate",
        "--history",
        *history,
        "--actual",
        actual,
        "--workers",
        2,
        "--mode",
        "static",
        "--flake-rate",
        0.5,
        "--seed",
        1,
        "--json",
    )
    report = json.loads(flaky.stdout)
    assert report["mode"] == "static"
    assert report["flaky"] + report["failed"] > 0


def test_simulate_the_real_suite():
    files = sorted(HYPHA.glob("*.json"))
    result = run("simulate", "--history", *files[:-1], "--actual", files[-1], "--workers", 8)
    assert result.returncode == 0, result.stderr
    assert "ratio" in result.stdout and "1774" in result.stdout


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "is not valid JSON"),
        ('{"a.py::t": -1}', "has duration -1"),
        ('{"a.py::t": "fast"}', 'non-numeric duration "fast"'),
        ('["a.py::t"]', "must hold a JSON object"),
        ("{}", "the suite is empty"),
    ],
)
def test_bad_history_gets_one_clear_line(tmp_path, content, message):
    path = tmp_path / "durations.json"
    path.write_text(content)
    result = run("plan", "--history", path, "--shards", 2)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "args, message",
    [
        (["plan", "--shards", "0"], "--shards must be between 1 and 10000, got 0"),
        (["simulate", "--workers", "0", "--actual", "{history}"], "--workers must be between 1 and 10000"),
        (["plan", "--shards", "2", "--tests", "/nonexistent/list"], "cannot read test list"),
        (["simulate", "--workers", "2", "--actual", "/nonexistent.json"], "cannot read duration file"),
        (
            ["simulate", "--workers", "2", "--actual", "{history}", "--flake-rate", "1.5"],
            "--flake-rate must be",
        ),
    ],
)
def test_bad_arguments_get_one_clear_line(history, args, message):
    args = [a.replace("{history}", str(history[0])) for a in args]
    result = run(args[0], "--history", *history, *args[1:])
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("name, why", [("missing.json", "No such file"), (".", "not a regular file")])
def test_unreadable_history_file(tmp_path, name, why):
    result = run("plan", "--history", tmp_path / name, "--shards", 2)
    assert result.returncode == 2
    assert f"cannot read duration file {tmp_path / name}: {why}" in result.stderr
    assert "Traceback" not in result.stderr


def test_duplicate_ids_in_test_list(history):
    result = run("plan", "--history", *history, "--shards", 2, "--tests", "-", stdin="a\nb\na\n")
    assert result.returncode == 2
    assert "'a' more than once" in result.stderr


# ------------------------------------------------- hostile and absurd input


def assert_one_clear_line(result, message):
    assert result.returncode == 2, result.stdout
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert message in result.stderr


@pytest.mark.parametrize(
    "content, message",
    [
        (b'{"a.py::t": 1, "b\xff.py::t": 2}', "is not valid JSON (The input is not valid UTF-8)"),
        (b'{"a.py::t": 1e999}', "is not valid JSON (Problem while parsing a number)"),
        (
            b'{"a.py::t": 1e308, "b.py::t": 1e308}',
            "has duration 1e+308; durations are seconds between 0 and 604800",
        ),
        (b'{"a.py::t": NaN}', "is not valid JSON"),
        (b'{"a.py::t": -Infinity}', "is not valid JSON"),
        (b'{"a.py::t": 1' + b"0" * 400 + b"}", "is not valid JSON (Problem while parsing a number)"),
        (b'{"a.py::t": ' + b"9" * 5000 + b"}", "is not valid JSON (Problem while parsing a number)"),
        (b"[" * 100_000 + b"]" * 100_000, "is not valid JSON (The JSON document was too deep"),
        (b'{"\\ud800": 1}', "is not valid JSON"),
        (b'{"a\\nb": -1}', "test 'a\\nb' has duration -1"),
    ],
)
def test_hostile_history_gets_one_clear_line(tmp_path, content, message):
    path = tmp_path / "durations.json"
    path.write_bytes(content)
    for command in (["plan", "--shards", 2, "--json"], ["simulate", "--actual", path, "--workers", 2]):
        assert_one_clear_line(run(command[0], "--history", path, *command[1:]), message)


def test_test_list_that_is_not_utf8_gets_one_clear_line(history, tmp_path):
    listing = tmp_path / "tests.txt"
    listing.write_bytes(b"tests/a.py::t1\ntests/\xc3(.py::t2\n")
    result = run("plan", "--history", *history, "--shards", 2, "--tests", listing)
    assert_one_clear_line(result, f"test list {listing} is not UTF-8 text (bad byte at offset 21)")
    piped = subprocess.run(
        [*CLI, "plan", "--history", *map(str, history), "--shards", "2", "--tests", "-"],
        input=b"tests/a.py::t1\n\xed\xa0\x80\n",  # a surrogate, encoded: not UTF-8
        capture_output=True,
        timeout=120,
    )
    assert piped.returncode == 2
    assert piped.stderr.decode().count("\n") == 1
    assert b"standard input is not UTF-8 text" in piped.stderr and b"Traceback" not in piped.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["plan", "--shards", "10001"], "--shards must be between 1 and 10000, got 10001"),
        (["plan", "--shards", str(10**30)], "--shards must be between 1 and 10000"),
        (["simulate", "--workers", str(10**30)], "--workers must be between 1 and 10000"),
        (["simulate", "--workers", "2", "--max-attempts", "0"], "--max-attempts must be between 1 and 10"),
        (["simulate", "--workers", "2", "--max-attempts", str(10**20)], "--max-attempts must be between"),
        (["simulate", "--workers", "2", "--batch-overhead", "inf"], "--batch-overhead must be between 0"),
        (["simulate", "--workers", "2", "--batch-overhead", "nan"], "--batch-overhead must be between 0"),
        (["simulate", "--workers", "2", "--batch-overhead", "-1"], "--batch-overhead must be between 0"),
        (["simulate", "--workers", "2", "--batch-overhead", "1e300"], "--batch-overhead must be between 0"),
        (["simulate", "--workers", "2", "--flake-rate", "nan"], "--flake-rate must be in [0, 1)"),
        (["simulate", "--workers", "2", "--flake-rate", "-0.1"], "--flake-rate must be in [0, 1)"),
    ],
)
def test_numbers_out_of_bounds_get_one_clear_line(history, args, message):
    extra = ["--actual", history[1]] if args[0] == "simulate" else []
    assert_one_clear_line(run(args[0], "--history", *history, *extra, *args[1:]), message)


def strict_json(text: str):
    def refuse(constant):
        raise AssertionError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=refuse)


def test_json_stays_finite_at_the_largest_accepted_durations(tmp_path):
    # At the bound, the figures (sums, ratio) are still finite numbers.
    biggest = {f"tests/t{i}.py::t": 7 * 24 * 3600.0 for i in range(50)}
    path = tmp_path / "durations.json"
    path.write_text(json.dumps(biggest))
    plan = run("plan", "--history", path, "--shards", 3, "--json")
    assert plan.returncode == 0, plan.stderr
    assert strict_json(plan.stdout)["lower_bound_s"] > 0
    simulated = run(
        "simulate", "--history", path, "--actual", path, "--workers", 3, "--batch-overhead", 3600, "--json"
    )
    assert simulated.returncode == 0, simulated.stderr
    assert strict_json(simulated.stdout)["makespan_s"] > 0


def test_control_characters_in_a_test_id_do_not_break_the_text_output(tmp_path):
    sneaky = "tests/a.py::t\nshard 9: 1 tests, estimate 0.00 s\x1b[31m"
    path = tmp_path / "durations.json"
    path.write_text(json.dumps({sneaky: 1.0, "tests/b.py::t": 2.0}))
    result = run("plan", "--history", path, "--shards", 2)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert not any(line.startswith("shard 9") for line in lines)
    assert "  tests/a.py::t\\nshard 9: 1 tests, estimate 0.00 s\\x1b[31m" in lines
    assert "\x1b" not in result.stdout
    # The summary (totals, estimates, one line per shard), then per shard: a blank, a heading, its id.
    assert len(lines) == 2 + 2 + 2 * 3
    as_json = run("plan", "--history", path, "--shards", 2, "--json")
    assert sneaky in [t for shard in strict_json(as_json.stdout)["shards"] for t in shard["tests"]]
