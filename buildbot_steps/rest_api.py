"""A minimal client of Buildbot's REST API (`/api/v2`), for the demo and the
integration tests that drive a real master."""

from __future__ import annotations

import http.client
import json
import time
import urllib.request

# A GET is retried: on a swamped machine Buildbot's web server now and then
# closes a response early (IncompleteRead). A POST (it may have started a
# build) is never retried.
GET_ATTEMPTS = 3
RETRY_PAUSE_S = 0.2
REQUEST_TIMEOUT_S = 30


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
            time.sleep(RETRY_PAUSE_S)
