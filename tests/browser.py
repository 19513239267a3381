"""Headless Chromium for the web leaderboard's tests: Debian's ``chromium`` and
``chromium-driver`` driven by Selenium, installed here when missing (apt as root, pip into this
interpreter), and a plain static file server standing in for "any static host".
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import importlib
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

STATES = ("verified", "tampered", "error", "unchecked")


def _install_chromium() -> str | None:
    """Debian's chromium and its driver, or why they cannot be had."""
    if shutil.which("chromium") and shutil.which("chromedriver"):
        return None
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return "chromium/chromium-driver are missing and apt-get cannot run as root here"
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-qq"], env=env, check=False, timeout=900)
    done = subprocess.run(
        ["apt-get", "install", "-y", "-qq", "chromium", "chromium-driver"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=1800,
    )
    if shutil.which("chromium") and shutil.which("chromedriver"):
        return None
    return f"apt-get install chromium chromium-driver failed: {done.stderr.strip()[-300:]}"


def _install_selenium() -> str | None:
    try:
        importlib.import_module("selenium")
        return None
    except ImportError:
        pass
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "selenium"],
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    importlib.invalidate_caches()
    try:
        importlib.import_module("selenium")
        return None
    except ImportError:
        return f"pip install selenium failed: {done.stderr.strip()[-300:]}"


def start_chromium() -> Any:
    """A headless Chromium session, or a skip that says why none can be had."""
    why = _install_chromium() or _install_selenium()
    if why:
        pytest.skip(why)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "chromium"
    for arg in (
        "--headless=new",
        "--no-sandbox",  # tests run as root
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1280,1800",
        "--no-first-run",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(options=options, service=Service(shutil.which("chromedriver")))


def check_page(driver: Any, url: str, timeout: float = 240.0) -> dict[str, Any]:
    """Open ``url`` and wait for the page's own check to end; its state and status line."""
    from selenium.common.exceptions import TimeoutException

    driver.set_script_timeout(timeout)
    driver.get(url)
    deadline = time.monotonic() + timeout
    state = ""
    while time.monotonic() < deadline:
        try:
            state = driver.execute_script("return document.body.dataset.verify || ''")
        except TimeoutException:
            continue  # the page's own check holds its thread; ask again
        if state in STATES:
            break
        time.sleep(0.1)
    result = driver.execute_script("return window.flopnetCheck || null") or {}
    return {
        "state": state,
        "text": driver.find_element("id", "verify").text,
        **result,
    }


@contextlib.contextmanager
def static_host(folder: Path) -> Iterator[str]:
    """Serve ``folder`` with Python's plain file server (a static host that knows nothing
    of flopnet); yields the base URL."""

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

    handler = functools.partial(Quiet, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/"
    finally:
        server.shutdown()
        server.server_close()


def ranking_rows(driver: Any) -> list[dict[str, str]]:
    """The ranking table as the browser shows it: key, rank, name and exact values."""
    script = """
    return Array.from(document.querySelectorAll('table[data-list="ranking"] tbody tr'), tr => {
      const row = {contributor: tr.dataset.c};
      for (const td of tr.querySelectorAll('[data-k]'))
        row[td.dataset.k] = td.dataset.v === undefined ? td.textContent : td.dataset.v;
      row.flops_text = tr.querySelector('[data-k="flops"]').textContent;
      return row;
    });
    """
    rows: list[dict[str, str]] = driver.execute_script(script)
    return rows
