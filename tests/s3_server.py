"""A real S3-compatible HTTP server for tests: moto in server mode on 127.0.0.1, reached through boto3
with ``endpoint_url`` exactly as production code reaches S3 (no in-process patching).

Usage::

    with moto_s3_server() as endpoint:            # "http://127.0.0.1:PORT"
        env = aws_env(endpoint=endpoint, home=tmp)  # set these with monkeypatch.setenv
        create_bucket(endpoint=endpoint, bucket="models")
"""

from __future__ import annotations

import contextlib
import logging
import socket
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def moto_s3_server() -> Iterator[str]:
    """Start moto's threaded server on a kernel-chosen loopback port; yield its endpoint URL."""
    from moto.server import ThreadedMotoServer

    # werkzeug logs one line per request; keep test output readable.
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    # Port 0: the kernel picks a free port at bind time, so there is no pick-then-bind race.
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


def aws_env(*, endpoint: str, home: Path) -> dict[str, str]:
    """Dummy credentials and an isolated AWS config, so tests never read the developer's ~/.aws."""
    return {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_CONFIG_FILE": str(home / "aws-config-absent"),
        "AWS_SHARED_CREDENTIALS_FILE": str(home / "aws-credentials-absent"),
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_MAX_ATTEMPTS": "2",
    }


def s3_client(*, endpoint: str):
    import boto3

    return boto3.session.Session(
        aws_access_key_id="testing", aws_secret_access_key="testing", region_name="us-east-1"
    ).client("s3", endpoint_url=endpoint)


def create_bucket(*, endpoint: str, bucket: str) -> None:
    s3_client(endpoint=endpoint).create_bucket(Bucket=bucket)


def closed_port() -> int:
    """A loopback port with nothing listening (bound then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def silent_listener() -> Iterator[int]:
    """A loopback port that accepts TCP connections (kernel backlog) but never answers: read timeouts."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield sock.getsockname()[1]
