"""The two ways the Pi-side code refuses: a model it cannot use, a request it will not serve."""

from __future__ import annotations

from collections.abc import Sequence


class ModelError(Exception):
    """The model, its labels or its runtime cannot be used: nothing is served."""


class RequestError(Exception):
    """A request the service refuses: HTTP status and a message for the client."""

    def __init__(
        self, status: int, message: str, *, close: bool = False, headers: Sequence[tuple[str, str]] = ()
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        # True when the connection must not be reused (a body left unread, a deadline passed).
        self.close = close
        self.headers = tuple(headers)
