"""Progress reporting that suits where the output goes.

On a terminal: a tqdm bar. Anywhere else (a Sacred ``cout.txt``, a log file, CI) a bar is a stream of ``\\r``
redraws that buries everything else, so :func:`progress` prints plain lines instead: one every ``every_percent``
per cent of the total (and at the end), e.g. ``recon: 120/600 (20%) loss=0.0123 [14s]``.

Whether stderr is a terminal is decided when this module is first imported, i.e. before Sacred redirects the
output streams to capture them (after which stderr is never a terminal, even in an interactive shell).
"""
from __future__ import annotations

import os
import sys
import time

__all__ = ["progress", "is_interactive", "LineProgress"]


def _stderr_is_tty() -> bool:
    try:
        return os.isatty(sys.__stderr__.fileno()) if sys.__stderr__ is not None else False
    except (AttributeError, OSError, ValueError):
        return False


_INTERACTIVE = _stderr_is_tty()


def is_interactive() -> bool:
    """Whether progress bars are drawn (stderr was a terminal at start; ``DNG_PROGRESS=bar|lines`` overrides)."""
    forced = os.environ.get("DNG_PROGRESS", "").lower()
    if forced in ("bar", "lines"):
        return forced == "bar"
    return _INTERACTIVE


class LineProgress:
    """The subset of tqdm's API the project uses, printing one line per ``every_percent`` % to stdout."""

    def __init__(self, iterable=None, *, desc: str = "", total: int | None = None, initial: int = 0,
                 every_percent: float = 10.0, unit: str = "it", file=None, **_ignored):
        self.iterable = iterable
        self.desc = desc.strip()
        if total is None and iterable is not None:
            try:
                total = len(iterable)
            except TypeError:
                total = None
        self.total, self.n, self.unit = total, initial, unit
        self.every = max(1e-9, every_percent / 100.0)
        self._next = (int(initial / total / self.every) + 1) * self.every if total else None
        self._postfix = ""
        self._t0 = time.perf_counter()
        self._file = file
        self._closed = False

    def __iter__(self):
        for item in self.iterable:
            yield item
            self.update(1)

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.total and self._next is not None and self.n / self.total >= self._next - 1e-12:
            self._emit()
            while self._next <= self.n / self.total + 1e-12:
                self._next += self.every

    def set_postfix(self, ordered_dict=None, refresh: bool = True, **kwargs) -> None:
        items = dict(ordered_dict or {}, **kwargs)
        self._postfix = " ".join(f"{k}={v}" for k, v in items.items())

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        self._postfix = s

    def _emit(self) -> None:
        pct = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        total = f"/{self.total}" if self.total else ""
        post = f" {self._postfix}" if self._postfix else ""
        print(f"{self.desc}: {self.n}{total} {self.unit}{pct}{post} [{time.perf_counter() - self._t0:.0f}s]",
              file=self._file or sys.stdout, flush=True)

    def close(self) -> None:
        self._closed = True

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


def progress(iterable=None, *, desc: str = "", total: int | None = None, initial: int = 0,
             every_percent: float = 10.0, unit: str = "it", leave: bool = False, **tqdm_kwargs):
    """A tqdm bar on a terminal, else a :class:`LineProgress` (one line per ``every_percent`` %).

    Under torchrun only rank 0 reports (N copies of one bar say nothing more); the other ranks get a silent bar.
    """
    if os.environ.get("RANK", "0") not in ("", "0"):
        from tqdm.auto import tqdm

        return tqdm(iterable, desc=desc, total=total, initial=initial, unit=unit, disable=True, **tqdm_kwargs)
    if is_interactive():
        from tqdm.auto import tqdm

        return tqdm(iterable, desc=desc, total=total, initial=initial, unit=unit, leave=leave, mininterval=1.0,
                    **tqdm_kwargs)
    return LineProgress(iterable, desc=desc, total=total, initial=initial, every_percent=every_percent, unit=unit)
