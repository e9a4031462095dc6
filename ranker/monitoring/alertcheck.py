"""Would an alert fire on these figures? The monitors' exported gauges replayed through the real
alert rules with promtool's rule unit tests.

The gauges (the Prometheus text a monitor job writes, :mod:`ranker.monitoring.export`) become
constant input series for ``hold`` minutes; every rule of the monitors' group is asserted to have no
alert at the end. promtool reports each rule that fires anyway, which :func:`alerts_that_would_fire`
returns by name. Timestamp gauges (``*_timestamp_seconds``) are replayed as "just now" (0 at the
start of the test), because promtool's clock starts at the epoch.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import yaml

from ranker.errors import RankerError

MONITOR_GROUP = "ranker-monitors"


def _series(texts: list[str]) -> list[dict[str, str]]:
    from prometheus_client.parser import text_string_to_metric_families

    out = []
    for text in texts:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
                value = 0.0 if sample.name.endswith("_timestamp_seconds") else float(sample.value)
                out.append({"series": f"{sample.name}{{{labels}}}", "values": f"{value!r}x60"})
    return out


def rule_names(rules_path: Path, group: str = MONITOR_GROUP) -> list[str]:
    """The alert names of one rule group of ``rules_path``."""
    groups = yaml.safe_load(Path(rules_path).read_text())["groups"]
    return [r["alert"] for g in groups if g["name"] == group for r in g["rules"] if "alert" in r]


def alerts_that_would_fire(
    texts: list[str],
    rules_path: Path,
    *,
    hold_minutes: int = 30,
    group: str = MONITOR_GROUP,
    promtool: str | None = None,
) -> list[str]:
    """Names of the ``group`` alerts that fire after ``hold_minutes`` of these gauges (empty = quiet)."""
    binary = promtool or shutil.which("promtool")
    if binary is None:
        raise RankerError("promtool not installed (Debian package prometheus): cannot replay the alert rules")
    names = rule_names(rules_path, group)
    test = {
        "rule_files": [str(Path(rules_path).resolve())],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": _series(texts),
                "alert_rule_test": [{"eval_time": f"{hold_minutes}m", "alertname": n, "exp_alerts": []} for n in names],
            }
        ],
    }
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "replay_test.yml"
        path.write_text(yaml.safe_dump(test, sort_keys=False))
        result = subprocess.run(
            [binary, "test", "rules", str(path)], capture_output=True, text=True, timeout=120, check=False
        )  # a failing test is the answer, not an error
    if result.returncode == 0:
        return []
    fired = sorted(set(re.findall(r"alertname: ?(\w+)", result.stdout + result.stderr)))
    if not fired:
        raise RankerError(f"promtool failed: {(result.stdout + result.stderr).strip()[:500]}")
    return fired
