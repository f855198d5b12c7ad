"""`buildbot checkconfig` on master.cfg.example, as a user would copy it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BUILDBOT = Path(sys.executable).parent / "buildbot"


def checkconfig(tmp_path: Path, **env_overrides: str) -> subprocess.CompletedProcess:
    (tmp_path / "master.cfg").write_text((REPO / "master.cfg.example").read_text())
    # The defaults: none of the example's variables set.
    env = {k: v for k, v in os.environ.items() if not k.startswith("BUILDBOT_CD_")}
    env.update(env_overrides)
    return subprocess.run(
        [str(BUILDBOT), "checkconfig", "master.cfg"], cwd=tmp_path, env=env,
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_example_passes_checkconfig_with_the_defaults(tmp_path):
    done = checkconfig(tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Config file is good!" in done.stdout


def test_example_passes_checkconfig_with_an_inventory_and_options(tmp_path):
    inventory = tmp_path / "hosts.json"
    inventory.write_text(json.dumps([
        {"name": "web1", "address": "127.0.0.2", "deploy_root": "/srv/app", "tags": ["canary"]},
        {"name": "web2", "address": "127.0.0.3", "deploy_root": "/srv/app"},
    ]))  # fmt: skip
    done = checkconfig(
        tmp_path, BUILDBOT_CD_INVENTORY=str(inventory), BUILDBOT_CD_WORKERS="16",
        BUILDBOT_CD_QUARANTINE="tests/test_outcomes.py::*", BUILDBOT_CD_DEPLOYERS="alice:secret",
        BUILDBOT_CD_REPO_URL="https://example.org/app.git",
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_warm_runner_is_chosen_without_editing_the_file(tmp_path):
    done = checkconfig(tmp_path, BUILDBOT_CD_WARM_RUNNER="on")
    assert done.returncode == 0, done.stdout + done.stderr
    refused = checkconfig(tmp_path, BUILDBOT_CD_WARM_RUNNER="on", BUILDBOT_CD_SHARD_MODE="static")
    assert (
        refused.returncode != 0 and "warm_runner=True needs mode='dynamic'" in refused.stdout + refused.stderr
    )
    typo = checkconfig(tmp_path, BUILDBOT_CD_WARM_RUNNER="yes")
    assert (
        typo.returncode != 0 and "BUILDBOT_CD_WARM_RUNNER must be 'on' or 'off'" in typo.stdout + typo.stderr
    )


def test_a_bad_inventory_is_a_configuration_error_naming_the_entry(tmp_path):
    inventory = tmp_path / "hosts.json"
    inventory.write_text(json.dumps([{"address": "web1;reboot", "deploy_root": "/srv/app"}]))
    done = checkconfig(tmp_path, BUILDBOT_CD_INVENTORY=str(inventory))
    assert done.returncode != 0
    assert "web1;reboot" in done.stdout + done.stderr


OPEN_DOOR_WARNING = "anyone who can reach"


def test_without_logins_the_example_says_anyone_can_deploy(tmp_path):
    done = checkconfig(tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "no logins (BUILDBOT_CD_DEPLOYERS is unset)" in done.stdout
    assert OPEN_DOOR_WARNING in done.stdout


def test_with_logins_there_is_no_open_door_warning(tmp_path):
    done = checkconfig(
        tmp_path, BUILDBOT_CD_DEPLOYERS="alice:secret", BUILDBOT_CD_VIEWERS="bob:secret",
        BUILDBOT_CD_CHANGE_PASSWORD="s3cret",
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert OPEN_DOOR_WARNING not in done.stdout


@pytest.mark.parametrize("deployers", ["alice", "alice:", ":secret", "alice:secret,bob", ",", " , "])
def test_a_malformed_login_is_a_configuration_error_never_logins_off(tmp_path, deployers):
    done = checkconfig(tmp_path, BUILDBOT_CD_DEPLOYERS=deployers, BUILDBOT_CD_CHANGE_PASSWORD="s3cret")
    output = done.stdout + done.stderr
    assert done.returncode != 0 and ("is not name:password" in output or "names no login" in output), output
    assert OPEN_DOOR_WARNING not in output


def test_with_logins_the_change_port_needs_its_own_password(tmp_path):
    done = checkconfig(tmp_path, BUILDBOT_CD_DEPLOYERS="alice:secret")
    output = done.stdout + done.stderr
    assert done.returncode != 0 and "set BUILDBOT_CD_CHANGE_PASSWORD" in output, output


def test_the_release_root_defaults_to_the_masters_releases_directory(tmp_path):
    done = checkconfig(tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "releases").is_dir()


@pytest.mark.parametrize(
    "variables, message",
    [
        ({"BUILDBOT_CD_WWW_PORT": "80a"}, "BUILDBOT_CD_WWW_PORT='80a' is not an integer"),
        ({"BUILDBOT_CD_WORKERS": "four"}, "BUILDBOT_CD_WORKERS='four' is not an integer"),
        ({"BUILDBOT_CD_CANARY_JUDGE": "yes"}, "BUILDBOT_CD_CANARY_JUDGE must be 'on' or 'off'"),
        (
            {"BUILDBOT_CD_CANARY_JUDGE": "on", "BUILDBOT_CD_CANARY_WINDOW_S": "1m"},
            "BUILDBOT_CD_CANARY_WINDOW_S='1m' is not a number",
        ),
        (
            {"BUILDBOT_CD_CANARY_JUDGE": "on", "BUILDBOT_CD_METRICS_URL": "web-metrics.json"},
            "BUILDBOT_CD_METRICS_URL='web-metrics.json': not a URL template, nor a readable JSON file",
        ),
    ],
)
def test_a_bad_variable_is_one_configuration_error_naming_it(tmp_path, variables, message):
    done = checkconfig(tmp_path, **variables)
    output = done.stdout + done.stderr
    assert done.returncode != 0 and message in output, output
    assert "Traceback" not in output


def test_hundreds_of_shard_workers_load(tmp_path):
    done = checkconfig(tmp_path, BUILDBOT_CD_WORKERS="300")
    assert done.returncode == 0, done.stdout + done.stderr
