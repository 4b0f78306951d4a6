"""A wrapper around any Flower strategy (the way Flower's DP wrappers hold ``strategy=``) that

- adds the phase's instructions to every config record and numbers rounds across a resume,
- validates each reply against the phase's declaration and drops bad ones (logged with the reason),
- fails the round with a clear message when fewer than ``min_sites`` valid updates remain,
- records per-site metrics and bytes on the wire for the run history.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedecho.federation.arrays import numpy_dict, view_record
from fedecho.federation.contract import ARRAYS, METRICS, Declaration
from fedecho.federation.history import RoundRecord
from fedecho.federation.validation import check_update

__all__ = ["GuardedStrategy", "RoundFailedError", "site_name"]

log = logging.getLogger(__name__)


class RoundFailedError(RuntimeError):
    """Too few sites returned a valid update for the round to count."""


def site_name(message: Message) -> str:
    metrics = message.content.metric_records.get(METRICS) if message.has_content() else None
    if metrics is not None and "site-index" in metrics:
        return f"site_{int(metrics['site-index'])}"
    return f"node_{message.metadata.src_node_id}"


def _common_metrics(messages: list[Message]) -> list[Message]:
    """Keep only the metric keys every reply has (sites can report different task metrics, e.g.
    a per-class AUROC for a class one site lacks); Flower aggregates identical key sets only."""
    if not messages:
        return messages
    records = [m.content.metric_records[METRICS] for m in messages]
    common = set(records[0]).intersection(*map(set, records[1:])) - {"site-index"}
    for message, record in zip(messages, records, strict=True):
        if set(record) != common:
            message.content.metric_records[METRICS] = MetricRecord({k: record[k] for k in record if k in common})
    return messages


def _scalars(record: MetricRecord | None) -> dict[str, float]:
    """Scalar metrics of a reply (the site's index only names the site)."""
    if record is None:
        return {}
    return {k: float(v) for k, v in record.items() if isinstance(v, (int, float)) and k != "site-index"}


class GuardedStrategy(Strategy):
    def __init__(
        self,
        strategy: Strategy,
        *,
        phase_name: str,
        phase_config: Mapping[str, Any],
        declaration: Declaration,
        min_sites: int,
        max_update_norm: float | None = None,
        round_offset: int = 0,
        connect_timeout: float | None = None,
    ) -> None:
        self.strategy = strategy
        self.phase_name = phase_name
        self.phase_config = dict(phase_config)
        self.declaration = declaration
        self.min_sites = min_sites
        self.max_update_norm = max_update_norm
        self.round_offset = round_offset
        self.connect_timeout = connect_timeout
        """Seconds to wait for enough connected sites before a round; None waits as Flower does (forever)."""
        self.current: RoundRecord | None = None
        self._reference: dict[str, np.ndarray] = {}
        self._started = 0.0

    def _await_sites(self, grid: Grid) -> None:
        """Flower's node sampling waits forever for ``min_available_nodes``: bound the wait, then fail
        the round with a message that says how many sites are connected."""
        if self.connect_timeout is None:
            return
        needed = max(self.min_sites, int(getattr(self.strategy, "min_available_nodes", 0) or 0))
        deadline = time.monotonic() + self.connect_timeout
        while (connected := len(list(grid.get_node_ids()))) < needed:
            if time.monotonic() >= deadline:
                raise RoundFailedError(
                    f"phase {self.phase_name}: {connected} site(s) connected after waiting "
                    f"{self.connect_timeout:.0f} s, but the round needs {needed} (min-sites "
                    f"{self.min_sites}); start the missing sites or lower federation.strategy.min_sites")
            time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))

    def absolute(self, server_round: int) -> int:
        return server_round + self.round_offset

    def summary(self) -> None:
        log.info("phase %s: %s over %s, min %d sites, %d declared tensors (%.1f kB)", self.phase_name,
                 type(self.strategy).__name__, "validated replies", self.min_sites, len(self.declaration),
                 sum(s.nbytes for s in self.declaration.values()) / 1e3)
        self.strategy.summary()

    # --- train ----------------------------------------------------------------------------------
    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        absolute = self.absolute(server_round)
        self._started = time.perf_counter()
        self.current = RoundRecord(phase=self.phase_name, round=absolute)
        self._reference = numpy_dict(arrays)
        config = ConfigRecord({**dict(config), **self.phase_config})
        self._await_sites(grid)
        messages = list(self.strategy.configure_train(absolute, arrays, config, grid))
        self.current.bytes_sent += sum(m.content.array_records[ARRAYS].count_bytes() for m in messages
                                       if ARRAYS in m.content.array_records)
        return messages

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        absolute = self.absolute(server_round)
        record = self.current or RoundRecord(phase=self.phase_name, round=absolute)
        replies = list(replies)
        valid: list[Message] = []
        for message in replies:
            site = site_name(message)
            if message.has_error():
                record.rejected[site] = f"error: {message.error.reason}"
                log.warning("round %d (%s): %s failed: %s", absolute, self.phase_name, site, message.error.reason)
                continue
            arrays = message.content.array_records.get(ARRAYS)
            record.bytes_received += arrays.count_bytes() if arrays is not None else 0
            problems = ["no arrays in reply"] if arrays is None else check_update(
                numpy_dict(arrays), self.declaration, reference=self._reference,
                max_update_norm=self.max_update_norm)
            metrics = message.content.metric_records.get(METRICS)
            if metrics is not None and float(metrics.get("budget-spent", 0)) > 0:
                record.rejected[site] = f"privacy budget spent (epsilon {float(metrics.get('epsilon', 0)):.3g}): stopped training"
                log.warning("round %d (%s): %s stopped: %s", absolute, self.phase_name, site, record.rejected[site])
                continue
            if metrics is None or "num-examples" not in metrics:
                problems.append("no num-examples metric in reply")
            elif float(metrics["num-examples"]) <= 0:
                problems.append("num-examples is 0 (the site trained on nothing)")
            if problems:
                shown = problems[:5] + ([f"... and {len(problems) - 5} more"] if len(problems) > 5 else [])
                record.rejected[site] = "; ".join(shown)
                log.warning("round %d (%s): rejected update from %s: %s", absolute, self.phase_name, site,
                            record.rejected[site])
                continue
            record.sites_train[site] = _scalars(metrics)
            # the strategy reads every array of every update: zero-copy views, not np.load copies
            message.content[ARRAYS] = view_record(arrays)
            valid.append(message)
        if len(valid) < self.min_sites:
            listed = list(record.rejected.items())
            reasons = "; ".join(f"{s}: {r}" for s, r in listed[:5]) or "no site replied in time"
            if len(listed) > 5:
                reasons += f"; ... and {len(listed) - 5} more sites (see the log)"
            raise RoundFailedError(
                f"phase {self.phase_name} round {absolute}: {len(valid)} valid updates from {len(replies)} "
                f"replies, but min-sites is {self.min_sites} ({reasons})"
            )
        arrays, metrics = self.strategy.aggregate_train(absolute, _common_metrics(valid))
        record.train = _scalars(metrics)
        return arrays, metrics

    # --- evaluate -------------------------------------------------------------------------------
    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        absolute = self.absolute(server_round)
        config = ConfigRecord({**dict(config), **self.phase_config})
        self._await_sites(grid)
        messages = list(self.strategy.configure_evaluate(absolute, arrays, config, grid))
        if self.current is not None:
            self.current.bytes_sent += sum(m.content.array_records[ARRAYS].count_bytes() for m in messages
                                           if ARRAYS in m.content.array_records)
        return messages

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        absolute = self.absolute(server_round)
        replies = list(replies)
        good = []
        for message in replies:
            site = site_name(message)
            if message.has_error():
                log.warning("round %d (%s): evaluation on %s failed: %s", absolute, self.phase_name, site,
                            message.error.reason)
                continue
            metrics = message.content.metric_records.get(METRICS)
            if metrics is None or float(metrics.get("num-examples", 0)) <= 0:
                continue  # nothing evaluated on this site (e.g. no labelled test patients)
            if self.current is not None:
                self.current.sites_evaluate[site] = _scalars(metrics)
            good.append(message)
        metrics = self.strategy.aggregate_evaluate(absolute, _common_metrics(good)) if good else None
        if self.current is not None:
            self.current.evaluate = _scalars(metrics)
        return metrics

    def finish_round(self) -> RoundRecord | None:
        """Close the current round's record (called from the evaluate_fn hook after each round)."""
        record, self.current = self.current, None
        if record is not None:
            record.seconds = time.perf_counter() - self._started
        return record
