"""The processor's durable state per partition, under ``<home>/data/stream/``:

* ``<stream>-p<k>.ckpt``: the checkpoint, ``{offset, window state snapshot}`` in one file replaced
  atomically (written to a temporary file, fsynced, renamed), so a crash leaves the previous
  checkpoint or the new one, never a mix. The first line is a JSON header (format version, stream,
  partition, partition count, offset, saved_at, snapshot length), the snapshot's bytes follow.
* ``<stream>-p<k>.lock``: ``flock``-ed by the running processor of the partition, so one consumer
  per partition and host is active (a second one fails at once with :class:`PartitionBusy`).
"""

from __future__ import annotations

import fcntl
import os
import time
from dataclasses import dataclass
from pathlib import Path

import orjson

from ranker.streaming.errors import CheckpointError, PartitionBusy

CHECKPOINT_VERSION = 1


@dataclass(frozen=True)
class Checkpoint:
    stream: str
    partition: int
    partitions: int
    offset: int  # the last offset whose effect is in the snapshot (-1: none)
    snapshot: bytes
    saved_at: float = 0.0


def checkpoint_path(stream_dir: Path, stream: str, partition: int) -> Path:
    return Path(stream_dir) / f"{stream}-p{partition}.ckpt"


def save_checkpoint(stream_dir: Path, ckpt: Checkpoint) -> Path:
    """Write the checkpoint atomically (temp file + fsync + rename + fsync of the folder)."""
    path = checkpoint_path(stream_dir, ckpt.stream, ckpt.partition)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = {
        "v": CHECKPOINT_VERSION,
        "stream": ckpt.stream,
        "partition": ckpt.partition,
        "partitions": ckpt.partitions,
        "offset": ckpt.offset,
        "saved_at": time.time(),
        "snapshot_bytes": len(ckpt.snapshot),
    }
    tmp = path.with_suffix(f".ckpt.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(orjson.dumps(header) + b"\n")
        f.write(ckpt.snapshot)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return path


def load_checkpoint(stream_dir: Path, stream: str, partition: int, partitions: int) -> Checkpoint | None:
    """The partition's checkpoint, None when there is none; CheckpointError when it is unreadable
    or was written for another partition count (the entities' partitions would differ)."""
    path = checkpoint_path(stream_dir, stream, partition)
    if not path.exists():
        return None
    raw = path.read_bytes()
    line, sep, snapshot = raw.partition(b"\n")
    try:
        header = orjson.loads(line)
        ok = sep and header.get("v") == CHECKPOINT_VERSION and header["snapshot_bytes"] == len(snapshot)
    except (orjson.JSONDecodeError, KeyError, AttributeError, TypeError):
        ok = False
    if not ok:
        raise CheckpointError(f"{path} is not a readable checkpoint: move it away to restart the partition from 0")
    if header["partitions"] != partitions or header["stream"] != stream or header["partition"] != partition:
        raise CheckpointError(
            f"{path} was written for stream {header['stream']} partition {header['partition']} of "
            f"{header['partitions']}, not {stream} partition {partition} of {partitions}: "
            "repartitioning needs a new stream name (RANKER_STREAM_NAME)"
        )
    return Checkpoint(stream, partition, partitions, int(header["offset"]), snapshot, float(header["saved_at"]))


class PartitionLock:
    """An exclusive ``flock`` on ``<stream>-p<k>.lock`` for the processor's lifetime (released by the
    kernel when the process dies, even by SIGKILL)."""

    def __init__(self, stream_dir: Path, stream: str, partition: int) -> None:
        self.path = Path(stream_dir) / f"{stream}-p{partition}.lock"
        self._fd: int | None = None

    def acquire(self, orphan_wait_s: float = 30.0) -> "PartitionLock":
        """Take the lock; PartitionBusy at once when its holder (the pid in the file) is alive. A lock
        held while that pid is gone belongs to the background checkpoint writer of a killed processor
        (a forked child shares the lock): it is waited for, up to ``orphan_wait_s``."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + orphan_wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                holder = self.path.read_text().strip()
                if _alive(holder) or time.monotonic() > deadline:
                    os.close(fd)
                    raise PartitionBusy(
                        f"partition already consumed on this host (pid {holder or '?'} holds {self.path}): "
                        "one processor per partition"
                    ) from None
                time.sleep(0.05)  # a killed processor's checkpoint writer finishing its file
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "PartitionLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _alive(pid: str) -> bool:
    if not pid.isdigit():
        return True  # unknown holder: assume a live one
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
