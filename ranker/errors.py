"""The one error type every user-facing failure derives from: the CLI prints its message on one
line and exits non-zero; the API turns it into a JSON error. Anything else is a bug."""


class RankerError(Exception):
    """A failure the user can act on; the message says what went wrong and what to do next."""
