"""The one exception type users see."""

from __future__ import annotations


class PibakeError(Exception):
    """An error with a message a user can act on; printed by the CLI without a traceback."""
