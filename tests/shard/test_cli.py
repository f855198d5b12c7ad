"""`buildbot-cd plan` and `simulate` as a person runs them: the installed
console script in a subprocess, real files, bad input included."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

HYPHA = Path(__file__).resolve().parents[3] / "shared" / "data" / "test-durations" / "hypha"
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


@pytest.mark.skipif(not HYPHA.is_dir(), reason="shared/data is not beside this checkout")
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
        (["plan", "--shards", "0"], "--shards must be at least 1"),
        (["simulate", "--workers", "0", "--actual", "{history}"], "--workers must be at least 1"),
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


def test_unreadable_history_file(tmp_path):
    result = run("plan", "--history", tmp_path / "missing.json", "--shards", 2)
    assert result.returncode == 2
    assert "cannot read duration file" in result.stderr


def test_duplicate_ids_in_test_list(history):
    result = run("plan", "--history", *history, "--shards", 2, "--tests", "-", stdin="a\nb\na\n")
    assert result.returncode == 2
    assert "'a' more than once" in result.stderr
