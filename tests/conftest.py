"""Suite-wide rules: in CI, a test that needs an installed tool may not quietly skip."""

from __future__ import annotations

import os

import pytest


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    outcome = yield
    report = outcome.get_result()
    # `make setup` installs every simulator and Chromium; under CI an `rtl` or `browser` test
    # that skips means set-up broke.
    if not (os.environ.get("CI") and report.skipped):
        return
    for marker, tool in (("rtl", "a simulator"), ("browser", "chromium")):
        if item.get_closest_marker(marker):
            report.outcome = "failed"
            report.longrepr = (
                f"{marker} test skipped under CI (set-up did not install {tool}): {report.longrepr}"
            )
            return
