"""Headless Chromium driven by Selenium and the distribution's chromedriver, for the explorer's
browser test and benchmark. `browser_problem()` says why no browser can run here (None if one can)."""

from __future__ import annotations

import json
import shutil
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

CHROMIUM = ("chromium", "chromium-browser", "google-chrome")


def browser_problem() -> str | None:
    """Why the browser tests cannot run here, or None."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install selenium; it is in coar's test extra)"
    if not any(shutil.which(name) for name in CHROMIUM):
        return "headless Chromium is not installed (Debian: apt-get install -y chromium)"
    if not shutil.which("chromedriver"):
        return "chromedriver is not installed (Debian: apt-get install -y chromium-driver)"
    return None


@contextmanager
def headless_chromium(width: int = 1280, height: int = 900) -> Iterator[object]:
    """A Selenium Chrome driver on headless Chromium with browser-console and network logging."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = next(shutil.which(name) for name in CHROMIUM if shutil.which(name))
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--disable-background-networking", "--disable-component-update", "--no-first-run",
                     f"--window-size={width},{height}"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(driver, script: str, timeout: float = 60.0) -> object:
    """Poll a JavaScript expression until it is truthy; its value (TimeoutError after `timeout` s)."""
    deadline = time.monotonic() + timeout
    while True:
        value = driver.execute_script(f"return ({script});")
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{script} stayed false for {timeout} s")
        time.sleep(0.05)


def open_page(driver, page: Path, timeout: float = 120.0) -> float:
    """Open `page` and wait until its script says it is ready; milliseconds from navigation start."""
    driver.get(page.resolve().as_uri())
    wait_for(driver, "document.body && document.body.dataset.ready === '1'", timeout)
    return float(driver.execute_script("return window.coarReadyAt;"))


def severe_console_entries(driver) -> list[dict]:
    """Browser-console entries at level SEVERE (errors) since the last call."""
    return [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def requested_urls(driver) -> list[str]:
    """Every URL the page asked the network stack for since the last call (Chrome's performance log)."""
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return urls
