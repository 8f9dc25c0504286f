"""Deterministic fault injection for the resume tests: ``DNG_KILL_AT`` makes the process SIGKILL itself.

Long-running code calls :func:`kill_point` with a name for where it is (``recon/step/3`` after training step 3 of
the ``recon`` phase, ``recon/saved/4`` right after the checkpoint of step 4, ``static/epoch/2``, ``write/<file>``
before an atomic file write is committed, ``wrote/<file>`` after). When ``DNG_KILL_AT`` holds a comma-separated
list of ``fnmatch`` patterns and one matches, the process kills itself with SIGKILL: no ``finally``, no atexit,
no flush, exactly like ``kill -9`` or the OOM killer. Unset (always, outside tests) it costs one dict lookup.
"""
from __future__ import annotations

import fnmatch
import os
import signal

__all__ = ["ENV_KILL_AT", "kill_point"]

ENV_KILL_AT = "DNG_KILL_AT"


def kill_point(point: str) -> None:
    spec = os.environ.get(ENV_KILL_AT)
    if not spec:
        return
    for pattern in spec.split(","):
        if pattern.strip() and fnmatch.fnmatchcase(point, pattern.strip()):
            os.kill(os.getpid(), signal.SIGKILL)
