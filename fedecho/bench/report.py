"""A bench run as a record (JSON) and a Markdown table; :func:`run_benchmarks` produces the record.

Record schema (``schema: fedecho-bench/1``)::

    {"schema", "command", "started", "seconds", "machine": {...}, "options": {quick, reps, threads},
     "benchmarks": [{"name", "title", "goal", "command", "seconds", "status", "error",
                     "rows": [{"case", "metric", "unit", "median", "q1", "q3", "min", "max", "n",
                               "reps", "goal", "status", "note", "details"}]}]}

A benchmark's status is ``error`` when it raised, ``miss`` when any row missed its goal, ``pass``
when a row met its goal and none missed, ``skipped`` when nothing was measured, else ``info``.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from fedecho.bench.common import BenchOptions, Row, describe_machine, machine_info
from fedecho.bench.registry import BENCHMARKS

__all__ = ["SCHEMA", "benchmark_status", "run_benchmarks", "to_markdown", "write_results"]

SCHEMA = "fedecho-bench/1"

log = logging.getLogger(__name__)


def benchmark_status(rows: Sequence[Mapping[str, Any]], error: str | None = None) -> str:
    statuses = {row["status"] for row in rows}
    if error is not None:
        return "error"
    if "miss" in statuses:
        return "miss"
    if "pass" in statuses:
        return "pass"
    if statuses <= {"skipped"}:
        return "skipped"
    return "info"


def _command(name: str, options: BenchOptions) -> str:
    parts = ["fedecho bench", name, *(["--quick"] if options.quick else [])]
    if options.reps is not None:
        parts.append(f"--reps {options.reps}")
    parts.append(f"--threads {options.threads}")
    return " ".join(parts)


def run_benchmarks(names: Sequence[str], options: BenchOptions, *, command: str, echo=print,
                   after_each: Callable[[dict[str, Any]], Any] | None = None) -> dict[str, Any]:
    """Run the benchmarks ``names`` one after the other and return the run record. A benchmark
    that raises is recorded with status ``error`` and its message; the others still run.
    ``after_each(record)`` gets the record so far after every benchmark (e.g. to write it, so a
    long run that is stopped keeps what it measured)."""
    specs = [BENCHMARKS.get(name) for name in names]  # unknown names fail before anything runs
    started = dt.datetime.now(dt.UTC)
    start = time.perf_counter()
    machine = machine_info(options.threads)
    echo(f"command: {command}\nmachine: {describe_machine(machine)}")
    results: list[dict[str, Any]] = []
    record = {"schema": SCHEMA, "command": command, "started": started.isoformat(timespec="seconds"),
              "seconds": 0.0, "machine": machine,
              "options": {"quick": options.quick, "reps": options.reps, "threads": options.threads},
              "benchmarks": results}
    for spec in specs:
        bench_command = _command(spec.name, options)
        echo(f"\n== {spec.name}: {spec.title} (goal {spec.goal})\n   {bench_command}")
        bench_start = time.perf_counter()
        rows: list[Row] = []
        error = None
        try:
            rows = spec.load()(options)
        except Exception as err:  # noqa: BLE001 - one failing benchmark must not lose the others
            error = f"{type(err).__name__}: {err}"
            log.debug("benchmark %s failed:\n%s", spec.name, traceback.format_exc())
            echo(f"   error: {error}")
        row_dicts = [row.as_dict() for row in rows]
        for row in row_dicts:
            echo("   " + _row_line(row))
        results.append({"name": spec.name, "title": spec.title, "goal": spec.goal, "command": bench_command,
                        "seconds": round(time.perf_counter() - bench_start, 2),
                        "status": benchmark_status(row_dicts, error), "error": error, "rows": row_dicts})
        record["seconds"] = round(time.perf_counter() - start, 2)
        if after_each is not None:
            after_each(record)
    return record


def _number(value: float | None) -> str:
    if value is None:
        return "–"
    if value == 0 or 1e-3 <= abs(value) < 1e5:
        return f"{value:.4g}"
    return f"{value:.3e}"


def _spread(row: Mapping[str, Any]) -> str:
    if not row.get("n"):
        return "–"
    if row["n"] == 1:
        return "single value"
    return (f"IQR {_number(row['q1'])}–{_number(row['q3'])}; "
            f"min–max {_number(row['min'])}–{_number(row['max'])}")


def _row_line(row: Mapping[str, Any]) -> str:
    goal = f", goal {row['goal']}" if row["goal"] else ""
    note = f" — {row['note']}" if row["note"] else ""
    return (f"{row['case']}: {row['metric']} median {_number(row['median'])} {row['unit']} ({_spread(row)}, "
            f"n={row['n']}){goal}: {row['status']}{note}")


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def to_markdown(record: Mapping[str, Any]) -> str:
    """The run as Markdown: command, machine, one table of rows per benchmark."""
    lines = [f"# fedecho bench — {record['started']}", "",
             f"- command: `{record['command']}`", f"- machine: {describe_machine(record['machine'])}",
             f"- total: {record['seconds']:.0f} s", ""]
    for bench in record["benchmarks"]:
        heading = f"`{bench['command']}` — goal {bench['goal']} — **{bench['status']}** ({bench['seconds']:.0f} s)"
        lines += [f"## {bench['name']}: {bench['title']}", "", heading, ""]
        if bench["error"]:
            lines += [f"error: `{_cell(bench['error'])}`", ""]
        if bench["rows"]:
            lines += ["| case | metric | median | spread | n | goal | status | note |",
                      "|---|---|---|---|---|---|---|---|"]
            for row in bench["rows"]:
                cells = (row["case"], row["metric"], f"{_number(row['median'])} {row['unit']}", _spread(row),
                         row["n"], row["goal"] or "–", row["status"], row["note"])
                lines.append("| " + " | ".join(_cell(x) for x in cells) + " |")
            lines.append("")
    return "\n".join(lines)


def write_results(record: Mapping[str, Any], out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``bench-<UTC timestamp>.json`` and ``.md`` into ``out_dir``; return both paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.fromisoformat(record["started"]).strftime("%Y%m%d-%H%M%S")
    stem = out / f"bench-{stamp}"
    json_path, md_path = stem.with_suffix(".json"), stem.with_suffix(".md")
    json_path.write_text(json.dumps(record, indent=1, default=str) + "\n")
    md_path.write_text(to_markdown(record) + "\n")
    return json_path, md_path
