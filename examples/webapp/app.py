"""The demo shop: a tiny WSGI application, what the demo's fleet serves.

    python app.py 8000          # serve it on 127.0.0.1:8000 (wsgiref)

Each web host of the demo loads this file from its live release and calls
`application` for every request, so a commit changes what the fleet serves
once the pipeline has pushed and flipped it.

The shop depends on a stock service that, like most real dependencies, now
and then fails: one call in STOCK_FAILURE_EVERY does, and the page answers
503. That steady trickle of errors is what the canary judge compares the
canary hosts against.
"""

from __future__ import annotations

import itertools
import sys
import threading
from wsgiref.simple_server import make_server

TITLE = "The demo shop"
PRODUCTS = ("teapot", "kettle", "mug")
# The stock service's failure rate in production: one call in 20 (5 %).
STOCK_FAILURE_EVERY = 20


class StockUnavailable(Exception):
    """The stock service did not answer."""


_visits = itertools.count(1)
_visits_lock = threading.Lock()


def next_visit() -> int:
    with _visits_lock:
        return next(_visits)


def stock_level(visit: int) -> int:
    if visit % STOCK_FAILURE_EVERY == 0:
        raise StockUnavailable("the stock service timed out")
    return 3


def render_page(visit: int) -> str:
    items = "".join(f"<li>{name}: {stock_level(visit)} in stock</li>" for name in PRODUCTS)
    return f"<!doctype html><title>{TITLE}</title><h1>{TITLE}</h1><ul>{items}</ul>\n"


def application(environ, start_response):
    if environ.get("PATH_INFO", "/") == "/health":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok\n"]
    try:
        body = render_page(next_visit()).encode()
        status = "200 OK"
    except StockUnavailable:
        body, status = b"stock service unavailable, try again\n", "503 Service Unavailable"
    start_response(status, [("Content-Type", "text/html; charset=utf-8"), ("Content-Length", str(len(body)))])
    return [body]


if __name__ == "__main__":
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 8000
    with make_server("127.0.0.1", port, application) as server:
        print(f"serving {TITLE} on http://127.0.0.1:{port}/")
        server.serve_forever()
