"""Headless Chromium through Selenium, from Debian's chromium and chromium-driver:
for the browser tests and the README's screenshots.

    driver = chromium()            # None when Chromium or its driver is not installed
    try:
        driver.get(url)
        ...
    finally:
        driver.quit()

Waits are explicit, with deadlines (`wait`): the web UI is a single-page app
that fills itself from the REST API, at the speed of a loaded machine.
"""

from __future__ import annotations

import base64
import shutil

# Seconds the driver may take to load a page (a loaded 2-core box).
PAGE_LOAD_DEADLINE_S = 90
# Seconds an element of the web UI may take to appear.
UI_DEADLINE_S = 90
WINDOW_SIZE = (1400, 1000)


def chromium(window_size: tuple[int, int] = WINDOW_SIZE):
    """A headless Chromium WebDriver, or None without Debian's chromium and chromium-driver."""
    browser_path = shutil.which("chromium")
    driver_path = shutil.which("chromedriver")
    if not browser_path or not driver_path:
        return None
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = browser_path
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     f"--window-size={window_size[0]},{window_size[1]}", "--no-first-run",
                     "--disable-extensions", "--hide-scrollbars"):  # fmt: skip
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    driver.set_page_load_timeout(PAGE_LOAD_DEADLINE_S)
    return driver


def wait(driver, condition, what: str, deadline_s: float = UI_DEADLINE_S):
    """The first truthy value of `condition(driver)`, or TimeoutException naming `what`."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    # The UI re-renders as data arrives: an element found a moment ago may be stale.
    return WebDriverWait(
        driver, deadline_s, poll_frequency=0.25, ignored_exceptions=(StaleElementReferenceException,)
    ).until(condition, message=f"{what} (waited {deadline_s} s)")


def send_basic_auth(driver, login: tuple[str, str] | None) -> None:
    """Answer the master's HTTP basic-auth challenge (headless Chromium shows no prompt);
    None stops sending it."""
    driver.execute_cdp_cmd("Network.enable", {})
    headers = {}
    if login is not None:
        token = base64.b64encode(":".join(login).encode()).decode()
        headers = {"Authorization": f"Basic {token}"}
    driver.execute_cdp_cmd("Network.setExtraHTTPHeaders", {"headers": headers})
