"""Property: whatever an inventory or a host-script argument holds, it is
accepted only in a form that is safe on a remote command line, or refused
with InvalidInputError; nothing else escapes.

The examples pinned with @example are the ones that got through before:
a trailing newline passed every `^...$` pattern checked with re.match.
"""

from __future__ import annotations

import json
import string

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from buildbot_steps.errors import InvalidInputError
from buildbot_steps.release import inventory
from buildbot_steps.release.inventory import Inventory

BOUNDED = settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

# Nothing a shell, rsync -e or ssh would split on or interpret.
UNSAFE_CHARACTERS = set(string.whitespace) | set("'\"`$\\;&|<>(){}[]*?!~#=%,:@^+") | {"\x00"}

# Strings near the patterns: safe characters with one hostile character in.
near_miss = st.builds(
    lambda head, bad, tail: head + bad + tail,
    st.text(string.ascii_letters + "._/-", max_size=6),
    st.sampled_from(sorted(UNSAFE_CHARACTERS | {"..", "\n", "\r\n", "/../", "\u2028", "\ud800"})),
    st.text(string.ascii_letters + "._/-", max_size=6),
)
words = (
    st.text(max_size=12)
    | near_miss
    | st.from_regex(r"[A-Za-z0-9._/-]{1,12}\n?", fullmatch=True)
    | st.sampled_from(["-oProxyCommand=x", "..", "/srv/..", "/srv/app\n", "web1\n", "/", "."])
)
scalars = st.none() | st.booleans() | st.integers() | st.floats() | words
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(words, inner, max_size=3),
    max_leaves=8,
)
host_entries = st.dictionaries(
    st.sampled_from(sorted(inventory.HOST_KEYS)) | st.text(max_size=4),
    st.one_of(words, st.integers(min_value=-5, max_value=70000), st.lists(words, max_size=3), json_values),
    max_size=6,
)


def assert_safe_host(host: inventory.Host) -> None:
    for pattern, value in (
        (inventory.SAFE_HOST, host.address),
        (inventory.SAFE_TAG, host.name),
        (inventory.SAFE_USER, host.user),
        (inventory.SAFE_WORD, host.deploy_root),
        *((inventory.SAFE_TAG, tag) for tag in host.tags),
    ):
        assert pattern.fullmatch(value), (pattern.pattern, value)
        assert not set(value) & UNSAFE_CHARACTERS, repr(value)
    assert host.deploy_root.startswith("/") and ".." not in host.deploy_root.split("/")
    assert type(host.port) is int and 1 <= host.port <= 65535


@BOUNDED
@given(entries=st.lists(host_entries, max_size=4) | json_values)
@example(entries=[{"address": "web1\n", "deploy_root": "/srv/app"}])
@example(entries=[{"address": "web1", "deploy_root": "/srv/app\n"}])
@example(entries=[{"address": "web1", "deploy_root": "/srv", "user": "root\n"}])
@example(entries=[{"address": "web1", "deploy_root": "/srv", "tags": 3}])
@example(entries=7)
def test_inventory_entries_are_safe_hosts_or_refused(entries):
    try:
        hosts = Inventory.from_entries(entries).hosts
    except InvalidInputError:
        return
    assert hosts
    for host in hosts:
        assert_safe_host(host)


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    return tmp_path_factory.mktemp("inventory") / "inventory.json"


@BOUNDED
@given(data=json_values.map(lambda v: json.dumps(v).encode()) | st.binary(max_size=40))
@example(data=b"[" * 50_000)
@example(data=b'[{"address": "a", "deploy_root": "/srv", "port": 1' + b"0" * 5000 + b"}]")
@example(data=b'{"defaults": [], "hosts": []}')
def test_inventory_files_are_safe_hosts_or_refused(scratch, data):
    scratch.write_bytes(data)
    try:
        hosts = Inventory.from_file(scratch).hosts
    except InvalidInputError as refused:
        assert "\n" not in str(refused).rstrip()
        return
    for host in hosts:
        assert_safe_host(host)


@BOUNDED
@given(value=words | st.integers())
@example(value="release-42\n")
@example(value="a/../b")
@example(value="-rf")
def test_host_script_words_are_safe_or_refused(value):
    try:
        word = inventory.check_word(value, "argument")
    except InvalidInputError:
        return
    assert word == str(value)
    assert not set(word) & UNSAFE_CHARACTERS, repr(word)
    assert not word.startswith("-") and ".." not in word.split("/")
    assert 0 < len(word) <= inventory.MAX_WORD_LENGTH


@BOUNDED
@given(value=words)
@example(value="/srv/app\n")
def test_deploy_roots_and_option_paths_are_safe_or_refused(value):
    for check in (inventory.check_deploy_root, inventory.check_option_path):
        try:
            path = check(value, "path")
        except InvalidInputError:
            continue
        assert path.startswith("/") and ".." not in path.split("/")
        assert not set(path) & (UNSAFE_CHARACTERS - {"%", "+"}), repr(path)


@BOUNDED
@given(value=words | st.builds(lambda k, v: f"{k}={v}", st.text(max_size=8), words))
@example(value="ProxyCommand=nc")
@example(value="ConnectTimeout=5\n")
def test_ssh_options_are_safe_or_refused(value):
    try:
        option = inventory.check_ssh_option(value)
    except InvalidInputError:
        return
    key, _, setting = option.partition("=")
    assert key.isalpha() and key.lower() not in inventory.SSH_OPTIONS_THAT_RUN_COMMANDS
    assert not set(setting) & (UNSAFE_CHARACTERS - {",", "@", "+"}), repr(option)
