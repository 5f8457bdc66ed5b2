"""The suite's own rules: every test has a deadline, and tests wait on conditions, not on the clock."""

from __future__ import annotations

import re

import pytest

from tests.conftest import REPO


def test_every_test_has_a_deadline(pytestconfig: pytest.Config) -> None:
    assert pytestconfig.pluginmanager.hasplugin("timeout"), "pytest-timeout is not installed (pip install '.[test]')"
    assert 0 < float(pytestconfig.getini("timeout")) <= 600


def test_no_fixed_sleeps_in_tests() -> None:
    """A sleep is allowed only inside conftest's wait_until, or as a stimulus the line says it is
    (a slow copy, a random kill moment): never as a wait for something to happen."""
    sleep = re.compile(r"\btime\.sleep\(")
    offenders = []
    for path in sorted((REPO / "tests").glob("*.py")):
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if sleep.search(line) and path.name not in ("conftest.py", "test_suite_rules.py"):
                if "stimulus" not in line and "not a wait" not in line:
                    offenders.append(f"{path.name}:{number}: {line.strip()}")
    assert offenders == []
