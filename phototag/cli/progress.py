"""Progress on stderr: counts, rate and ETA; a live line on a terminal, a periodic line elsewhere.

``Progress`` counts pipeline outcomes by kind (backfill, watch, restore); ``CountProgress`` counts work
done out of a known total (reindex).
"""

from __future__ import annotations

import sys
import threading
import time
from collections import Counter

from phototag.planning import (
    CAPTIONED,
    FAILED_OUTCOME,
    HUMAN,
    MOVED,
    RETURNED,
    SKIPPED,
    SYMLINK,
    WOULD_WRITE,
    Outcome,
    utf8_name,
)


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"


class Progress:
    """``rate_of``: the outcome kinds the rate counts, shown as ``rate_unit`` (captions by default)."""

    def __init__(
        self,
        enabled: bool = True,
        interval: float = 10.0,
        *,
        rate_of: tuple[str, ...] = (CAPTIONED, WOULD_WRITE),
        rate_unit: str = "captions/s",
        quiet: bool = False,
    ) -> None:
        """``quiet`` (-q): no progress line, but failed photos are still reported (they are errors)."""
        self.rate_of = rate_of
        self.rate_unit = rate_unit
        self.counts: Counter[str] = Counter()
        self.failures: list[tuple[str, str]] = []
        self.total: int | None = None
        self.enabled = enabled and not quiet
        self.report_failures = enabled or quiet
        self._tty = sys.stderr.isatty()
        self._interval = 0.2 if self._tty else interval
        self._lock = threading.Lock()
        self._start = time.monotonic()
        self._last_draw = 0.0

    @property
    def done(self) -> int:
        return sum(self.counts.values())

    def __call__(self, outcome: Outcome) -> None:
        with self._lock:
            self.counts[outcome.kind] += 1
            if outcome.kind == FAILED_OUTCOME:
                self.failures.append((str(outcome.path), outcome.reason or "failed"))
                # a name the index cannot hold has no row: `phototag status` will never list it
                if self.report_failures or not utf8_name(outcome.path):
                    self._clear()
                    print(f"failed: {outcome.path}: {outcome.reason}", file=sys.stderr)
            elif outcome.kind == SYMLINK and self.enabled:
                self._clear()
                print(f"skipped: {outcome.path}: {outcome.reason}", file=sys.stderr)
            self._draw()

    def _clear(self) -> None:
        if self._tty:
            sys.stderr.write("\r\033[K")

    def _draw(self, force: bool = False) -> None:
        now = time.monotonic()
        if not self.enabled or (not force and now - self._last_draw < self._interval):
            return
        self._last_draw = now
        line = self.line()
        if self._tty:
            sys.stderr.write("\r\033[K" + line)
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()

    def line(self) -> str:
        done = self.done
        counted = sum(self.counts[kind] for kind in self.rate_of)
        elapsed = time.monotonic() - self._start
        rate = counted / elapsed if elapsed > 0 else 0.0
        total = f"/{self.total}" if self.total is not None else ""
        text = f"{done}{total} photos  {rate:.2f} {self.rate_unit}  elapsed {_duration(elapsed)}"
        if self.total is not None and rate > 0:
            text += f"  ETA {_duration(max(0, self.total - done) / rate)}"
        return text

    def finish(self, draw: bool = True) -> None:
        """End the live line; ``draw=False`` when the run failed and its error says it all."""
        if self.enabled:
            if draw:
                self._draw(force=True)
            if self._tty and self._last_draw:
                sys.stderr.write("\n")

    def summary(self) -> str:
        c = self.counts
        parts = [
            f"captioned {c[CAPTIONED]}",
            f"kept human captions {c[HUMAN]}",
            f"skipped (unchanged) {c[SKIPPED]}",
            f"moved {c[MOVED]}",
            f"failed {c[FAILED_OUTCOME]}",
        ]
        if c[RETURNED]:
            parts.insert(4, f"back from missing {c[RETURNED]}")
        if c[SYMLINK]:
            parts.append(f"symbolic links skipped {c[SYMLINK]}")
        if c[WOULD_WRITE]:
            parts.insert(0, f"would caption {c[WOULD_WRITE]}")
        return ", ".join(parts)


class CountProgress:
    """``label: done/total (pct)  rate/s  ETA`` on stderr: redrawn on a terminal, every 10 s elsewhere."""

    def __init__(self, label: str, total: int, enabled: bool = True) -> None:
        self.label, self.total, self.done = label, total, 0
        self.enabled = enabled and total > 0
        self._tty = sys.stderr.isatty()
        self._start = self._last = time.monotonic()

    def advance(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if self.enabled and (now - self._last >= (0.2 if self._tty else 10.0) or self.done >= self.total):
            self._last = now
            self._draw(now)

    def _draw(self, now: float) -> None:
        elapsed = max(now - self._start, 1e-6)
        rate = self.done / elapsed
        eta = (self.total - self.done) / rate if rate > 0 else 0
        line = (
            f"{self.label}: {self.done}/{self.total} ({100 * self.done / self.total:.0f}%)  {rate:.0f}/s  "
            f"ETA {int(eta) // 60}:{int(eta) % 60:02d}"
        )
        sys.stderr.write(("\r\033[K" + line) if self._tty else line + "\n")
        sys.stderr.flush()

    def finish(self) -> None:
        if self.enabled and self._tty:
            sys.stderr.write("\n")
