"""Errors of the streaming half; each message says what failed and what to do."""

from __future__ import annotations

from ranker.errors import RankerError


class StreamError(RankerError):
    """The stream could not be used (broker unreachable past a deadline, bad partition, ...)."""


class PartitionBusy(StreamError):
    """Another processor on this host already consumes this partition (its lock is held)."""


class CheckpointError(StreamError):
    """A checkpoint is unreadable or belongs to another stream; the message names the file."""
