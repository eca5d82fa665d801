"""Browser tests: the real app on a loopback port, driven by Debian's chromium through
Playwright (never a browser Playwright downloads).

``live_server`` serves ``numex.web.create_app`` with the test's settings (its own
database, SQLite or PostgreSQL) from a werkzeug server thread. ``browser`` is one
chromium per session; every person in a test gets a fresh browser context (own cookies,
own storage), so several people can be signed in side by side.
"""

from __future__ import annotations

import io
import logging
import os
import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import password_of

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 1280, "height": 800}
TIMEOUT_MS = 20_000
SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"


def _chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.fail(
            "Debian's chromium is not installed: `apt-get install chromium` "
            "(scripts/test.sh installs it)"
        )
    return path


@pytest.fixture(scope="session")
def browser() -> Iterator:
    from playwright.sync_api import expect, sync_playwright

    # Generous waits: the suite may share a loaded machine with other work.
    expect.set_options(timeout=TIMEOUT_MS)
    with sync_playwright() as playwright:
        # launch() starts chromium on a fresh temporary user-data dir, removed at close.
        chromium = playwright.chromium.launch(
            executable_path=_chromium(), headless=True, args=CHROMIUM_ARGS
        )
        yield chromium
        chromium.close()


@dataclass
class LiveServer:
    url: str
    app: object


@pytest.fixture
def live_server(settings, cast) -> Iterator[LiveServer]:
    """The real app, with CSRF on, on a free loopback port (a werkzeug server thread)."""
    from werkzeug.serving import make_server

    from numex import web as numex_web

    app = numex_web.create_app({"NUMEX_REGISTRY_AUTOSYNC": False}, settings=settings)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per request
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="live-server", daemon=True)
    thread.start()
    try:
        yield LiveServer(f"http://127.0.0.1:{server.server_port}", app)
    finally:
        server.shutdown()
        thread.join(10)
        app.extensions["numex"].close()


class People:
    """Signs people in through the login page, each in a browser context of their own."""

    def __init__(self, browser, server: LiveServer) -> None:
        self.browser = browser
        self.server = server
        self.contexts: list = []

    def sign_in(self, username: str, password: str | None = None):
        """A page signed in as ``username`` (via the login form), on the dashboard."""
        from playwright.sync_api import expect

        context = self.browser.new_context(viewport=VIEWPORT, base_url=self.server.url)
        context.set_default_timeout(TIMEOUT_MS)
        self.contexts.append(context)
        page = context.new_page()
        page.goto("/login")
        page.fill("#username", username)
        page.fill("#password", password or password_of(username))
        page.click("#login-form button[type=submit]")
        expect(page.locator("#signed-in-as")).to_contain_text(username)
        return page

    def close(self) -> None:
        for context in self.contexts:
            context.close()


@pytest.fixture
def people(browser, live_server) -> Iterator[People]:
    crowd = People(browser, live_server)
    yield crowd
    crowd.close()


@pytest.fixture
def screenshot():
    """screenshot(page, "name") writes docs/screenshots/name.png when NUMEX_SCREENSHOTS=1
    (the viewport only, reduced to a 256-colour palette to keep the files small)."""
    enabled = os.environ.get("NUMEX_SCREENSHOTS") == "1"

    def take(page, name: str) -> None:
        if not enabled:
            return
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        png = page.screenshot()
        try:
            from PIL import Image
        except ImportError:  # pragma: no cover - Pillow comes with MLflow
            (SCREENSHOTS / f"{name}.png").write_bytes(png)
            return
        image = Image.open(io.BytesIO(png)).convert("RGB")
        image.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(
            SCREENSHOTS / f"{name}.png", optimize=True
        )

    return take
