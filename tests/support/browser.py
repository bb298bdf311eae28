"""Headless Chromium looking at MLflow's UI the way a person does: 1400x1000, no scrolling.

Debian's ``chromium`` and ``chromium-driver`` (``.ci/run`` installs them), driven through
Selenium with the driver's path given, so Selenium Manager never reaches for the network.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.project import REPO

VIEWPORT = (1400, 1000)
# Screenshots a person can look at after the run (git-ignored; docs/images holds the ones the
# README shows).
SCREENSHOTS = REPO / "test-artifacts" / "browser"
_CHROMIUM = ("chromium", "chromium-browser")
_DRIVER = "chromedriver"

# The smallest element whose text contains the needle, where it is, and whether a person
# sees it: its first line inside the viewport and not covered (the element drawn there is it
# or inside it), and no ancestor that hides overflow (a collapsed "Show more" box) cutting
# off its last line.
_FIND_TEXT = """
const needle = arguments[0];
const holds = (el) => (el.innerText || el.textContent || '').replace(/\\s+/g, ' ').includes(needle);
let found = null;
for (const el of document.querySelectorAll('body *')) {
  if (holds(el) && ![...el.children].some(holds)) { found = el; break; }
}
if (!found) return null;
const r = found.getBoundingClientRect();
const x = r.left + 4, y = r.top + 4;
const at = (x < innerWidth && y < innerHeight) ? document.elementFromPoint(x, y) : null;
let clipped = false;
for (let up = found.parentElement; up; up = up.parentElement) {
  const style = getComputedStyle(up);
  if (style.overflowY !== 'visible' && up.getBoundingClientRect().bottom < r.bottom - 1) {
    clipped = true;
  }
}
return {tag: found.tagName, top: r.top, bottom: r.bottom, left: r.left, right: r.right,
        visible: r.top >= 0 && at !== null && (found === at || found.contains(at)) && !clipped};
"""


@dataclass
class Seen:
    """An element found by its text: its box in the viewport and whether a person sees it."""

    tag: str
    top: float
    bottom: float
    left: float
    right: float
    visible: bool


class Browser:
    """One headless Chromium session (``open`` it through :func:`chromium`)."""

    def __init__(self, driver: Any) -> None:
        self.driver = driver

    def get(self, url: str, wait_for: str, timeout_s: float = 60) -> None:
        """Load ``url`` and wait until the page shows ``wait_for`` (MLflow renders late)."""
        self.driver.get(url)
        self.wait_for_text(wait_for, timeout_s)

    def wait_for_text(self, text: str, timeout_s: float = 60) -> Seen:
        deadline = time.monotonic() + timeout_s
        while True:
            found = self.find_text(text)
            if found is not None:
                return found
            if time.monotonic() > deadline:
                body = self.driver.execute_script("return document.body.innerText")[:3000]
                raise AssertionError(
                    f"{text!r} never appeared at {self.driver.current_url}:\n{body}"
                )
            time.sleep(0.5)

    def find_text(self, text: str) -> Seen | None:
        found = self.driver.execute_script(_FIND_TEXT, text)
        return Seen(**{k.lower(): v for k, v in found.items()}) if found else None

    def wait_for_element(self, css: str, timeout_s: float = 60) -> Any:
        from selenium.webdriver.common.by import By

        deadline = time.monotonic() + timeout_s
        while not (found := self.driver.find_elements(By.CSS_SELECTOR, css)):
            if time.monotonic() > deadline:
                raise AssertionError(f"no {css} at {self.driver.current_url}")
            time.sleep(0.5)
        return found[0]

    def in_frame(self, frame: Any, script: str) -> Any:
        """Run ``script`` inside ``frame`` (MLflow shows HTML artifacts in an iframe)."""
        self.driver.switch_to.frame(frame)
        try:
            return self.driver.execute_script(script)
        finally:
            self.driver.switch_to.default_content()

    def click_text(self, text: str) -> None:
        from selenium.webdriver.common.by import By

        self.driver.find_element(By.XPATH, f"//*[normalize-space(text())='{text}']").click()

    def screenshot(self, name: str) -> Path:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS / f"{name}.png"
        self.driver.save_screenshot(str(path))
        return path


def _binary(names: tuple[str, ...]) -> str:
    for name in names:
        if found := shutil.which(name):
            return found
    raise AssertionError(
        f"{' or '.join(names)} not found: install Debian's chromium and chromium-driver "
        "(apt-get install -y chromium chromium-driver), as .ci/run does"
    )


@contextmanager
def chromium() -> Iterator[Browser]:
    """A headless Chromium whose page area is exactly ``VIEWPORT``; quit on leaving."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = _binary(_CHROMIUM)
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                     "--disable-gpu", f"--window-size={VIEWPORT[0]},{VIEWPORT[1]}"):  # fmt: skip
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(_binary((_DRIVER,))), options=options)
    try:
        width, height = VIEWPORT  # the window's page area, not the window with its frame
        driver.execute_cdp_cmd(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
        )
        yield Browser(driver)
    finally:
        driver.quit()
