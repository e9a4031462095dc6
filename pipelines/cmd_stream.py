"""`ranker stream ...`: the event stream (docs/guides/streaming.md): create/delete the partitioned
stream, publish a file or the simulator's live events, run a partition's processor."""

from __future__ import annotations

import contextlib
import json
import signal
import threading
from pathlib import Path
from typing import Iterator

import click


def _broker(settings, stop=None, on_retry=None):
    from ranker.streaming.broker import RabbitMQBroker

    return RabbitMQBroker(settings.stream_url, stop=stop, on_retry=on_retry)


@contextlib.contextmanager
def _stop_on_sigterm() -> Iterator[threading.Event]:
    """An event set by SIGTERM or SIGINT while the block runs (the previous handlers come back)."""
    stop = threading.Event()

    def handler(signum, frame) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield stop
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _echo_publish(stats) -> None:
    click.echo(
        f"published {stats.rows:,} rows in {stats.messages:,} messages, {stats.seconds:.1f} s "
        f"({stats.rows_per_s:,.0f} rows/s, {stats.behind_s * 1000:.0f} ms behind schedule)",
        err=True,
    )


def register(cli: click.Group) -> None:
    @cli.group("stream")
    def stream() -> None:
        """The event stream: RabbitMQ stream queues RANKER_STREAM_NAME-p0..p(N-1) (RANKER_STREAM_URL,
        RANKER_STREAM_PARTITIONS) feeding the real-time features of the online store."""

    @stream.command("create")
    @click.pass_obj
    def create_cmd(settings) -> None:
        """Create the stream's partitions (idempotent)."""
        broker = _broker(settings)
        broker.check()
        broker.create(settings.stream_name, settings.stream_partitions)
        click.echo(f"stream {settings.stream_name}: {settings.stream_partitions} partition(s) ready")

    @stream.command("delete")
    @click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
    @click.pass_obj
    def delete_cmd(settings, yes) -> None:
        """Delete the stream's partitions and this home's checkpoints of them."""
        from ranker.streaming.state import checkpoint_path

        if not yes:
            click.confirm(f"delete stream {settings.stream_name} and its messages?", abort=True)
        broker = _broker(settings)
        broker.check()
        broker.delete(settings.stream_name, settings.stream_partitions)
        for k in range(settings.stream_partitions):
            checkpoint_path(settings.stream_dir, settings.stream_name, k).unlink(missing_ok=True)
        click.echo(f"stream {settings.stream_name} deleted")

    @stream.command("publish")
    @click.argument("file", type=click.Path(path_type=Path, dir_okay=False))
    @click.option(
        "--rate",
        type=click.FloatRange(min=0, min_open=True),
        default=None,
        help="Rows per second (default: as fast as possible).",
    )
    @click.option("--live", is_flag=True, help="Stamp each row with its send time (live event time).")
    @click.pass_obj
    def publish_cmd(settings, file, rate, live) -> None:
        """Publish FILE (parquet or CSV of events or of listings) in event-time order."""
        from ranker.streaming.producer import Producer, rows_from_file

        rows = rows_from_file(file)
        broker = _broker(settings)
        broker.check()
        broker.create(settings.stream_name, settings.stream_partitions)
        with _stop_on_sigterm() as stop:
            stats = Producer(broker, settings.stream_name, settings.stream_partitions).publish(
                rows, rate=rate, retime=live, stop=stop.is_set, progress=_echo_publish
            )
        _echo_publish(stats)

    @stream.command("simulate")
    @click.option(
        "--rate",
        type=click.FloatRange(min=0, min_open=True),
        default=1000.0,
        show_default=True,
        help="Events per second.",
    )
    @click.option("--limit", type=click.IntRange(1), default=None, help="Stop after this many rows.")
    @click.pass_obj
    def simulate_cmd(settings, rate, limit) -> None:
        """Publish the simulated marketplace live: the home's simulated events and sales (data/raw/),
        in their order, each stamped with its send time, at RATE events/s."""
        from ranker.streaming.producer import Producer, live_rows

        rows = live_rows(settings.raw_dir)
        if limit:
            rows = rows[:limit]
        broker = _broker(settings)
        broker.check()
        broker.create(settings.stream_name, settings.stream_partitions)
        with _stop_on_sigterm() as stop:
            stats = Producer(broker, settings.stream_name, settings.stream_partitions).publish(
                rows, rate=rate, retime=True, stop=stop.is_set, progress=_echo_publish
            )
        _echo_publish(stats)

    @stream.command("run")
    @click.option("--partition", "partition", type=click.IntRange(0), required=True, help="The partition to consume.")
    @click.option("--metrics-port", type=click.IntRange(1, 65535), default=None, help="Serve Prometheus metrics here.")
    @click.option(
        "--batch", "batch", type=click.IntRange(1), default=500, show_default=True, help="Messages per batch."
    )
    @click.option(
        "--idle-exit",
        type=click.FloatRange(min=0, min_open=True),
        default=None,
        help="Exit after this many seconds without a message.",
    )
    @click.option("--state-class", default="ranker.streaming.windows:WindowState", hidden=True)
    @click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
    @click.pass_obj
    def run_cmd(settings, partition, metrics_port, batch, idle_exit, state_class, as_json) -> None:
        """Consume one partition into the online store until SIGTERM (then checkpoint and exit 0);
        one processor per partition (a lock in data/stream/). Progress and lag go to stderr."""
        from ranker.streaming.processor import Processor

        with _stop_on_sigterm() as stop:
            processor = Processor(
                settings,
                partition,
                state_class=state_class,
                batch_messages=batch,
                stop=stop,
                progress=lambda line: click.echo(line, err=True),
            )
            processor.broker.check()  # type: ignore[attr-defined]
            if not processor.broker.exists(settings.stream_name, partition):  # type: ignore[attr-defined]
                from ranker.streaming.errors import StreamError

                raise StreamError(
                    f"stream {settings.stream_name} has no partition {partition}: run `ranker stream create`"
                )
            if metrics_port:
                processor.metrics.serve(metrics_port)
            summary = processor.run(idle_exit_s=idle_exit)
        if as_json:
            click.echo(json.dumps(summary, sort_keys=True))
        else:
            click.echo(
                f"p{partition}: offsets {summary['resumed_from']}..{summary['offset']}, "
                f"{summary.get('records', 0):,} records, {summary.get('written', 0):,} rows written, "
                f"{summary.get('stale_skipped', 0):,} stale skipped, dropped {summary['dropped'] or 'none'}"
            )
