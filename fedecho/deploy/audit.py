"""A site's audit log: one JSON line per message received and per reply sent, in
``<state-dir>/audit.jsonl``, and the site log (``<state-dir>/site.log``) with the full detail of
every refusal and error (the coordinator only gets a code and a generic reason).

A line (``event`` = ``received`` or ``sent``)::

    {"time": "2026-12-06T17:40:01.123+00:00", "event": "sent", "run": 42, "message": "…",
     "type": "train", "phase": "adapt:view", "round": 2, "signature": "valid", "policy": "allowed",
     "tensors": [{"name": "head.weight", "shape": [2, 64], "dtype": "float32", "bytes": 512}],
     "metrics": {"num-examples": 24.0, "train-loss": 0.61}, "error": null}

``tensors`` and ``metrics`` are exactly what the message carries (received: the coordinator's
arrays; sent: the reply's), ``error`` the code and reason of an error reply.
``fedecho-client audit`` prints the log as a table (:func:`format_table`).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

__all__ = ["AUDIT_FILE", "SITE_LOG", "append", "content_summary", "format_table", "read_audit", "site_log"]

AUDIT_FILE = "audit.jsonl"
SITE_LOG = "site.log"


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")


def content_summary(message: Any) -> dict[str, Any]:
    """Tensors (name, shape, dtype, bytes), metrics (name: value) and error of a Flower message."""
    tensors: list[dict[str, Any]] = []
    metrics: dict[str, Any] = {}
    error = None
    if message.has_error():
        error = {"code": int(message.error.code), "reason": str(message.error.reason)}
    else:
        content = message.content
        for record_name, record in content.array_records.items():
            for name, array in record.items():
                value = array.numpy()
                tensors.append({"record": record_name, "name": name, "shape": list(value.shape),
                                "dtype": str(value.dtype), "bytes": int(value.nbytes)})
        for record_name, record in content.metric_records.items():
            for name, value in record.items():
                metrics[name if record_name == "metrics" else f"{record_name}/{name}"] = value
    return {"tensors": tensors, "metrics": metrics, "error": error}


def append(state_dir: str | Path, entry: dict[str, Any]) -> None:
    """Append one line to ``<state_dir>/audit.jsonl`` (the folder is made if needed)."""
    path = Path(state_dir) / AUDIT_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps({"time": _now(), **entry}, sort_keys=False, default=str)
    with path.open("a", encoding="utf-8") as handle:
        handle.write(line + "\n")


def site_log(state_dir: str | Path, text: str) -> None:
    """Append a (multi-line) entry to the site's own log; it never leaves the site."""
    path = Path(state_dir) / SITE_LOG
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as handle:
        handle.write(f"{_now()} {text.rstrip()}\n")


def read_audit(path: str | Path) -> list[dict[str, Any]]:
    """The entries of an audit log (a state folder or the file); bad lines are an error naming them."""
    path = Path(path)
    if path.suffix != ".jsonl":  # a state folder
        path = path / AUDIT_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: no message has reached this site yet, or the state "
                                f"folder is another (fedecho-client start --state-dir)")
    entries = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            entries.append(json.loads(line))
        except ValueError as err:
            raise ValueError(f"{path}:{number}: not a JSON line ({err})") from None
    return entries


def _cell(entry: dict[str, Any]) -> str:
    if entry.get("error"):
        return f"ERROR {entry['error']['code']}: {entry['error']['reason']}"
    tensors = entry.get("tensors") or []
    parts = []
    if tensors:
        parts.append(f"{len(tensors)} tensors {sum(t['bytes'] for t in tensors):,} B")
    metrics = entry.get("metrics") or {}
    if metrics:
        parts.append(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items()))
    return "; ".join(parts) or "-"


def format_table(entries: Iterable[dict[str, Any]], *, tensors: bool = False) -> str:
    """A plain-text table (one row per line of the log); ``tensors`` adds one row per tensor."""
    header = ("time", "event", "run", "type", "phase", "round", "signature", "policy", "content")
    rows = [header]
    for entry in entries:
        rows.append((str(entry.get("time", ""))[:23], str(entry.get("event", "")), str(entry.get("run", "")),
                     str(entry.get("type", "")), str(entry.get("phase", "")), str(entry.get("round", "")),
                     str(entry.get("signature", "")), str(entry.get("policy", ""))[:60], _cell(entry)))
        if tensors:
            for t in entry.get("tensors") or []:
                rows.append(("", "", "", "", "", "", "", "  tensor", f"{t['name']} {tuple(t['shape'])} {t['dtype']} "
                                                                     f"{t['bytes']:,} B"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(header) - 1)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r[:-1], widths)) + "  " + r[-1] for r in rows)
