"""Refresh the README's screenshots: real masters, real builds, headless Chromium.

    .venv/bin/python docs/screenshots.py            # writes docs/screenshots/*.png

1. test-report.png     the HTML report of a sharded tests build (fixture suite:
                       a broken and a flaky test), from the demo's master
2. canary-report.png   the CanaryRelease report of a bad release, rolled back
3. deploy-history.png  the deploy builder's builds: revision, result, summary

Everything runs on loopback in a temporary directory and is stopped at the
end. Needs `make install` (the .venv) and Debian's chromium and chromium-driver.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))  # the test harness: real masters and fleets

from selenium.webdriver.common.by import By  # noqa: E402

from harness import demo  # noqa: E402
from harness.browser import chromium, send_basic_auth, wait  # noqa: E402
from harness.canary_master import DEPLOYER, CanaryMaster  # noqa: E402
from harness.local_master import wait_until  # noqa: E402
from harness.webfleet import BAD, GOOD, TEST_FLEET_SIZE, LoadGenerator, WebFleet  # noqa: E402

OUT = HERE / "screenshots"
BUILD_DEADLINE_S = 300
WIDTH = 1280
# Tall enough for a whole report in one picture; the element is cropped out of it.
TALL = 2600
LOAD = {"rate_per_host": 20, "duration_s": 600, "max_requests": 12_000}


def shoot_element(driver, element, name: str) -> Path:
    path = OUT / name
    element.screenshot(str(path))
    print(f"wrote {path.relative_to(HERE.parent)}")
    return path


def report_log(driver, base_url: str, build: dict, step: dict):
    """Open a step's `report` log in the web UI; the element that holds the report."""
    driver.get(
        f"{base_url}#/builders/{build['builderid']}/builds/{build['number']}/steps/{step['number']}/logs/report"
    )
    heading = wait(driver, lambda d: d.find_elements(By.XPATH, "//h3"), "the report's first heading")[0]
    wait(driver, lambda d: d.find_elements(By.XPATH, "//*[local-name()='svg']"), "the report's chart")
    return heading.find_element(By.XPATH, "..")


def test_report(driver, root: Path) -> None:
    cluster = demo.DemoCluster(root / "tests", shard_workers=3, hosts=("web1",))
    try:
        cluster.start()
        build = cluster.wait_for_build(cluster.force("force-tests", "tests"), BUILD_DEADLINE_S)
        step = next(s for s in cluster.steps(build["buildid"]) if s["name"] == "sharded-tests")
        shoot_element(driver, report_log(driver, cluster.url, build, step), "test-report.png")
    finally:
        cluster.stop()


def deploy(master: CanaryMaster, revision: str) -> dict:
    request = master.force_as_deployer("force-deploy", "deploy", deploy_revision=revision)
    return wait_until(lambda: master.finished_build(request), BUILD_DEADLINE_S, f"the deploy of {revision}")


def canary_and_history(driver, root: Path) -> None:
    with WebFleet(TEST_FLEET_SIZE, root / "web") as fleet, CanaryMaster(root / "canary", fleet) as master:
        for revision, behaviour in (("r1", GOOD), ("r2", GOOD), ("r3", BAD)):
            master.add_release(revision, behaviour)
        master.make_live_everywhere("r1")
        with LoadGenerator(fleet.urls(), **LOAD):
            deploy(master, "r2")  # good: every host
            bad = deploy(master, "r3")  # bad: the canary is rolled back
        request = master.force_as_deployer("force-rollback", "rollback", bad_revision="r2")
        wait_until(lambda: master.finished_build(request), BUILD_DEADLINE_S, "the rollback of r2")

        canary = next(s for s in master.steps(bad["buildid"]) if s["name"] == "canary_release")
        shoot_element(driver, report_log(driver, master.url, bad, canary), "canary-report.png")

        driver.get(master.url)
        send_basic_auth(driver, DEPLOYER)  # logged in: the picture shows who deploys
        driver.get(f"{master.url}auth/login")
        send_basic_auth(driver, None)
        driver.get(f"{master.url}#/builders/{master.builder_id('deploy')}")
        table = wait(
            driver,
            lambda d: [
                t for t in d.find_elements(By.CSS_SELECTOR, "table") if "r3" in t.text and "r2" in t.text
            ],
            "the deploy builds table with r2 and r3",
        )[0]
        shoot_element(driver, table.find_element(By.XPATH, "ancestor::div[contains(@class,'container')][1]")
                      if table.find_elements(By.XPATH, "ancestor::div[contains(@class,'container')]")
                      else table, "deploy-history.png")  # fmt: skip


def main() -> int:
    OUT.mkdir(exist_ok=True)
    driver = chromium((WIDTH, TALL))
    if driver is None:
        print("screenshots.py: install Debian's chromium and chromium-driver (make deps)", file=sys.stderr)
        return 2
    try:
        with tempfile.TemporaryDirectory(prefix="bbcd-screenshots-") as directory:
            root = Path(directory)
            canary_and_history(driver, root)
            test_report(driver, root)
    finally:
        driver.quit()
    return 0


if __name__ == "__main__":
    sys.exit(main())
