"""Driving a Buildbot master on this machine, for the demo and for the
integration tests: a free loopback port, a wait on a readiness condition with
a deadline, and a minimal client of Buildbot's REST API (`/api/v2`)."""

from __future__ import annotations

import http.client
import json
import socket
import time
import urllib.request

# Poll period of wait_until: short, since every wait is bounded by a deadline.
POLL_S = 0.2
# A GET is retried: on a swamped machine Buildbot's web server now and then
# closes a response early (IncompleteRead). A POST (it may have started a
# build) is never retried.
GET_ATTEMPTS = 3
REQUEST_TIMEOUT_S = 30


def free_port() -> int:
    """An unused loopback port chosen by the OS; the master binds it a moment
    later (a tiny race, acceptable on loopback)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(predicate, deadline_s: float, what: str):
    """The first truthy value of `predicate()`; TimeoutError naming `what` past the deadline."""
    deadline = time.monotonic() + deadline_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {deadline_s:.0f} s waiting for {what}")
        time.sleep(POLL_S)


def call(base_url: str, path: str, body: dict | None = None):
    """GET `base_url/api/v2/path`, or POST `body` as JSON; the decoded answer."""
    url = f"{base_url.rstrip('/')}/api/v2/{path}"
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    attempts = GET_ATTEMPTS if body is None else 1
    for attempt in range(1, attempts + 1):
        try:
            with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT_S) as response:
                return json.load(response)
        except (http.client.IncompleteRead, ConnectionResetError):
            if attempt == attempts:
                raise
            time.sleep(POLL_S)
