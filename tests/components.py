"""What a test does when a real component it needs (a PostgreSQL server, Chromium) is not there.

In CI (``CI`` set, as ``.ci/run`` sets it) that is a broken setup, so the test fails and says what is
missing; ``.ci/run`` installs and starts every component. Elsewhere (a laptop without PostgreSQL) the
test skips, saying why.
"""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def unavailable(component: str, reason: str) -> NoReturn:
    """Stop the test: fail in CI, skip elsewhere; ``reason`` says what is missing and how to get it."""
    if os.environ.get("CI"):
        pytest.fail(f"{component} tests must run in CI: {reason}", pytrace=False)
    pytest.skip(reason)
