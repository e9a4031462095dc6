"""Container health check: exit 0 when the scorer's /readyz answers 200 (every surface has a model and
its online store answers), 1 otherwise. Standard library only; the port comes from RANKER_BIND."""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request


def main() -> int:
    port = os.environ.get("RANKER_BIND", "0.0.0.0:8000").rsplit(":", 1)[-1]
    url = f"http://127.0.0.1:{port}/readyz"
    try:
        with urllib.request.urlopen(
            url, timeout=float(os.environ.get("RANKER_HEALTHCHECK_TIMEOUT_S", "2"))
        ) as response:
            return 0 if response.status == 200 else 1
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError, ValueError) as exc:
        print(f"{url}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
