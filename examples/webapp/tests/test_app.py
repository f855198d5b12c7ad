"""The shop's own tests: what its developers run before they commit."""

from wsgiref.util import setup_testing_defaults

import app


def request(path: str = "/") -> tuple[str, bytes]:
    environ: dict = {"PATH_INFO": path}
    setup_testing_defaults(environ)
    environ["PATH_INFO"] = path
    answer = {}

    def start_response(status, headers):
        answer["status"] = status

    body = b"".join(app.application(environ, start_response))
    return answer["status"], body


def test_the_page_has_the_title():
    assert f"<h1>{app.TITLE}</h1>" in app.render_page(visit=1)


def test_the_page_lists_every_product():
    page = app.render_page(visit=1)
    for name in app.PRODUCTS:
        assert f"<li>{name}:" in page


def test_a_request_gets_the_page():
    status, body = request("/")
    assert status in ("200 OK", "503 Service Unavailable")
    assert body


def test_health():
    assert request("/health") == ("200 OK", b"ok\n")


def test_a_stock_outage_is_a_503_not_a_crash():
    try:
        app.render_page(visit=app.STOCK_FAILURE_EVERY)
    except app.StockUnavailable:
        pass
    else:
        raise AssertionError("the stock service is expected to fail on this visit")
