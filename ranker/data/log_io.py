"""Reading raw log files and parsing their timestamps: the I/O helpers and error type shared by
the log importers (:mod:`ranker.data.importers`, :mod:`ranker.data.open_bandit`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ranker.data import schema
from ranker.errors import RankerError


class LogImportError(RankerError, ValueError):
    """The file cannot be imported as asked; the message names the file, column or reason."""


def read_any(path: Path, *, what: str = "log") -> pd.DataFrame:
    """Read CSV, TSV, JSON lines or parquet (by extension) with every column as text, so nothing
    is coerced before validation."""
    path = Path(path)
    if not path.exists():
        raise LogImportError(f"{what} file {path} not found")
    if path.is_dir():
        raise LogImportError(f"{what} {path} is a folder; give a .csv, .tsv, .jsonl or .parquet file")
    suffix = "".join(path.suffixes[-2:]).lower()
    try:
        if suffix.endswith(".parquet"):
            df = pd.read_parquet(path)
            return df.astype({c: "object" for c in df.columns if df[c].dtype != object})
        if suffix.endswith((".jsonl", ".ndjson", ".json")):
            return pd.read_json(path, lines=True, dtype=False)
        sep = "\t" if suffix.endswith((".tsv", ".tsv.gz")) else ","
        return pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False, na_values=[""])
    except (ValueError, OSError) as exc:
        raise LogImportError(f"{what} file {path} is not readable as {suffix or 'csv'}: {exc}") from None
    except Exception as exc:  # pyarrow / parser errors of several types
        raise LogImportError(f"{what} file {path} is not readable: {exc.__class__.__name__}: {exc}") from None


def clean_text(s: pd.Series) -> pd.Series:
    """Strings with surrounding blanks removed; empty and null become NA."""
    out = s.astype("string").str.strip()
    return out.mask(out == "")


def parse_timestamps(s: pd.Series) -> pd.Series:
    """UTC timestamps from ISO text (naive = UTC) or unix epochs (s, ms or us by magnitude);
    unparsable values become NaT."""
    text = clean_text(s)
    numeric = pd.to_numeric(text, errors="coerce")
    out = pd.Series(pd.NaT, index=s.index, dtype=schema.TS)
    is_num = numeric.notna()
    if is_num.any():
        v = numeric[is_num].astype("float64")
        unit_div = np.where(v.abs() > 1e14, 1e6, np.where(v.abs() > 1e11, 1e3, 1.0))
        micros = (v / unit_div * 1e6).round().astype("int64")
        out[is_num] = pd.to_datetime(micros, unit="us", utc=True).astype(schema.TS)
    rest = ~is_num & text.notna()
    if rest.any():
        parsed = pd.to_datetime(text[rest], utc=True, errors="coerce", format="mixed")
        out[rest] = parsed.astype(schema.TS)
    return out
