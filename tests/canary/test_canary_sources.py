"""The metric sources against real servers: the web fleet's /metrics pages,
hostile pages from a local HTTP server, a real Prometheus server, and a
command run on each host over the local transport."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from buildbot_steps import release
from buildbot_steps.canary import CommandSource, PrometheusQuerySource, ScrapeSource
from buildbot_steps.canary.metrics import MetricConfig, Reading, counter_increase, host_figure
from buildbot_steps.canary.sources import Selector, connection_for, parse_page
from buildbot_steps.errors import InvalidInputError
from harness.local_master import wait_until
from harness.webfleet import LoadGenerator

# Back to back, a few seconds of readings: they straddle several of the test
# Prometheus's 1 s scrapes.
READINGS_BACK_TO_BACK = 200
REQUESTS = "app_requests_total"
ERRORS = "app_errors_total"

PAGE = """# HELP app_requests_total Requests
# TYPE app_requests_total counter
app_requests_total{code="200"} 90
app_requests_total{code="500"} 10
# HELP node_load1 Load
# TYPE node_load1 gauge
node_load1 0.5
"""


def test_parse_page_sums_samples_and_matches_labels():
    values, reason = parse_page(PAGE, [Selector(REQUESTS), Selector('app_requests_total{code="500"}')])
    assert reason == ""
    assert values == {REQUESTS: 100.0, 'app_requests_total{code="500"}': 10.0}


@pytest.mark.parametrize(
    "page, reason",
    [
        ("# TYPE app_requests_total counter\napp_requests_total NaN\n", "is nan"),
        ("# TYPE app_requests_total counter\napp_requests_total +Inf\n", "is inf"),
        ("# TYPE app_requests_total counter\napp_requests_total -3\n", "negative"),
        ("app_requests_total{ 12 garbage\n", "not in the Prometheus text format"),
    ],
)
def test_bad_pages_make_the_host_missing_with_a_reason(page, reason):
    values, why = parse_page(page, [Selector(REQUESTS)])
    assert values is None
    assert reason in why


def test_counters_out_of_step_or_below_zero_make_the_host_missing_not_the_judge_fail():
    errors = MetricConfig.from_entry({"name": "errors", "events": ERRORS, "exposure": REQUESTS})

    def figure(first: tuple[float, float], last: tuple[float, float]):
        readings = [Reading(t, {ERRORS: e, REQUESTS: r}) for t, (e, r) in enumerate((first, last))]
        return host_figure(errors, readings)

    out_of_step = figure((5, 100), (7, 100))
    assert out_of_step.missing and "2 events with no exposure" in out_of_step.reason
    quiet = figure((5, 100), (5, 100))
    assert not quiet.missing and (quiet.events, quiet.exposure) == (0, 0)
    below = figure((-5, 100), (2, 110))
    assert below.missing and f"counter {ERRORS!r} read below zero" in below.reason


def test_bad_selectors_and_urls_are_refused():
    with pytest.raises(InvalidInputError, match="expected name"):
        Selector("rate(x[5m])")
    with pytest.raises(InvalidInputError, match="http"):
        ScrapeSource({"web1": "file:///etc/passwd"})


def test_counter_increase_survives_a_restart():
    assert counter_increase([10, 15, 3, 7]) == 5 + 3 + 4
    errors = MetricConfig.from_entry({"name": "errors", "events": ERRORS, "exposure": REQUESTS})
    readings = [
        Reading(0, {ERRORS: 5, REQUESTS: 100}),
        Reading(1, {ERRORS: 2, REQUESTS: 10}),
        Reading(2, {ERRORS: 4, REQUESTS: 50}),
    ]
    figure = host_figure(errors, readings)
    assert (figure.events, figure.exposure) == (4, 50)
    down = host_figure(errors, [*readings, Reading(3, None, "unreachable: refused")])
    assert down.missing and "refused" in down.reason


def test_scrape_source_reads_every_fleet_host_and_reports_a_dead_one(web_fleet):
    urls = web_fleet.metrics_urls()
    with LoadGenerator(web_fleet.urls(), rate_per_host=50, duration_s=30, max_requests=10) as load:
        wait_until(lambda: load.sent >= 10 * len(urls), 30, "the load generator's requests")
    web_fleet.stop_host("web3")
    source = ScrapeSource(urls, timeout_s=2)
    answers = source.read(
        release.Inventory.from_entries(web_fleet.inventory_entries()).hosts,
        [REQUESTS, "node_load1", "process_cpu_seconds_total"],
    )
    assert answers["web3"][0] is None and "unreachable" in answers["web3"][1]
    for name in web_fleet.names():
        if name != "web3":
            values, reason = answers[name]
            assert reason == "" and values[REQUESTS] == 10  # no release live: 503s, still counted
            assert values["node_load1"] >= 0 and values["process_cpu_seconds_total"] > 0


class QuietHandler(BaseHTTPRequestHandler):
    def send_body(self, body: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class HostileHandler(QuietHandler):
    def do_GET(self):  # noqa: N802
        if self.path == "/huge":
            body = b"# TYPE x counter\n" + b"x 1\n" * 100_000
        elif self.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", "http://127.0.0.1:1/metrics")
            self.end_headers()
            return
        else:
            body = b"\xff\xfe not text"
        self.send_body(body)


def test_hostile_pages_are_capped_refused_or_timed_out():
    server = ThreadingHTTPServer(("127.0.0.1", 0), HostileHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    silent = socket.socket()  # listens but never answers: the request must time out
    silent.bind(("127.0.0.1", 0))
    silent.listen()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    urls = {
        "huge": f"{base}/huge",
        "redirect": f"{base}/redirect",
        "binary": f"{base}/binary",
        "silent": f"http://127.0.0.1:{silent.getsockname()[1]}/metrics",
    }
    hosts = [release.Host(name, "127.0.0.1", 22, "root", "/srv") for name in urls]
    try:
        answers = ScrapeSource(urls, timeout_s=0.5, max_bytes=64 * 1024).read(hosts, ["x"])
    finally:
        server.shutdown()
        silent.close()
    assert "larger than" in answers["huge"][1]
    assert "redirect" in answers["redirect"][1]
    assert "UTF-8" in answers["binary"][1]
    assert "timed out" in answers["silent"][1]
    assert all(values is None for values, _ in answers.values())


class UntaggedPrometheusHandler(QuietHandler):
    """A query API answering with an element of no series of the query: its
    tag (bbcd_series) missing or out of range, by path."""

    TAGS = {"/missing": {}, "/beyond": {"bbcd_series": "7"}, "/negative": {"bbcd_series": "-1"}}

    def do_GET(self):  # noqa: N802
        prefix = self.path.split("/api/")[0]
        metric = {"host": "h1", **self.TAGS[prefix]}
        answer = {
            "status": "success",
            "data": {"resultType": "vector", "result": [{"metric": metric, "value": [0, "1"]}]},
        }
        self.send_body(json.dumps(answer).encode())


@pytest.mark.parametrize("path", sorted(UntaggedPrometheusHandler.TAGS))
def test_a_prometheus_answer_outside_the_query_makes_every_host_missing(path):
    server = ThreadingHTTPServer(("127.0.0.1", 0), UntaggedPrometheusHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    source = PrometheusQuerySource(f"http://127.0.0.1:{server.server_address[1]}{path}", host_label="host")
    hosts = [release.Host(name, "127.0.0.1", 22, "root", "/srv") for name in ("h1", "h2")]
    try:
        answers = source.read(hosts, ["up", "node_load1"])
    finally:
        server.shutdown()
    assert all(
        values is None and "without a series of the query" in reason for values, reason in answers.values()
    )


def element(metric: dict, value: object = "1") -> dict:
    return {"metric": {"host": "h1", **metric}, "value": [0, value]}


MALFORMED_PROMETHEUS = {
    "/list-data": {"status": "success", "data": []},
    "/text-element": {"status": "success", "data": {"resultType": "vector", "result": ["x"]}},
    "/number-tag": {
        "status": "success",
        "data": {"resultType": "vector", "result": [element({"bbcd_series": 0})]},
    },
    "/number-value": {"status": "success", "data": {"resultType": "vector", "result": [element({}, 1)]}},
    "/twice": {
        "status": "success",
        "data": {"resultType": "vector", "result": [element({"bbcd_series": "0"}, v) for v in ("1", "7")]},
    },
    "/deep": None,  # 100,000 nested lists
}


class MalformedPrometheusHandler(QuietHandler):
    def do_GET(self):  # noqa: N802
        answer = MALFORMED_PROMETHEUS[self.path.split("/api/")[0]]
        self.send_body(b"[" * 100_000 + b"]" * 100_000 if answer is None else json.dumps(answer).encode())


@pytest.mark.parametrize("path", sorted(MALFORMED_PROMETHEUS))
def test_a_malformed_prometheus_answer_makes_every_host_missing(path):
    server = ThreadingHTTPServer(("127.0.0.1", 0), MalformedPrometheusHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    source = PrometheusQuerySource(
        f"http://127.0.0.1:{server.server_address[1]}{path}", host_label="host", max_bytes=10**6
    )
    hosts = [release.Host(name, "127.0.0.1", 22, "root", "/srv") for name in ("h1", "h2")]
    try:
        answers = source.read(hosts, ["up"])
    finally:
        server.shutdown()
    assert all(
        values is None and reason.startswith("Prometheus query failed") for values, reason in answers.values()
    )


class TricklingHandler(QuietHandler):
    """A page sent a byte at a time: each read is quick, the whole never comes
    (bounded: at most TRICKLE_BYTES bytes, one every TRICKLE_PAUSE_S)."""

    def do_GET(self):  # noqa: N802
        self.send_response(200)
        self.send_header("Content-Length", str(TRICKLE_BYTES))
        self.end_headers()
        with contextlib.suppress(OSError):
            for _ in range(TRICKLE_BYTES):
                self.wfile.write(b"#")
                self.wfile.flush()
                time.sleep(TRICKLE_PAUSE_S)  # the attack's pace, not a wait for a condition


TRICKLE_BYTES, TRICKLE_PAUSE_S = 400, 0.05  # 20 s in all, 40 times the timeout below


def test_a_page_sent_a_byte_at_a_time_times_out_as_a_whole():
    server = ThreadingHTTPServer(("127.0.0.1", 0), TricklingHandler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    hosts = [release.Host("slow", "127.0.0.1", 22, "root", "/srv")]
    url = f"http://127.0.0.1:{server.server_address[1]}/metrics"
    try:
        answers = ScrapeSource({"slow": url}, timeout_s=0.5).read(hosts, ["x"])
    finally:
        server.shutdown()
    values, reason = answers["slow"]
    assert values is None and "timed out" in reason, reason


@pytest.mark.parametrize(
    "url, host, port",
    [
        ("http://[::1]/metrics", "::1", 80),
        ("https://[2001:db8::5]/", "2001:db8::5", 443),
        ("http://web1:9100/metrics?x=1", "web1", 9100),
        ("http://127.0.0.1/metrics", "127.0.0.1", 80),
    ],
)
def test_a_metrics_url_connects_to_its_host_and_port(url, host, port):
    connection = connection_for(urllib.parse.urlsplit(url), 1.0)
    assert (connection.host, connection.port) == (host, port)


def test_a_sample_twice_on_a_page_makes_the_host_missing():
    values, reason = parse_page('x_total{a="1"} 1\nx_total{a="1"} 1\n', [Selector("x_total")])
    assert values is None and "appears twice" in reason
    values, reason = parse_page('x_total{a="1"} 1\nx_total{a="2"} 1\n', [Selector("x_total")])
    assert values == {"x_total": 2.0} and reason == ""


def test_samples_that_sum_past_a_float_make_the_host_missing():
    values, reason = parse_page('x_total{a="1"} 1e308\nx_total{a="2"} 1e308\n', [Selector("x_total")])
    assert values is None and "sum to inf" in reason
    latency = MetricConfig("latency", "gauge", ("lat",), scale=1e10)
    figure = host_figure(latency, [Reading(0, {"lat": 1e300}, ""), Reading(1, {"lat": 1e300}, "")])
    assert figure.missing and "overflows" in figure.reason


def test_command_source_over_the_local_transport(tmp_path):
    hosts = []
    for index, content in enumerate(["load1 0.25\nerrors_total 7\nnoise\n", "load1 NaN\n", None]):
        root = tmp_path / f"h{index}"
        root.mkdir()
        if content is not None:
            (root / "stats").write_text(content)
        hosts.append(release.Host(f"h{index}", "localhost", 22, "root", str(root)))
    source = CommandSource(["cat", "{deploy_root}/stats"], release.LocalTransport(), timeout_s=10)
    answers = source.read(hosts, ["load1", "errors_total"])
    assert answers["h0"] == ({"load1": 0.25, "errors_total": 7.0}, "")
    assert answers["h1"][0] is None and "nan" in answers["h1"][1]
    assert answers["h2"][0] is None and "command failed" in answers["h2"][1]


def test_prometheus_query_source_reads_one_value_per_host(web_fleet, prometheus):
    source = PrometheusQuerySource(prometheus.url, host_label="host")
    hosts = release.Inventory.from_entries(web_fleet.inventory_entries()).hosts

    def all_up():
        answers = source.read(hosts, ["up"])
        return all(values is not None and values.get("up") == 1 for values, _ in answers.values())

    wait_until(all_up, 60, "Prometheus to scrape every web host")
    answers = source.read(hosts, [REQUESTS, "sum by (host) (node_load1)"])
    assert all(
        values[REQUESTS] >= 0 and "sum by (host) (node_load1)" in values for values, _ in answers.values()
    )
    broken = source.read(hosts, ["sum(("])
    assert all(values is None and "query failed" in reason for values, reason in broken.values())
    commented = source.read(hosts, ["up # a PromQL comment ends with its line"])
    assert all(values == {"up # a PromQL comment ends with its line": 1} for values, _ in commented.values())


def test_every_series_of_a_prometheus_reading_comes_from_the_same_scrape(web_fleet, prometheus):
    # Each series' sample time: equal for every host in every reading when the
    # series are read together, whatever scrapes land while the master asks.
    source = PrometheusQuerySource(prometheus.url, host_label="host")
    hosts = release.Inventory.from_entries(web_fleet.inventory_entries()).hosts
    stamps = [f"timestamp({REQUESTS})", f"timestamp({ERRORS})", "timestamp(up)"]
    wait_until(
        lambda: all(values is not None for values, _ in source.read(hosts, stamps).values()),
        60,
        "Prometheus to scrape every web host",
    )
    for _ in range(READINGS_BACK_TO_BACK):
        for values, reason in source.read(hosts, stamps).values():
            assert values is not None, reason
            assert len(set(values.values())) == 1, values


def test_the_ssh_command_is_one_exactly_quoted_remote_line():
    host = release.Host("web1", "web1.example", 2222, "deploy", "/srv/app")
    spec = release.SshTransport(control_dir="/tmp/x").command(
        host, ["grep", "-c", "a b; rm", "{deploy_root}/log"]
    )
    assert spec.argv[0] == "ssh" and "deploy@web1.example" in spec.argv
    assert spec.argv[-1] == "grep -c 'a b; rm' /srv/app/log"
    with pytest.raises(InvalidInputError, match="non-empty list"):
        CommandSource([])
