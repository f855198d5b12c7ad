"""Where metric readings come from: each host's /metrics page, or a Prometheus server.

A source answers `read(hosts, series) -> {host name: (values or None, reason)}`:
the current value of each requested series on each host, or why the host has
none. Reading blocks (HTTP), so the step calls it in a thread
(threads.deferToThread); hosts are read in parallel.

A metrics page is untrusted input: its size is capped, the request times out,
redirects are refused, and a NaN, infinite or negative counter marks the host
missing with a reason instead of reaching the judge. The text format is parsed
with prometheus_client's own parser.

The third source, a command run on each host, is in command_source.py.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import math
import re
import socket
import threading
import urllib.parse
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor

from prometheus_client.parser import text_string_to_metric_families

from buildbot_steps.errors import InvalidInputError
from buildbot_steps.release.inventory import Host

# A node_exporter page is ~100-300 KB; an app's is smaller. Beyond this the
# page is not a metrics page we want to parse on the master.
DEFAULT_MAX_BYTES = 2 * 1024 * 1024
# Longer than a healthy exporter ever takes, short next to a 5 s sampling interval.
DEFAULT_TIMEOUT_S = 3.0
# Parallel requests per reading: enough for a few hundred hosts within the timeout.
DEFAULT_CONCURRENCY = 32
ALLOWED_SCHEMES = ("http", "https")
# The label our one query per reading adds to each series' elements, to tell
# the series apart (see PrometheusQuerySource.read).
SERIES_LABEL = "bbcd_series"
# `name` or `name{label="value",...}`: which samples of the page a series sums.
SELECTOR = re.compile(r"^([A-Za-z_:][A-Za-z0-9_:]*)(?:\{(.*)\})?$")
MATCHER = re.compile(r'^\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*"([^"\\]*)"\s*$')
# Sample names of counters (and summary/histogram parts): never negative.
COUNTER_SUFFIXES = ("_total", "_count", "_sum", "_bucket")

HostValues = tuple[dict[str, float] | None, str]  # (series -> value, or None; reason)


def fetch(url: str, timeout_s: float, max_bytes: int) -> bytes:
    """The body of `url`, whole within `timeout_s`; OSError (or an
    http.client.HTTPException) when it cannot be had. No proxies from the
    environment (metrics are fetched directly), no redirects. The timeout
    bounds the whole request: a socket timeout bounds each read only, and a
    page sent a byte at a time would hold the look (and its cancel) for ever."""
    parts = urllib.parse.urlsplit(url)
    connection = connection_for(parts, timeout_s)
    cut: list[bool] = []
    connected: list[socket.socket] = []  # the response reads it after the connection lets it go
    deadline = threading.Timer(timeout_s, _cut, (connected, cut))
    deadline.start()
    try:
        try:
            connection.connect()
        except OSError as error:
            raise OSError(f"unreachable: {error.strerror or error}") from None
        connected.append(connection.sock)
        if cut:  # the deadline passed before the socket was there to cut
            raise TimeoutError
        connection.request("GET", urllib.parse.urlunsplit(("", "", parts.path or "/", parts.query, "")))
        response = connection.getresponse()
        if 300 <= response.status < 400:
            raise OSError(f"HTTP {response.status}: redirect to {response.getheader('Location')} refused")
        if response.status != 200:
            raise OSError(f"HTTP {response.status} {response.reason}")
        body = response.read(max_bytes + 1)
    except (OSError, http.client.HTTPException):
        if cut:
            raise TimeoutError(f"timed out: no whole answer within {timeout_s:g} s") from None
        raise
    finally:
        deadline.cancel()
        connection.close()
    if cut:
        raise TimeoutError(f"timed out: no whole answer within {timeout_s:g} s")
    if len(body) > max_bytes:
        raise OSError(f"answer larger than {max_bytes} bytes")
    return body


def connection_for(parts: urllib.parse.SplitResult, timeout_s: float) -> http.client.HTTPConnection:
    """Not connected yet. The port is always given: without one, http.client
    would read an IPv6 address's last group as the port."""
    https = parts.scheme == "https"
    port = parts.port or (http.client.HTTPS_PORT if https else http.client.HTTP_PORT)
    kind = http.client.HTTPSConnection if https else http.client.HTTPConnection
    return kind(parts.hostname, port, timeout=timeout_s)


def _cut(connected: list[socket.socket], cut: list[bool]) -> None:
    """The deadline: a read blocked on the socket returns at once."""
    cut.append(True)
    for sock in connected:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


def check_url(url: str, what: str) -> str:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ALLOWED_SCHEMES or not parts.hostname:
        raise InvalidInputError(f"{what}: expected an http:// or https:// URL, got {url!r}")
    return url


def describe(error: BaseException) -> str:
    return str(error) or type(error).__name__


class Selector:
    """Which samples of a page one series means; their values are summed."""

    def __init__(self, text: str):
        match = SELECTOR.match(text.strip())
        matchers = (
            [MATCHER.match(part) for part in (match.group(2) or "").split(",") if part.strip()]
            if match
            else [None]
        )
        if match is None or not all(matchers):
            raise InvalidInputError(f'series {text!r}: expected name or name{{label="value",...}}')
        self.text = text
        self.name = match.group(1)
        self.labels = {m.group(1): m.group(2) for m in matchers if m}
        self.is_counter = self.name.endswith(COUNTER_SUFFIXES)

    def matches(self, name: str, labels: Mapping[str, str]) -> bool:
        return name == self.name and all(labels.get(k) == v for k, v in self.labels.items())


def parse_page(text: str, selectors: list[Selector]) -> HostValues:
    """Sum of each selector's samples on one page, or None and a reason."""
    sums: dict[str, float] = {}
    try:
        families = list(text_string_to_metric_families(text))
    except Exception as error:  # the parser raises ValueError, IndexError, ...: all mean "not valid"
        return None, f"metrics page not in the Prometheus text format: {describe(error)}"
    seen: set[tuple] = set()
    for family in families:
        for sample in family.samples:
            identity = (sample.name, tuple(sorted(sample.labels.items())))
            if identity in seen:  # Prometheus refuses such a page: a sum would count it twice
                return None, f"sample {sample.name}{dict(sample.labels) or ''} appears twice on the page"
            seen.add(identity)
            for selector in selectors:
                if not selector.matches(sample.name, sample.labels):
                    continue
                value = float(sample.value)
                if not math.isfinite(value):
                    return None, f"{sample.name} is {value}"
                if value < 0 and (selector.is_counter or family.type == "counter"):
                    return None, f"counter {sample.name} is negative ({value})"
                sums[selector.text] = sums.get(selector.text, 0.0) + value
    overflown = next((text for text, total in sums.items() if not math.isfinite(total)), None)
    if overflown is not None:
        return None, f"the samples of {overflown} sum to {sums[overflown]}"
    return sums, ""


class ScrapeSource:
    """Each host's own metrics page (an exporter or the app), over HTTP.

    `urls`: a mapping host name -> URL, or a template with {name} and
    {address}, e.g. "http://{address}:9100/metrics".
    """

    def __init__(
        self,
        urls: Mapping[str, str] | str,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        max_bytes: int = DEFAULT_MAX_BYTES,
        concurrency: int = DEFAULT_CONCURRENCY,
    ):
        if isinstance(urls, str):
            check_url(urls.format(name="host", address="host"), "metrics URL template")
        elif isinstance(urls, Mapping):
            urls = {name: check_url(url, f"metrics URL of {name}") for name, url in urls.items()}
        else:
            raise InvalidInputError("metrics URLs: expected a mapping host -> URL or a template string")
        if not timeout_s > 0 or max_bytes < 1 or concurrency < 1:
            raise InvalidInputError("scrape source: timeout, size cap and concurrency must be positive")
        self.urls = urls
        self.timeout_s = float(timeout_s)
        self.max_bytes = int(max_bytes)
        self.concurrency = int(concurrency)

    def url_of(self, host: Host) -> str | None:
        if isinstance(self.urls, str):
            return self.urls.format(name=host.name, address=host.address)
        return self.urls.get(host.name)

    def read(self, hosts: Iterable[Host], series: Iterable[str]) -> dict[str, HostValues]:
        hosts = list(hosts)
        selectors = [Selector(s) for s in sorted(set(series))]
        with ThreadPoolExecutor(min(self.concurrency, max(1, len(hosts)))) as pool:
            answers = pool.map(lambda host: self._read_host(host, selectors), hosts)
            return {host.name: answer for host, answer in zip(hosts, answers)}

    def _read_host(self, host: Host, selectors: list[Selector]) -> HostValues:
        url = self.url_of(host)
        if url is None:
            return None, "no metrics URL configured for this host"
        try:
            body = fetch(url, self.timeout_s, self.max_bytes)
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            return None, "metrics page is not UTF-8"
        except (OSError, ValueError, http.client.HTTPException) as error:  # URLError, timeouts: OSErrors
            return None, describe(error)
        return parse_page(text, selectors)


class PrometheusQuerySource:
    """A Prometheus server's instant query API: each series is a PromQL
    expression whose result has one element per host, told apart by the label
    `host_label` (its value is the host's name, or `label_values[name]`).

    A reading asks for every series in one query, so that all its values come
    from the same scrapes: asked one by one, a scrape landing between two
    queries gave a host's errors from the newer scrape and its requests from
    the older one, and once events with no exposure (errors with no requests).
    """

    def __init__(
        self,
        url: str,
        host_label: str = "instance",
        label_values: Mapping[str, str] | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        max_bytes: int = DEFAULT_MAX_BYTES,
    ):
        self.url = check_url(url, "Prometheus URL").rstrip("/")
        if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", host_label):
            raise InvalidInputError(f"Prometheus host label {host_label!r} is not a label name")
        self.host_label = host_label
        self.label_values = dict(label_values or {})
        self.timeout_s = float(timeout_s)
        self.max_bytes = int(max_bytes)

    def query(self, expression: str) -> list[dict]:
        """The result's elements ({"metric": labels, "value": [time, text]});
        OSError or ValueError when the server says no."""
        url = f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": expression})
        try:
            answer = json.loads(fetch(url, self.timeout_s, self.max_bytes))
        except RecursionError:
            raise ValueError(f"query {expression!r}: the answer is nested too deep") from None
        if not isinstance(answer, dict):
            raise ValueError(f"query {expression!r}: the answer is not a JSON object")
        if answer.get("status") != "success":
            raise ValueError(f"query {expression!r} failed: {str(answer.get('error', answer))[:200]!r}")
        data = answer.get("data")
        if not isinstance(data, dict) or data.get("resultType") != "vector":
            kind = data.get("resultType") if isinstance(data, dict) else type(data).__name__
            raise ValueError(f"query {expression!r} returned a {kind}, not an instant vector")
        result = data.get("result", [])
        if not isinstance(result, list) or not all(map(is_vector_element, result)):
            raise ValueError(f"query {expression!r}: the result is not a list of vector elements")
        return result

    def read(self, hosts: Iterable[Host], series: Iterable[str]) -> dict[str, HostValues]:
        hosts = list(hosts)
        expressions = sorted(set(series))
        try:
            elements = self.query(one_query(expressions)) if expressions else []
            results = self._values_by_host(expressions, elements)
        except (OSError, ValueError, KeyError, IndexError, TypeError, http.client.HTTPException) as error:
            reason = f"Prometheus query failed: {describe(error)}"
            return {host.name: (None, reason) for host in hosts}
        answers: dict[str, HostValues] = {}
        for host in hosts:
            key = self.label_values.get(host.name, host.name)
            values = results.get(key, {})
            bad = next((expr for expr, value in values.items() if not math.isfinite(value)), None)
            if bad is not None:
                answers[host.name] = (None, f"{bad} is {values[bad]}")
            elif not values:
                answers[host.name] = (None, f"no series with {self.host_label}={key!r} in Prometheus")
            else:
                answers[host.name] = (values, "")
        return answers

    def _values_by_host(self, expressions: list[str], elements: list[dict]) -> dict[str, dict[str, float]]:
        """host label value -> {expression: value}, from one_query's elements."""
        values: dict[str, dict[str, float]] = {}
        for element in elements:
            labels = element["metric"]
            key = labels.get(self.host_label)
            if key is not None:
                tag = labels.get(SERIES_LABEL, "")
                if not (tag.isdecimal() and int(tag) < len(expressions)):
                    raise ValueError(f"an element without a series of the query: {str(labels)[:200]}")
                expression = expressions[int(tag)]
                if expression in values.get(key, {}):
                    # Which one wins would follow the answer's order, which may change between looks.
                    raise ValueError(f"two elements for {self.host_label}={key!r} in {expression!r}")
                values.setdefault(key, {})[expression] = float(element["value"][1])
        return values


def is_vector_element(element: object) -> bool:
    """{"metric": {label: text}, "value": [time, text]}, as the instant query API answers."""
    if not isinstance(element, dict):
        return False
    labels, value = element.get("metric"), element.get("value")
    return (
        isinstance(labels, dict)
        and all(isinstance(v, str) for v in labels.values())
        and isinstance(value, list)
        and len(value) == 2
        and isinstance(value[1], str)
    )


def one_query(expressions: list[str]) -> str:
    """The expressions as one PromQL query: each one's elements tagged with its
    index in SERIES_LABEL (label_replace with an empty source and regex sets
    it), joined with `or`, which keeps every element of every operand since
    their tags differ. Each expression on lines of its own, so that a
    trailing PromQL comment in it ends with its line."""
    return " or ".join(
        f'label_replace((\n{expression}\n), "{SERIES_LABEL}", "{index}", "", "")'
        for index, expression in enumerate(expressions)
    )
