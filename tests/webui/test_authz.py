"""Who may act through the REST API of a master started from master.cfg.example.

With logins on, every control action of Buildbot's data API is refused to an
anonymous client and to a logged-in user without the deployers' role. The
actions are enumerated from Buildbot itself (every endpoint class of the data
connector that has a control method or `action*` methods, with each of its
path patterns), so an endpoint or action added by a later Buildbot is tried
here without anyone editing this file. A deployer can still deploy, and no
force scheduler starts a builder other than its own.
"""

from __future__ import annotations

import base64
import http.cookiejar
import importlib
import inspect
import json
import re
import urllib.error
import urllib.request
from dataclasses import dataclass

import pytest
from buildbot.data import base as data_base
from buildbot.data import connector

from harness import demo

DEPLOYER = ("alice", "deploy-secret")
VIEWER = ("bob", "view-secret")
FORBIDDEN = 403
INVALID_PARAMS = 400
REQUEST_TIMEOUT_S = 30
BUILD_DEADLINE_S = 240
SUCCESS = 0


@dataclass(frozen=True)
class ControlEndpoint:
    name: str
    path_patterns: tuple[str, ...]
    actions: tuple[str, ...]


def control_endpoints() -> list[ControlEndpoint]:
    """Every data API endpoint that accepts a control action, with its actions, from Buildbot's code."""
    found = []
    for module_name in connector.DataConnector.submodules:
        module = importlib.import_module(module_name)
        for name, cls in inspect.getmembers(module, inspect.isclass):
            if not issubclass(cls, data_base.Endpoint) or cls.__module__ != module.__name__:
                continue
            # Endpoint.control dispatches "x" to actionX; some endpoints override control itself.
            actions = {m[len("action") :].lower() for m in dir(cls) if re.fullmatch(r"action[A-Z]\w*", m)}
            if cls.control is not data_base.Endpoint.control:
                # Every word literal of the override: the action names, plus harmless extras.
                actions |= set(re.findall(r"""['"]([a-z_]+)['"]""", inspect.getsource(cls.control)))
                actions.add("an_action_no_one_defined")
            if actions:
                patterns = cls.pathPatterns.split() if isinstance(cls.pathPatterns, str) else cls.pathPatterns
                found.append(ControlEndpoint(name, tuple(patterns), tuple(sorted(actions))))
    return found


def test_the_enumeration_finds_the_actions_the_hostile_review_used():
    """If Buildbot renamed its classes this list would shrink silently: pin the known ones."""
    by_name = {e.name: set(e.actions) for e in control_endpoints()}
    assert {"stop", "rebuild"} <= by_name["BuildEndpoint"]
    assert {"cancel", "set_priority"} <= by_name["BuildRequestEndpoint"]
    assert {"pause", "unpause", "kill", "stop"} <= by_name["WorkerEndpoint"]
    assert "force" in by_name["ForceSchedulerEndpoint"]
    assert "enable" in by_name["SchedulerEndpoint"]


class Client:
    """A REST client with its own session cookie (logged in with `login`, or anonymous)."""

    def __init__(self, url: str, login: tuple[str, str] | None = None):
        self.url = url.rstrip("/")
        self.opener = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar())
        )
        if login is not None:
            token = base64.b64encode(f"{login[0]}:{login[1]}".encode()).decode()
            request = urllib.request.Request(
                f"{self.url}/auth/login", headers={"Authorization": f"Basic {token}"}
            )
            with self.opener.open(request, timeout=REQUEST_TIMEOUT_S):
                pass
            assert self.whoami().get("username") == login[0], f"login as {login[0]} failed"

    def whoami(self) -> dict:
        with self.opener.open(f"{self.url}/config", timeout=REQUEST_TIMEOUT_S) as response:
            return json.load(response).get("user", {})

    def control(self, path: str, action: str, params: dict | None = None) -> tuple[int, dict]:
        """POST a JSON-RPC action; (HTTP status, decoded body)."""
        body = json.dumps({"jsonrpc": "2.0", "method": action, "id": 1, "params": params or {}}).encode()
        request = urllib.request.Request(f"{self.url}/api/v2{path}", data=body,
                                         headers={"Content-Type": "application/json"})  # fmt: skip
        try:
            with self.opener.open(request, timeout=REQUEST_TIMEOUT_S) as response:
                return response.status, json.load(response)
        except urllib.error.HTTPError as error:
            text = error.read().decode(errors="replace")
            try:
                return error.code, json.loads(text)
            except ValueError:
                return error.code, {"error": {"message": text}}


@pytest.fixture(scope="module")
def secured(tmp_path_factory):
    """A master from master.cfg.example with logins on: one deployer, one viewer."""
    cluster = demo.DemoCluster(
        tmp_path_factory.mktemp("authz"), shard_workers=1, hosts=("web1", "web2"),
        extra_env={
            "BUILDBOT_CD_DEPLOYERS": ":".join(DEPLOYER),
            "BUILDBOT_CD_VIEWERS": ":".join(VIEWER),
            "BUILDBOT_CD_CHANGE_PASSWORD": "change-s3cret",
        },
    )  # fmt: skip
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def deployer(secured) -> Client:
    return Client(secured.url, DEPLOYER)


def force(client: Client, cluster, scheduler: str, builder: str, **params) -> tuple[int, dict]:
    return client.control(f"/forceschedulers/{scheduler}", "force",
                          {"builderid": str(cluster.builder_id(builder)), **params})  # fmt: skip


@pytest.fixture(scope="module")
def deployed(secured, deployer) -> dict:
    """A deploy forced by the deployer, finished: the one thing that must still work."""
    release = secured.release_root / "v1"
    demo.make_release(release, "v1", "authz test")
    status, reply = force(deployer, secured, "force-deploy", "deploy", deploy_revision="v1",
                          release_dir=str(release))  # fmt: skip
    assert status == 200 and "result" in reply, reply
    brid = int(next(iter(reply["result"][1].values())))
    return secured.wait_for_build(brid, BUILD_DEADLINE_S)


def test_a_deployer_can_force_a_deploy(secured, deployed):
    assert deployed["results"] == SUCCESS, deployed["state_string"]
    for host in ("web1", "web2"):
        assert "revision=v1" in (secured.hosts_dir / host / "current" / ".release").read_text()


def placeholder_values(cluster, build: dict) -> dict[str, list[str]]:
    """Real objects for every path placeholder: the refusal must come before any of them is touched."""
    api = cluster.api
    deployer_worker = next(w for w in api("workers")["workers"] if w["name"] == "deployer")
    return {
        "buildid": [str(build["buildid"])],
        "builderid": [str(build["builderid"])],
        "buildername": ["deploy"],
        "build_number": [str(build["number"])],
        "buildrequestid": [str(build["buildrequestid"])],
        "workerid": [str(deployer_worker["workerid"])],
        "name": ["deployer"],
        "masterid": [str(m["masterid"]) for m in api("masters")["masters"]],
        "schedulerid": [str(s["schedulerid"]) for s in api("schedulers")["schedulers"]],
        "schedulername": [s["name"] for s in api("forceschedulers")["forceschedulers"]],
    }


def concrete_paths(pattern: str, values: dict[str, list[str]]) -> list[str]:
    paths = [""]
    for part in pattern.strip("/").split("/"):
        if ":" in part:
            key = part.split(":", 1)[1]
            assert key in values, f"no value for the placeholder {key!r} of {pattern}: add it above"
            paths = [f"{p}/{v}" for p in paths for v in values[key]]
        else:
            paths = [f"{p}/{part}" for p in paths]
    return paths


def every_control_request(cluster, build: dict):
    values = placeholder_values(cluster, build)
    builder_ids = [str(b["builderid"]) for b in cluster.api("builders")["builders"]]
    for endpoint in control_endpoints():
        for pattern in endpoint.path_patterns:
            for path in concrete_paths(pattern, values):
                for action in endpoint.actions:
                    # Every builder through every force scheduler, too.
                    params_list = [{"builderid": b} for b in builder_ids] if action == "force" else [{}]
                    for params in params_list:
                        yield path, action, params


@pytest.mark.parametrize("who", ["anonymous", "a viewer without the deployers' role"])
def test_every_control_action_is_refused_to_a_non_deployer(secured, deployed, who):
    client = Client(secured.url, VIEWER if who.startswith("a viewer") else None)
    builds_before = len(secured.api("builds")["builds"])
    allowed = []
    tried = 0
    for path, action, params in every_control_request(secured, deployed):
        tried += 1
        status, reply = client.control(path, action, params)
        if status != FORBIDDEN:
            allowed.append(f"{action} {path} {params}: HTTP {status} {str(reply)[:120]}")
    assert not allowed, f"{who} was not refused:\n" + "\n".join(allowed)
    assert tried > 50  # every pattern of every endpoint was tried
    # Nothing happened: no new build, the deploy worker not paused.
    assert len(secured.api("builds")["builds"]) == builds_before
    worker = next(w for w in secured.api("workers")["workers"] if w["name"] == "deployer")
    assert not worker["paused"] and not worker["graceful"] and worker["connected_to"], worker


def test_the_refusal_names_the_role_needed(secured, deployed):
    status, reply = force(Client(secured.url), secured, "force-tests", "tests")
    assert status == FORBIDDEN
    assert "you need to have role 'deployers'" in json.dumps(reply)


@pytest.mark.parametrize(
    ("scheduler", "builder"),
    [("force-tests", "deploy"), ("force-tests", "rollback"), ("force-deploy", "tests"),
     ("force-rollback", "deploy"), ("force-deploy", "tests-shard")],
)  # fmt: skip
def test_a_force_scheduler_refuses_a_builder_not_its_own_even_to_a_deployer(
    secured, deployer, scheduler, builder
):
    requests_before = len(secured.api("buildrequests")["buildrequests"])
    status, reply = force(deployer, secured, scheduler, builder, deploy_revision="v1", release_dir="v1")
    assert status == INVALID_PARAMS, reply
    message = json.dumps(reply)
    assert f"force scheduler '{scheduler}' does not start builds on {builder}" in message
    assert len(secured.api("buildrequests")["buildrequests"]) == requests_before


def test_a_huge_shard_count_is_refused_by_the_force_form(secured, deployer):
    requests_before = len(secured.api("buildrequests")["buildrequests"])
    status, reply = force(deployer, secured, "force-tests", "tests", shards=300)
    assert status == INVALID_PARAMS, reply
    assert "300 is outside 0..4" in json.dumps(reply)
    assert len(secured.api("buildrequests")["buildrequests"]) == requests_before


@pytest.mark.parametrize(
    ("scheduler", "builder", "fields", "refused"),
    [
        ("force-tests", "tests", {"revision": "HEAD; rm -rf /"}, "revision"),
        ("force-tests", "tests", {"revision": "v1..v2"}, "revision"),
        ("force-tests", "tests", {"revision": "v1.2.3\n"}, "revision"),
        ("force-deploy", "deploy", {"deploy_revision": "../v1", "release_dir": "v1"}, "deploy_revision"),
        ("force-rollback", "rollback", {"bad_revision": "a..b"}, "bad_revision"),
    ],
)  # fmt: skip
def test_the_force_forms_take_revisions_by_pattern_only(
    secured, deployer, scheduler, builder, fields, refused
):
    requests_before = len(secured.api("buildrequests")["buildrequests"])
    status, reply = force(deployer, secured, scheduler, builder, **fields)
    assert status == INVALID_PARAMS and refused in json.dumps(reply), reply
    assert len(secured.api("buildrequests")["buildrequests"]) == requests_before


def test_the_tests_form_takes_no_repository_or_branch(secured):
    # The form as the web UI gets it: those fields fixed, whatever a request sends.
    (form,) = secured.api("forceschedulers/force-tests")["forceschedulers"]

    def fields(entries):
        for entry in entries:
            yield entry
            yield from fields(entry.get("fields") or [])

    kinds = {field["name"]: field["type"] for field in fields(form["all_fields"])}
    assert kinds["repository"] == kinds["branch"] == kinds["project"] == "fixed"
    assert kinds["revision"] == "text"


def test_a_release_directory_outside_the_root_fails_the_deploy_and_pushes_nothing(
    secured, deployer, deployed
):
    status, reply = force(deployer, secured, "force-deploy", "deploy", deploy_revision="evil",
                          release_dir=str(secured.master_dir))  # fmt: skip
    assert status == 200, reply
    build = secured.wait_for_build(int(next(iter(reply["result"][1].values()))), BUILD_DEADLINE_S)
    assert build["results"] != SUCCESS
    assert "not inside the release root" in build["state_string"]
    for host in ("web1", "web2"):
        assert not list((secured.hosts_dir / host).rglob("state.sqlite"))


def test_with_logins_the_start_up_log_has_no_open_door_warning(secured):
    assert "no logins" not in (secured.master_dir / "twistd.log").read_text()


def test_without_logins_the_start_up_log_warns_that_anyone_can_deploy(cluster):
    """The session's master (conftest.py) runs without BUILDBOT_CD_DEPLOYERS."""
    log = (cluster.master_dir / "twistd.log").read_text()
    assert "no logins (BUILDBOT_CD_DEPLOYERS is unset): anyone who can reach" in log
