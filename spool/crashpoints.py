"""Crash points for real-process crash tests: ``POSTROOM_CRASH_AT=<step>`` kills the process there.

The process leaves with ``os._exit(137)`` — no cleanup, no flush, no ``finally``: as close to
``kill -9`` as a process can do to itself, at an exact step. Unset (always, in production) it costs
one dictionary lookup per step. Steps (in intake order): ``after-stage``, ``after-publish``,
``before-commit``, ``after-commit``, ``after-claim``, ``after-deliver``.
"""

import os

STEPS = ("after-stage", "after-publish", "before-commit", "after-commit", "after-claim", "after-deliver")


def reached(step: str) -> None:
    """Die here if ``POSTROOM_CRASH_AT`` names this step."""
    if os.environ.get("POSTROOM_CRASH_AT") == step:
        os._exit(137)
