"""A deploy through the web UI, as people do it, in headless Chromium.

A real master (tests/harness/canary_master.py: PushRelease then CanaryRelease,
logins on) deploys to a real web fleet under load. A deployer logs in with the
UI's Login link, forces a deploy of a revision typed in the Deploy form, and
reads what the build did: the revision in the builds table, the push's figures
and the canary chart. An anonymous visitor's Deploy is refused.
"""

from __future__ import annotations

import pytest

pytest.importorskip("selenium")
from selenium.webdriver.common.by import By  # noqa: E402

from harness.browser import send_basic_auth, wait  # noqa: E402
from harness.canary_master import DEPLOYER, CanaryMaster  # noqa: E402
from harness.local_master import wait_until  # noqa: E402
from harness.webfleet import BAD, GOOD, TEST_FLEET_SIZE, LoadGenerator, WebFleet, live_revisions  # noqa: E402

FAILURE = 2  # Buildbot's result code
BUILD_DEADLINE_S = 240
# Load on the fleet while the module runs: bounded in time and in requests.
LOAD_RATE_PER_HOST = 20
LOAD_MAX_S = 600
LOAD_MAX_REQUESTS = 12_000


@pytest.fixture(scope="module")
def master(tmp_path_factory):
    """r1 (good) live on every host; r2 (bad: three times the errors) ready to deploy."""
    root = tmp_path_factory.mktemp("canary-ui")
    with WebFleet(TEST_FLEET_SIZE, root / "web") as fleet, CanaryMaster(root, fleet) as master:
        master.add_release("r1", GOOD)
        master.make_live_everywhere("r1")
        master.add_release("r2", BAD)
        with LoadGenerator(fleet.urls(), LOAD_RATE_PER_HOST, LOAD_MAX_S, max_requests=LOAD_MAX_REQUESTS):
            yield master


def deploy_requests(master: CanaryMaster) -> list[dict]:
    return master.api(f"builders/{master.builder_id('deploy')}/buildrequests")["buildrequests"]


def open_deploy_form(browser, master: CanaryMaster, revision: str):
    """The Deploy dialog of the deploy builder, with `revision` typed in; the dialog."""
    browser.get(f"{master.url}#/builders/{master.builder_id('deploy')}")
    wait(browser, lambda d: d.find_elements(By.XPATH, "//button[normalize-space()='Deploy']"), "Deploy")[
        0
    ].click()
    dialog = wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, ".modal-dialog"), "the Deploy form")[0]
    field = dialog.find_element(By.CSS_SELECTOR, "[data-bb-test-id='force-field-deploy_revision']")
    field.clear()
    field.send_keys(revision)
    return dialog


def start_button(dialog):
    buttons = dialog.find_elements(By.CSS_SELECTOR, ".modal-footer button")
    return next(b for b in buttons if b.text.strip() != "Cancel")


def log_in(browser, master: CanaryMaster, login: tuple[str, str]) -> None:
    """Through the UI's own Login link; the master asks for HTTP basic auth, answered here."""
    browser.get(master.url)
    wait(browser, lambda d: d.find_elements(By.ID, "bb-loginbar-dropdown"), "the Anonymous menu")[0].click()
    link = wait(browser, lambda d: d.find_elements(By.PARTIAL_LINK_TEXT, "Login"), "the Login link")[0]
    send_basic_auth(browser, login)
    try:
        link.click()
        wait(browser, lambda d: login[0] in d.find_element(By.CSS_SELECTOR, "nav").text, "the user's name")
    finally:
        send_basic_auth(browser, None)  # the session cookie carries the login from here


def test_an_anonymous_visitor_cannot_force_a_deploy(browser, master):
    browser.delete_all_cookies()
    before = len(deploy_requests(master))
    dialog = open_deploy_form(browser, master, "r2")
    start_button(dialog).click()
    wait(
        browser,
        lambda d: "deployers" in d.find_element(By.CSS_SELECTOR, ".modal-dialog").text,
        "the form to say the deployers' role is needed",
    )
    assert len(deploy_requests(master)) == before
    assert set(live_revisions(master.runner()).values()) == {"r1"}


def test_a_deployer_forces_a_revision_and_sees_the_canary_chart(browser, master):
    browser.delete_all_cookies()
    log_in(browser, master, DEPLOYER)
    before = {r["buildrequestid"] for r in deploy_requests(master)}
    start_button(open_deploy_form(browser, master, "r2")).click()
    request = wait_until(
        lambda: [r for r in deploy_requests(master) if r["buildrequestid"] not in before],
        BUILD_DEADLINE_S,
        "the deploy request from the form",
    )[0]
    build = wait_until(lambda: master.finished_build(request["buildrequestid"]), BUILD_DEADLINE_S, "deploy")
    properties = master.build_properties(build["buildid"])
    assert build["results"] == FAILURE, build["state_string"]  # bad: rolled back
    assert properties["canary_verdict"][0] == "FAIL"
    assert properties["revision"][0] == "r2"
    assert set(live_revisions(master.runner()).values()) == {"r1"}

    steps = {s["name"]: s for s in master.steps(build["buildid"])}
    push = steps["push-release"]["state_string"]
    assert push.startswith(f"push r2: {TEST_FLEET_SIZE}/{TEST_FLEET_SIZE} hosts ok, ") and " sent" in push

    # The builds table of the deploy builder: the revision column names what was deployed.
    browser.get(f"{master.url}#/builders/{master.builder_id('deploy')}")
    row = wait(
        browser,
        lambda d: [row for row in d.find_elements(By.CSS_SELECTOR, "tr") if "r2" in row.text.split()],
        "a builds-table row with revision r2",
    )[0]
    # Its status says what the deploy did: the push's figures and the canary's verdict.
    assert "push r2" in row.text and "canary FAIL" in row.text, row.text

    canary = steps["canary_release"]
    browser.get(f"{master.url}#/builders/{build['builderid']}/builds/{build['number']}"
                f"/steps/{canary['number']}/logs/report")  # fmt: skip
    chart = wait(
        browser,
        lambda d: d.find_elements(By.CSS_SELECTOR, "svg[aria-label='errors over time']"),
        "the canary report's errors chart",
    )[0]
    labels = {
        t.get_attribute("textContent") for t in chart.find_elements(By.XPATH, ".//*[local-name()='text']")
    }
    assert {"canary", "control / baseline", "decision"} <= labels, labels
    assert chart.find_elements(By.XPATH, ".//*[local-name()='polyline']"), "no line drawn"
    hosts = browser.find_element(By.CSS_SELECTOR, "table.hosts").text
    assert all(name in hosts for name in properties["canary_hosts"][0])
