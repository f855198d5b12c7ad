"""The web UI of a master started from master.cfg.example, in headless Chromium.

Explicit waits with deadlines (WebDriverWait) only: the UI is a single-page
app that fills itself from the REST API, at the speed of a loaded machine.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("selenium")
from selenium.common.exceptions import StaleElementReferenceException  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from harness import demo  # noqa: E402
from harness.fixture_suite import FAILING_TEST, FLAKY_TEST  # noqa: E402

WARNINGS = 1
# Seconds an element of the web UI may take to appear (a loaded 2-core box).
UI_DEADLINE_S = 90
PIPELINE_BUILDERS = ("tests", "tests-shard", "deploy", "rollback")


def wait(driver, condition, what: str, deadline_s: float = UI_DEADLINE_S):
    # The UI re-renders as data arrives: an element found a moment ago may be stale.
    return WebDriverWait(
        driver, deadline_s, poll_frequency=0.25, ignored_exceptions=(StaleElementReferenceException,)
    ).until(condition, message=f"{what} (waited {deadline_s} s)")


def link_texts(driver) -> set[str]:
    return {a.text.strip() for a in driver.find_elements(By.TAG_NAME, "a")}


def test_builders_page_lists_the_pipeline_builders(cluster, browser):
    browser.get(f"{cluster.url}#/builders")
    wait(browser, lambda d: set(PIPELINE_BUILDERS) <= link_texts(d), f"builders {PIPELINE_BUILDERS} listed")


def test_deploy_force_dialog_shows_its_typed_parameters(cluster, browser):
    browser.get(f"{cluster.url}#/builders/{cluster.builder_id('deploy')}")
    button = wait(
        browser,
        lambda d: d.find_elements(By.XPATH, "//button[normalize-space()='Deploy']"),
        "the Deploy button",
    )[0]
    button.click()
    wait(
        browser,
        lambda d: any(
            "Deploy a release" in m.text for m in d.find_elements(By.CSS_SELECTOR, ".modal-dialog")
        ),
        "the force dialog, titled",
    )
    dialog = browser.find_element(By.CSS_SELECTOR, ".modal-dialog")
    revision = dialog.find_element(By.CSS_SELECTOR, "[data-bb-test-id='force-field-deploy_revision']")
    release_dir = dialog.find_element(By.CSS_SELECTOR, "[data-bb-test-id='force-field-release_dir']")
    assert "Revision (recorded in each host's manifest)" in dialog.text
    # Only directories under the release root can be pushed: the label says which.
    assert f"Release directory on the master, under {cluster.release_root}" in dialog.text
    assert revision.get_attribute("type") == "text" and revision.get_attribute("value") == ""
    assert release_dir.get_attribute("value") == ""
    # No source fields: a deploy checks nothing out.
    assert not dialog.find_elements(By.CSS_SELECTOR, "[data-bb-test-id='force-field-revision']")
    dialog.find_element(By.XPATH, ".//button[normalize-space()='Cancel']").click()
    wait(browser, lambda d: not d.find_elements(By.CSS_SELECTOR, ".modal-dialog"), "the dialog to close")


def test_sharded_build_report_log_renders_with_its_svg_timeline(cluster, browser, tests_build):
    assert tests_build["results"] == WARNINGS, tests_build["state_string"]
    assert FLAKY_TEST in tests_build["properties"]["tests_flaky_names"]
    step = next(s for s in cluster.steps(tests_build["buildid"]) if s["name"] == "sharded-tests")
    browser.get(f"{cluster.build_url(tests_build)}/steps/{step['number']}/logs/report")
    timeline = wait(
        browser,
        lambda d: d.find_elements(
            By.XPATH, "//h3[normalize-space()='Timeline per worker']/following-sibling::*[local-name()='svg']"
        ),
        "the report's SVG timeline",
    )[0]
    batches = timeline.find_elements(By.XPATH, ".//*[local-name()='rect']")
    labels = {
        t.get_attribute("textContent") for t in timeline.find_elements(By.XPATH, ".//*[local-name()='text']")
    }
    assert batches, "the timeline draws no batch"
    # One row per shard build ("<worker>#<build number>"), on the shard workers.
    rows = {label.split("#")[0] for label in labels if "#" in label}
    assert rows and rows <= {"shard1", "shard2"}, labels
    body = browser.find_element(By.TAG_NAME, "body").text
    assert FAILING_TEST in body  # quarantined: listed among the failures, not gating
    assert FLAKY_TEST in body


def test_a_green_tests_build_triggers_a_deploy_of_the_tested_tree(cluster, tests_build, triggered_deploy):
    """The pipeline: green (flaky is green) -> release kept -> deploy triggered, not waited for."""
    deploy = triggered_deploy
    assert deploy["results"] == 0, deploy["state_string"]
    revision = f"build-{tests_build['number']}"
    assert deploy["properties"]["release_revision"] == revision
    for host in cluster.hosts:
        current = cluster.hosts_dir / host / "current"
        assert f"revision={revision}" in (current / ".release").read_text()
        assert (current / "tests" / "test_outcomes.py").is_file()


def test_a_commit_on_the_branch_starts_a_tests_build(cluster, triggered_deploy):
    """SingleBranchScheduler: a change on "main" (here from `buildbot sendchange`) requests a tests build."""
    tests_id = cluster.builder_id("tests")
    before = {r["buildrequestid"] for r in cluster.api(f"builders/{tests_id}/buildrequests")["buildrequests"]}
    done = subprocess.run(
        [str(Path(sys.executable).parent / "buildbot"), "sendchange", f"--master=127.0.0.1:{cluster.pb_port}",
         "--auth=change:changepw", "--branch=main", "--revision=c0ffee1", "--who=dev <dev@example.org>",
         "--comments=a commit", "app.py"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr

    def new_requests():
        requests = cluster.api(f"builders/{tests_id}/buildrequests")["buildrequests"]
        return [r for r in requests if r["buildrequestid"] not in before]

    requests = demo.wait_until(new_requests, UI_DEADLINE_S, "a tests build request for the change")
    buildset = cluster.api(f"buildsets/{requests[0]['buildsetid']}")["buildsets"][0]
    assert [ss["revision"] for ss in buildset["sourcestamps"]] == ["c0ffee1"]
