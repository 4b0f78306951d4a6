"""The run report: ``RUN_DIR/report/report.md`` with its PNGs beside it.

Sections appear only for what the run directory holds: the reproduction table (``summary.json``),
per phase the final evaluation and training metrics (global, central and per site), learning
curves and rejected updates; the privacy budget per site (when sites reported ε); bytes on the
wire; one section per prediction file; TensorBoard scalars that the history does not already hold.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

from fedecho.federation.contract import MetricKey
from fedecho.federation.history import RoundRecord
from fedecho.report.curves import (
    CENTRAL,
    GLOBAL,
    epsilon_series,
    plot_bytes,
    plot_epsilon,
    plot_learning_curves,
)
from fedecho.report.document import Document, format_bytes, format_value, plural
from fedecho.report.prediction_sections import add_prediction_section
from fedecho.report.predictions import load_predictions
from fedecho.report.rundir import (
    group_phases,
    load_history,
    load_summary,
    prediction_files,
    primary_metric,
)

__all__ = ["REPORT_DIR", "REPORT_FILE", "write_report"]

log = logging.getLogger(__name__)

REPORT_DIR = "report"
REPORT_FILE = "report.md"
_MAX_TB_TAGS = 60


def write_report(run_dir: str | Path, *, seed: int = 0) -> Path:
    """Render the report of ``run_dir`` into ``RUN_DIR/report/`` and return the path of report.md.

    Every input is read and checked before anything is written: a missing or corrupt
    ``history.json`` (FileNotFoundError / EchoDataError naming the file), a corrupt
    ``summary.json`` or prediction file (EchoDataError naming it). PNGs of an earlier report in
    ``RUN_DIR/report/`` are replaced. ``seed`` fixes the t-SNE layout.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"{run_dir}: run directory not found")
    records = load_history(run_dir)
    summary = load_summary(run_dir)
    predictions = [load_predictions(path) for path in prediction_files(run_dir)]

    folder = run_dir / REPORT_DIR
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.png"):
        old.unlink()
    doc = Document(folder)
    doc.heading(1, f"FedEcho run report: `{run_dir.resolve().name}`")
    doc.paragraph(_overview(records))
    if summary:
        doc.heading(2, "Reproduction results")
        columns = list(dict.fromkeys(key for row in summary for key in row))
        doc.table(columns, [[row.get(c, "") for c in columns] for row in summary])
    for phase, phase_records in group_phases(records).items():
        _phase_section(doc, phase, phase_records)
    if epsilon_series(records):
        _privacy_section(doc, records, _privacy_unit(run_dir))
    if records:
        _communication_section(doc, records)
    if predictions:
        doc.heading(2, "Predictions")
        for item in predictions:
            add_prediction_section(doc, item, seed=seed)
    _tensorboard_section(doc, run_dir / "tb", records)

    path = folder / REPORT_FILE
    tmp = folder / f".{REPORT_FILE}.tmp"
    tmp.write_text(doc.text(), encoding="utf-8")
    os.replace(tmp, path)
    log.info("wrote %s (%d figures)", path, len(doc.figures))
    return path


def _sites(records: Sequence[RoundRecord]) -> list[str]:
    names = {}
    for record in records:
        names.update(dict.fromkeys([*record.sites_train, *record.sites_evaluate, *record.rejected]))
    return list(names)


def _overview(records: Sequence[RoundRecord]) -> str:
    if not records:
        return "`history.json` holds no rounds yet."
    phases = group_phases(records)
    sites = _sites(records)
    wire = sum(r.bytes_sent + r.bytes_received for r in records)
    seconds = sum(r.seconds for r in records)
    return (
        f"{plural(len(records), 'round')} in {plural(len(phases), 'phase')} ({', '.join(f'`{p}`' for p in phases)}); "
        f"{plural(len(sites), 'site')}: {', '.join(sites) or 'none'}; {format_bytes(wire)} on the wire; "
        f"{format_value(round(seconds, 1))} s of rounds."
    )


def _metrics_table(doc: Document, records: Sequence[RoundRecord], kind: str, primary: str | None) -> None:
    """Metrics of the last round of the phase that has ``kind`` metrics: rows = metrics, columns =
    global (aggregated), central (evaluate only) and each site; a site without the metric in that
    round (rejected, not sampled) shows n/a."""
    def sources(record: RoundRecord) -> dict[str, dict[str, float]]:
        out = {GLOBAL: record.train} if kind == "train" else {GLOBAL: record.evaluate, CENTRAL: record.central}
        return {**out, **(record.sites_train if kind == "train" else record.sites_evaluate)}

    chosen = [r for r in records if any(sources(r).values())]
    if not chosen:
        return
    record = chosen[-1]
    columns = {label: metrics for label, metrics in sources(record).items() if metrics}
    metrics = list(dict.fromkeys(m for values in columns.values() for m in values))
    if primary in metrics:
        metrics.insert(0, metrics.pop(metrics.index(primary)))
    title = "Final evaluation" if kind == "evaluate" else "Final training metrics"
    doc.paragraph(f"**{title}** (round {record.round}):")
    doc.table(["metric", *columns], [[m, *(v.get(m, float("nan")) for v in columns.values())] for m in metrics])


def _phase_section(doc: Document, phase: str, records: Sequence[RoundRecord]) -> None:
    rounds = sorted(r.round for r in records)
    doc.heading(2, f"Phase `{phase}`")
    metric = primary_metric(phase, records)
    span = f"round {rounds[0]}" if len(rounds) == 1 else f"rounds {rounds[0]}–{rounds[-1]}"
    doc.paragraph(
        f"{plural(len(records), 'round')} ({span})"
        + (f"; primary evaluation metric `{metric}`." if metric else "; no evaluation metrics recorded.")
    )
    _metrics_table(doc, records, "evaluate", metric)
    _metrics_table(doc, records, "train", MetricKey.LOSS)
    try:
        fig = plot_learning_curves(phase, records, metric)
    except ValueError as err:  # neither a training loss nor an evaluation metric: nothing to draw
        log.info("no learning curves: %s", err)
    else:
        what = " and ".join(f"`{ax.get_ylabel()}`" for ax in fig.axes)
        doc.figure(fig, f"curves_{phase}", f"Learning curves of phase `{phase}`: {what} per round, per site and global.")
    rejected = [(r.round, site, reason) for r in records for site, reason in r.rejected.items()]
    if rejected:
        doc.paragraph(f"**Rejected or missing updates** ({len(rejected)}):")
        doc.table(["round", "site", "reason"], rejected)


def _privacy_unit(run_dir: Path) -> str:
    """``federation.privacy.unit`` from the run's ``config.json``; runs from before that setting
    counted ε per example."""
    import json

    try:
        config = json.loads((run_dir / "config.json").read_text())
        return str(config["federation"]["privacy"].get("unit", "example"))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return "unknown (no readable config.json)"


def _privacy_section(doc: Document, records: Sequence[RoundRecord], unit: str) -> None:
    doc.heading(2, "Privacy (DP-SGD)")
    last: dict[str, dict[str, float]] = {}
    for record in records:
        for site, metrics in record.sites_train.items():
            if MetricKey.EPSILON in metrics:
                last[site] = {**metrics, "round": record.round, "phase": record.phase}
    rows = [[site, m["phase"], m["round"], m[MetricKey.EPSILON], m.get(MetricKey.EPSILON_EXAMPLE, float("nan")),
             m.get(MetricKey.DELTA, float("nan")), "yes" if m.get(MetricKey.BUDGET_SPENT, 0) else "no"]
            for site, m in last.items()]
    doc.paragraph(f"ε is per **{unit}** (`federation.privacy.unit`); ε per example is shown beside it. "
                  "Last values reported by each site (the accountant composes over all rounds and phases):")
    doc.table(["site", "phase", "round", f"ε ({unit})", "ε (example)", "δ", "budget spent"], rows)
    doc.figure(plot_epsilon(records), "epsilon", f"Privacy budget ε per {unit} spent per site over the run's rounds.")


def _communication_section(doc: Document, records: Sequence[RoundRecord]) -> None:
    doc.heading(2, "Communication")
    rows = []
    for phase, phase_records in group_phases(records).items():
        sent = sum(r.bytes_sent for r in phase_records)
        received = sum(r.bytes_received for r in phase_records)
        rows.append([f"`{phase}`", len(phase_records), format_bytes(sent), format_bytes(received),
                     format_value(round(sum(r.seconds for r in phase_records), 1))])
    rows.append(["**total**", len(records), format_bytes(sum(r.bytes_sent for r in records)),
                 format_bytes(sum(r.bytes_received for r in records)),
                 format_value(round(sum(r.seconds for r in records), 1))])
    doc.table(["phase", "rounds", "sent", "received", "seconds"], rows)
    if any(r.bytes_sent or r.bytes_received for r in records):
        doc.figure(plot_bytes(records), "bytes", "Bytes sent to and received from the sites per round (MB).")


def _tensorboard_section(doc: Document, tb_dir: Path, records: Sequence[RoundRecord]) -> None:
    """Scalars in ``RUN_DIR/tb`` outside the history's own tags (e.g. sites' step-level losses)."""
    if not tb_dir.is_dir() or not any(tb_dir.rglob("events.out.tfevents.*")):
        return
    from fedecho.report.tensorboard import read_scalars

    scalars = read_scalars(tb_dir)
    history_prefixes = {record.phase.replace(":", "_") + "/" for record in records}
    extra = {tag: values for tag, values in scalars.items()
             if values and not any(tag.startswith(prefix) for prefix in history_prefixes)}
    if not extra:
        return
    doc.heading(2, "Other TensorBoard scalars")
    shown = sorted(extra)[:_MAX_TB_TAGS]
    more = f" ({len(extra) - len(shown)} more not listed)" if len(extra) > len(shown) else ""
    doc.paragraph(f"{plural(len(extra), 'tag')} in `tb/` beyond the round history{more}; last value of each:")
    doc.table(["tag", "points", "last step", "last value"],
              [[tag, len(extra[tag]), extra[tag][-1][0], extra[tag][-1][1]] for tag in shown])
