"""Run records and the step runner behind `ranker pipeline daily|retrain`.

A pipeline is an ordered list of :class:`Step`. Each run writes one JSON record,
``artifacts/runs/PIPELINE/RUN_ID.json``, rewritten atomically after every step: the run's parameters,
status, start/end and, per step, its status, inputs, outputs, duration and error.

* **Resumable**: running again with the same ``run_id`` (``--run-id``, or ``--resume`` for the newest
  failed run) keeps the steps that succeeded and continues at the first one that did not.
* **Idempotent**: a step may declare an input fingerprint (what it reads: file sizes and mtimes,
  options). When an earlier successful run of the same pipeline saw the same fingerprint and its
  outputs are still there, the step is ``skipped`` and records the outputs it reused and from which
  run. Steps without a fingerprint run every time and must be safe to repeat (incremental
  materialization, a no-op publish).
* **One at a time**: an exclusive lock per pipeline (``fcntl.flock``) refuses a second concurrent run
  (cron and Airflow overlapping), with a message naming the holder.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import socket
import time
import traceback
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

from ranker.config import Settings
from ranker.errors import RankerError

RUN_ID_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")


class PipelineError(RankerError):
    """A pipeline cannot start or a step failed; the message names the step and the run record."""


class StepBlocked(Exception):
    """Raised by a step whose decision is "stop here, nothing is wrong" (a promotion gate refused the
    model): the step is recorded ``blocked`` with its outputs and the steps that depend on it are
    ``skipped``; the run still succeeds."""

    def __init__(self, message: str, outputs: dict | None = None) -> None:
        super().__init__(message)
        self.outputs = outputs or {}


@dataclass
class StepContext:
    """What a step function receives: the settings, the run's parameters, the outputs of the steps
    before it (by step name) and a logger that prints and keeps lines in the record."""

    settings: Settings
    params: dict
    outputs: dict[str, dict]
    log: Callable[[str], None]


@dataclass(frozen=True)
class Step:
    """One step: ``run(ctx) -> outputs``.

    ``fingerprint(ctx) -> dict`` (optional) describes the inputs; equal fingerprints mean the step
    would produce the same outputs. ``still_valid(outputs) -> bool`` (optional) says whether reused
    outputs still exist. ``group`` ties steps together (a surface): when a step of a group is blocked
    or fails, the later steps of the same group are skipped.
    """

    name: str
    run: Callable[[StepContext], dict]
    fingerprint: Callable[[StepContext], dict] | None = None
    still_valid: Callable[[dict], bool] | None = None
    group: str | None = None
    description: str = ""


@dataclass
class RunResult:
    record: dict
    path: Path

    @property
    def status(self) -> str:
        return self.record["status"]

    def step(self, name: str) -> dict:
        for step in self.record["steps"]:
            if step["name"] == name:
                return step
        raise KeyError(name)


def runs_dir(settings: Settings, pipeline: str) -> Path:
    return settings.artifacts_dir / "runs" / pipeline


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def fingerprint_of(obj: Any) -> str:
    """sha256 of the canonical JSON of ``obj`` (what a step read)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def files_signature(paths: list[Path] | Iterator[Path], *, root: Path) -> dict[str, list[int]]:
    """``{relative path: [size, mtime_ns]}`` of existing files: cheap, and changes whenever a file is
    rewritten (content hashes of multi-GB tables would cost more than some steps)."""
    out: dict[str, list[int]] = {}
    for path in sorted(Path(p) for p in paths):
        try:
            st = path.stat()
        except FileNotFoundError:
            continue
        if path.is_file():
            out[str(path.relative_to(root)) if path.is_relative_to(root) else str(path)] = [st.st_size, st.st_mtime_ns]
    return out


def content_signature(folder: Path, patterns: tuple[str, ...]) -> str:
    """sha256 over the names and contents of small files (declarations, configs) under ``folder``."""
    digest = hashlib.sha256()
    for pattern in patterns:
        for path in sorted(folder.rglob(pattern)):
            if "__pycache__" in path.parts or not path.is_file():
                continue
            digest.update(str(path.relative_to(folder)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def validate_run_id(run_id: str) -> str:
    if not run_id or len(run_id) > 120 or not set(run_id) <= RUN_ID_CHARS or run_id.startswith("."):
        raise PipelineError(f"run id {run_id!r} must be 1-120 characters of letters, digits, '-', '_' or '.'")
    return run_id


def load_record(settings: Settings, pipeline: str, run_id: str) -> dict:
    path = runs_dir(settings, pipeline) / f"{validate_run_id(run_id)}.json"
    if not path.exists():
        raise PipelineError(
            f"no {pipeline} run {run_id!r} under {path.parent}; `ranker pipeline runs {pipeline}` lists them"
        )
    return json.loads(path.read_text())


def list_records(settings: Settings, pipeline: str) -> list[dict]:
    """Every run record of ``pipeline``, oldest first."""
    folder = runs_dir(settings, pipeline)
    records = []
    for path in folder.glob("*.json"):
        with contextlib.suppress(json.JSONDecodeError, OSError):
            records.append(json.loads(path.read_text()))
    return sorted(records, key=lambda r: (r.get("started_at") or "", r.get("run_id") or ""))


def _write_record(path: Path, record: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(record, indent=2, sort_keys=False, default=str))
    os.replace(tmp, path)


@contextlib.contextmanager
def _pipeline_lock(folder: Path, pipeline: str, run_id: str) -> Iterator[None]:
    folder.mkdir(parents=True, exist_ok=True)
    lock_path = folder / ".lock"
    with open(lock_path, "a+") as fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            raise PipelineError(
                f"another {pipeline} run is in progress ({holder}); wait for it or stop it first"
            ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"run {run_id}, pid {os.getpid()} on {socket.gethostname()}")
        fh.flush()
        try:
            yield
        finally:
            fh.seek(0)
            fh.truncate()
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _reusable(
    settings: Settings, pipeline: str, step: Step, fingerprint: str, *, exclude: str
) -> tuple[str, dict] | None:
    """The newest earlier successful execution of ``step`` with the same input fingerprint."""
    for record in reversed(list_records(settings, pipeline)):
        if record.get("run_id") == exclude:
            continue
        for entry in record.get("steps", []):
            if (
                entry.get("name") == step.name
                and entry.get("status") in ("succeeded", "skipped")
                and entry.get("fingerprint") == fingerprint
            ):
                outputs = entry.get("outputs") or {}
                if step.still_valid is None or step.still_valid(outputs):
                    return record["run_id"], outputs
    return None


def run_pipeline(
    settings: Settings,
    *,
    pipeline: str,
    steps: list[Step],
    params: dict,
    run_id: str | None = None,
    resume: bool = False,
    only: list[str] | None = None,
    force: bool = False,
    echo: Callable[[str], None] = print,
) -> RunResult:
    """Run ``steps`` in order under one run record; see the module docstring for the semantics.

    Args:
        run_id: continue (or start) this run; default a new id ``PIPELINE-YYYYmmddTHHMMSSZ``.
        resume: continue the newest run of this pipeline that did not succeed.
        only: run just these steps (by name) of the run; the others keep their recorded state.
        force: run every selected step even when its inputs are unchanged.
    Raises:
        PipelineError: a step failed (its error is in the record), or the run cannot start.
    """
    names = [s.name for s in steps]
    unknown = [n for n in (only or []) if n not in names]
    if unknown:
        raise PipelineError(f"unknown step(s) {', '.join(unknown)} of {pipeline}; steps: {', '.join(names)}")
    folder = runs_dir(settings, pipeline)
    if resume and run_id is None:
        unfinished = [r for r in list_records(settings, pipeline) if r.get("status") != "succeeded"]
        if not unfinished:
            raise PipelineError(f"no unfinished {pipeline} run to resume under {folder}")
        run_id = unfinished[-1]["run_id"]
    run_id = validate_run_id(run_id or f"{pipeline}-{datetime.now(timezone.utc):%Y%m%dT%H%M%S%fZ}")
    path = folder / f"{run_id}.json"

    with _pipeline_lock(folder, pipeline, run_id):
        if path.exists():
            record = json.loads(path.read_text())
            if record.get("params") != params:
                raise PipelineError(
                    f"run {run_id} was started with other parameters "
                    f"({json.dumps(record.get('params'), sort_keys=True)}); "
                    "resume it with the same options or start a new run"
                )
            record["attempts"] = int(record.get("attempts", 1)) + 1
        else:
            record = {
                "pipeline": pipeline,
                "run_id": run_id,
                "params": params,
                "attempts": 1,
                "host": socket.gethostname(),
                "started_at": _now(),
                "steps": [{"name": s.name, "group": s.group, "status": "pending"} for s in steps],
            }
        record.update(
            status="running", finished_at=None, error=None, resumed_at=_now() if record["attempts"] > 1 else None
        )
        by_name = {entry["name"]: entry for entry in record["steps"]}
        _write_record(path, record)
        echo(f"{pipeline} run {run_id} (record: {path})")

        started = time.perf_counter()
        outputs = {
            n: dict(by_name[n].get("outputs") or {})
            for n in names
            if by_name[n].get("status") in ("succeeded", "skipped", "blocked")
        }
        stopped_groups: dict[str, str] = {}
        failure: str | None = None
        for step in steps:
            entry = by_name[step.name]
            if only and step.name not in only:
                continue
            if step.group and step.group in stopped_groups:
                entry.update(status="skipped", reason=stopped_groups[step.group], outputs={})
                _write_record(path, record)
                continue
            # Earlier steps of the same group (all earlier steps when ungrouped) are prerequisites; they
            # may have run in another process (--step, one Airflow task per step).
            before = [by_name[s.name] for s in steps[: names.index(step.name)] if s.group == step.group]
            blocker = next((b for b in before if b.get("status") == "blocked"), None)
            if blocker is not None:
                entry.update(status="skipped", reason=f"{blocker['name']} blocked: {blocker.get('reason')}", outputs={})
                _write_record(path, record)
                echo(f"  {step.name:<22} skipped: {blocker['name']} was blocked")
                continue
            missing = [b["name"] for b in before if b.get("status") not in ("succeeded", "skipped")]
            if missing:
                failure = f"step {step.name} needs {', '.join(missing)} to succeed first in run {run_id}"
                break
            if entry.get("status") in ("succeeded", "skipped") and not force and not only:
                echo(f"  {step.name:<22} done in an earlier attempt")
                continue
            logs: list[str] = []

            def log(line: str, _logs=logs) -> None:
                _logs.append(line)
                echo(f"    {line}")

            ctx = StepContext(settings=settings, params=params, outputs=outputs, log=log)
            entry.update(
                status="running", started_at=_now(), finished_at=None, error=None, reason=None, reused_from=None
            )
            _write_record(path, record)
            t0 = time.perf_counter()
            try:
                inputs = step.fingerprint(ctx) if step.fingerprint else None
                fp = fingerprint_of(inputs) if inputs is not None else None
                entry.update(inputs=inputs, fingerprint=fp)
                reuse = None if (force or fp is None) else _reusable(settings, pipeline, step, fp, exclude=run_id)
                if reuse is not None:
                    entry.update(
                        status="skipped",
                        reused_from=reuse[0],
                        outputs=reuse[1],
                        reason="inputs unchanged since run " + reuse[0],
                    )
                    outputs[step.name] = reuse[1]
                    echo(f"  {step.name:<22} skipped: inputs unchanged since {reuse[0]}")
                else:
                    echo(f"  {step.name:<22} running")
                    result = step.run(ctx) or {}
                    entry.update(status="succeeded", outputs=result)
                    outputs[step.name] = result
            except StepBlocked as blocked:
                entry.update(status="blocked", reason=str(blocked), outputs=blocked.outputs)
                outputs[step.name] = blocked.outputs
                if step.group:
                    stopped_groups[step.group] = f"{step.name} blocked: {blocked}"
                echo(f"  {step.name:<22} blocked: {blocked}")
            except Exception as exc:  # noqa: BLE001 - recorded, then re-raised as one line
                message = str(exc) if isinstance(exc, RankerError) else f"{type(exc).__name__}: {exc}"
                entry.update(
                    status="failed",
                    error=message,
                    traceback=None if isinstance(exc, RankerError) else traceback.format_exc(limit=8),
                )
                failure = f"step {step.name} failed: {message}"
            entry.update(finished_at=_now(), seconds=round(time.perf_counter() - t0, 3), log=logs or None)
            _write_record(path, record)
            if failure:
                break

        complete = all(entry.get("status") in ("succeeded", "skipped", "blocked") for entry in record["steps"])
        record.update(
            # "incomplete": --step ran part of the run (an Airflow task); later tasks continue the same run.
            status="failed" if failure else ("succeeded" if complete else "incomplete"),
            error=failure,
            finished_at=_now(),
            seconds=round(time.perf_counter() - started, 3) + float(record.get("seconds_before", 0.0)),
        )
        record["seconds_before"] = record["seconds"]
        _write_record(path, record)
    if failure:
        raise PipelineError(
            f"{pipeline} run {run_id}: {failure} (resume with `ranker pipeline {pipeline} --resume`; record {path})"
        )
    return RunResult(record=record, path=path)


__all__ = [
    "PipelineError",
    "RunResult",
    "Step",
    "StepBlocked",
    "StepContext",
    "content_signature",
    "files_signature",
    "fingerprint_of",
    "list_records",
    "load_record",
    "run_pipeline",
    "runs_dir",
    "validate_run_id",
]
