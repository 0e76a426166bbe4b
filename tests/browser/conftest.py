"""Fixtures of the browser tests: Debian's Chromium, an output folder, the embedded services.

The tests drive `/usr/bin/chromium` (the Debian package) through Playwright for Python; no
browser is downloaded. Both are installed by `make install`; a missing one fails the test with
that instruction rather than skipping it, so `make test` never passes without the page tested.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

# The embedded broker and database fixtures of the integration tests, shared here.
from tests.integration.conftest import broker, dsn, postgres  # noqa: F401

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
OUTPUT_DIR = Path(__file__).resolve().parents[2] / "test-output" / "browser"  # git-ignored


@pytest.fixture
def chromium() -> Path:
    """The Chromium executable; fail with what to do when it or Playwright is missing."""
    missing = []
    if not CHROMIUM.exists():
        missing.append(f"Chromium ({CHROMIUM}, Debian package `chromium`)")
    if importlib.util.find_spec("playwright") is None:
        missing.append("Playwright for Python (the `playwright` package of the dev extras)")
    if missing:
        pytest.fail(
            f"the browser test needs {' and '.join(missing)}: run `make install` "
            "(as root it installs Chromium with apt-get; otherwise `sudo apt-get install "
            "chromium`). Do not run `playwright install`: the test uses the system Chromium.",
            pytrace=False,
        )
    return CHROMIUM


_screenshots: list[Path] = []  # written in this session, listed in the terminal summary


@pytest.fixture
def screenshot_path(request: pytest.FixtureRequest) -> Path:
    """Where the test writes its screenshot: `test-output/browser/<test name>.png`."""
    OUTPUT_DIR.mkdir(parents=True, exist_ok=True)
    path = OUTPUT_DIR / f"{request.node.name}.png"
    _screenshots.append(path)
    return path


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """List the screenshots the browser tests wrote, so that one can look at the page."""
    written = [path for path in _screenshots if path.exists()]
    if written:
        terminalreporter.write_sep("-", "browser screenshots")
        for path in written:
            terminalreporter.write_line(str(path))
