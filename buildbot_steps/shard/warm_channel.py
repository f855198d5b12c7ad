"""The master's end of the warm pytest runners: batches over the master's web server.

Buildbot's worker protocol runs one command at a time per build and cannot
feed a running one, so a warm runner (warm_pytest_plugin.py: one pytest
process per shard) reaches the master over HTTP instead: the `buildbot_cd`
www plugin, mounted by Buildbot at <buildbotURL>plugins/buildbot_cd/. Enable
it in master.cfg:

    c["www"]["plugins"]["buildbot_cd"] = {}

Why the master's own web server and not a port of ours: workers already
reach the master's URL (it is the one the web UI links to), nothing new is
opened, and TLS or a proxy in front of the master covers it too.

Deny by default: a request is served only with the secret of a running
shard (`Authorization: Bearer <token>`, 256 random bits, made per shard build
and passed to the runner in its environment, never logged); the secret
is forgotten when the shard's runner ends. A reply tells nothing to a
request without it. Bodies are capped and reports are checked as the JUnit
reports are: a runner is untrusted input.
"""

from __future__ import annotations

import dataclasses
import enum
import hmac
import json
import math
import secrets
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from twisted.internet import defer
from twisted.python import log as twisted_log
from twisted.web import resource, server

from buildbot_steps.shard.junit import MAX_MESSAGE_CHARS, JUnitTestResult
from buildbot_steps.shard.planning import MAX_TEST_DURATION_S

PLUGIN_NAME = "buildbot_cd"
QUEUE_PATH = "queue"
# The runner's side, warm_pytest_plugin.py: the name it is given on the worker
# (and to `pytest -p`), and the environment that tells it where and who it is.
PLUGIN_MODULE = "buildbot_cd_warm"
PLUGIN_SOURCE = Path(__file__).with_name("warm_pytest_plugin.py")
QUEUE_URL_ENV = "BUILDBOT_CD_QUEUE_URL"
QUEUE_TOKEN_ENV = "BUILDBOT_CD_QUEUE_TOKEN"
# 256 bits: not guessable within any number of requests a master can serve.
TOKEN_BYTES = 32
OUTCOMES = ("passed", "failed", "skipped")


class ChannelError(Exception):
    """A request this channel refuses; the text goes back to the runner."""


class AskAgain(enum.Enum):
    """What next_batch() returns for a request it held long enough without a
    batch: the runner is told to ask again ({"kind": "wait"})."""

    ASK_AGAIN = "ask again"


ASK_AGAIN = AskAgain.ASK_AGAIN


@dataclasses.dataclass
class RunningBatch:
    batch: Any  # session.AnyBatch
    started_s: float


class WarmChannel:
    """One warm runner's channel: hands it batches and takes its results.

    next_batch() -> the next batch for this shard, None when it is done (the
    step's own wait-and-stall logic), or ASK_AGAIN; hand_in(batch, results, wall_s,
    problem) the step's: `problem` is why the batch failed as a whole (results
    refused), else None. Batches handed out and not reported are `running`
    (the step fails them if the runner ends first). on_end(after, error): how
    the runner's session ended once it was told it is done: its teardown
    after the test `after` ("" if none ran), and None or the error.
    """

    def __init__(
        self,
        next_batch: Callable[[], Awaitable[Any]],
        hand_in: Callable[[Any, list[JUnitTestResult], float, str | None], None],
        clock: Callable[[], float],
        max_body_bytes: int,
        on_end: Callable[[str, str | None], None],
    ):
        self.token = secrets.token_urlsafe(TOKEN_BYTES)
        self.max_body_bytes = max_body_bytes
        self.running: dict[int, RunningBatch] = {}
        self.said_done = False
        self.ended = False  # the runner said how its session ended
        self.closed = False  # the runner ended: a request still held takes no batch
        self._next_batch = next_batch
        self._hand_in = hand_in
        self._on_end = on_end
        self._clock = clock

    async def handle(self, payload: object) -> dict:
        if not isinstance(payload, dict):
            raise ChannelError("a request is a JSON object")
        op = payload.get("op")
        if op == "next":
            return await self._next()
        if op == "report":
            return self._report(payload.get("batch"), payload.get("results"))
        if op == "end":
            return self._end(payload.get("error"), payload.get("after"))
        raise ChannelError(f"unknown op {op!r}: 'next', 'report' or 'end'")

    async def _next(self) -> dict:
        if self.said_done:
            return {"kind": "done"}
        batch = await self._next_batch()
        if batch is ASK_AGAIN:
            return {"kind": "wait"}
        if batch is None:
            self.said_done = True
            return {"kind": "done"}
        self.running[batch.id] = RunningBatch(batch, self._clock())
        return {"kind": "run", "batch": batch.id, "tests": list(batch.tests)}

    def _report(self, batch_id: object, results: object) -> dict:
        if isinstance(batch_id, bool) or not isinstance(batch_id, int) or batch_id not in self.running:
            raise ChannelError(f"batch {batch_id!r} is not running on this shard")
        running = self.running.pop(batch_id)
        wall_s = self._clock() - running.started_s
        try:
            checked = results_of(results, set(running.batch.tests))
        except ChannelError as refused:
            # As a JUnit report that cannot be read: the batch fails as a whole.
            self._hand_in(running.batch, [], wall_s, f"results refused: {refused}")
            raise
        self._hand_in(running.batch, checked, wall_s, None)
        return {"ok": True}

    def _end(self, error: object, after: object) -> dict:
        if not self.said_done or self.ended:
            raise ChannelError("'end' comes once, after 'done'")
        if not (error is None or isinstance(error, str)) or not (after is None or isinstance(after, str)):
            raise ChannelError("'error' and 'after' are text or null")
        self.ended = True
        # One line: a runner's text must not pass for the master's lines in the logs.
        after_line = " ".join((after or "").split())[:MAX_MESSAGE_CHARS]
        self._on_end(after_line, error[:MAX_MESSAGE_CHARS] if error else None)
        return {"ok": True}


def results_of(results: object, batch_tests: set[str]) -> list[JUnitTestResult]:
    """The runner's results, checked: only the batch's tests, once each."""
    if not isinstance(results, list):
        raise ChannelError("results must be a list")
    checked: dict[str, JUnitTestResult] = {}
    for entry in results:
        if (
            not isinstance(entry, dict)
            or not isinstance(entry.get("id"), str)
            or entry["id"] not in batch_tests
        ):
            raise ChannelError(f"result {str(entry)[:200]!r} is not for a test of this batch")
        test_id, outcome, seconds = entry["id"], entry.get("outcome"), entry.get("seconds")
        if test_id in checked:
            raise ChannelError(f"test {test_id!r} reported twice")
        if outcome not in OUTCOMES:
            raise ChannelError(f"test {test_id!r}: outcome {outcome!r} is not one of {OUTCOMES}")
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
            raise ChannelError(f"test {test_id!r}: seconds {seconds!r} is not a number")
        # The bounds first: an int too large for a float has no isfinite.
        if not (0 <= seconds <= MAX_TEST_DURATION_S and math.isfinite(seconds)):
            shown = str(seconds)[:40]
            raise ChannelError(f"test {test_id!r} took {shown} s; between 0 and {MAX_TEST_DURATION_S:.0f}")
        message = entry.get("message", "")
        checked[test_id] = JUnitTestResult(
            id=test_id,
            passed=outcome == "passed",
            seconds=float(seconds),
            message=(message if isinstance(message, str) else "")[:MAX_MESSAGE_CHARS],
            skipped=outcome == "skipped",
        )
    return list(checked.values())


# ------------------------------------------------------------ the registry

_channels: dict[str, WarmChannel] = {}


def open_channel(channel: WarmChannel) -> None:
    _channels[channel.token] = channel


def close_channel(channel: WarmChannel) -> None:
    channel.closed = True
    _channels.pop(channel.token, None)


def channel_for(authorization: bytes | None) -> WarmChannel | None:
    scheme, _, token = (authorization or b"").decode("latin-1").partition(" ")
    if scheme != "Bearer" or not token:
        return None
    found = _channels.get(token)
    # The dict finds the candidate; the comparison that grants is constant-time.
    return found if found is not None and hmac.compare_digest(found.token, token) else None


# ------------------------------------------------------------ the web side


class QueueResource(resource.Resource):
    """The plugin's root. POST queue: a warm runner's requests. GET: the web
    UI's files of the plugin (it loads scripts.js and styles.css of every
    configured plugin; this one has no UI, so they are empty)."""

    isLeaf = True

    def render_GET(self, request: server.Request) -> bytes:
        if request.postpath == [b"scripts.js"]:
            request.setHeader(b"content-type", b"text/javascript")
            return b""
        if request.postpath == [b"styles.css"]:
            request.setHeader(b"content-type", b"text/css")
            return b""
        request.setResponseCode(404)
        return b"not found\n"

    def render_POST(self, request: server.Request) -> int:
        if request.postpath != [QUEUE_PATH.encode()]:
            return _reply(request, 404, {"error": "not found"})
        channel = channel_for(request.getHeader(b"authorization"))
        if channel is None:
            return _reply(request, 403, {"error": "no running shard has this token"})
        body = request.content.read(channel.max_body_bytes + 1)
        if len(body) > channel.max_body_bytes:
            return _reply(request, 413, {"error": f"request over {channel.max_body_bytes} bytes"})
        try:
            payload = json.loads(body)
        except ValueError:
            return _reply(request, 400, {"error": "the body is not JSON"})
        # A runner gone mid-request gets no answer; a batch handed to it fails when its command ends.
        gone: list[bool] = []
        request.notifyFinish().addErrback(lambda _: gone.append(True))
        answer = defer.ensureDeferred(channel.handle(payload))
        answer.addCallbacks(
            lambda reply: gone or _reply(request, 200, reply),
            lambda failure: gone or _refuse(request, failure),
        )
        return server.NOT_DONE_YET


def _refuse(request: server.Request, failure: Any) -> None:
    if failure.check(ChannelError):
        _reply(request, 400, {"error": str(failure.value)})
        return
    twisted_log.err(failure, "buildbot_cd queue")
    _reply(request, 500, {"error": "internal error on the master (see twistd.log)"})


def _reply(request: server.Request, code: int, body: dict) -> int:
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"application/json")
    request.write(json.dumps(body).encode())
    request.finish()
    return server.NOT_DONE_YET


class WwwPlugin:
    """Buildbot's www plugin interface (what buildbot.www.service needs of one)."""

    description = "buildbot-cd: the queue that warm shard runners pull batches from"
    version = "1"
    ui = False

    def __init__(self) -> None:
        self.resource = QueueResource()
        self.master = None

    def setMaster(self, master: object) -> None:  # noqa: N802 (Buildbot's name)
        self.master = master

    def setConfiguration(self, config: object) -> None:  # noqa: N802 (Buildbot's name)
        pass


www_plugin = WwwPlugin()
