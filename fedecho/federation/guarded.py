"""A wrapper around any Flower strategy (the way Flower's DP wrappers hold ``strategy=``) that

- adds the phase's instructions to every config record and numbers rounds across a resume,
- parses and validates each reply on its own (:func:`parse_reply`: readable arrays, the phase's
  declaration, finite values, the update-norm bound, a finite positive integer ``num-examples``) and
  drops only the bad ones (logged per site with the reason),
- bounds each site's aggregation weight (fedecho.federation.weights; clipped weights are logged),
- fails the round with a clear message when fewer than ``min_sites`` valid updates remain,
- records per-site metrics and bytes on the wire for the run history.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedecho.federation.arrays import MalformedArrayError, numpy_dict, parse_record, to_arrayrecord, view_record
from fedecho.federation.contract import ARRAYS, METRICS, Declaration, MetricKey
from fedecho.federation.history import RoundRecord
from fedecho.federation.validation import check_update
from fedecho.federation.weights import WeightPolicy, bound_weights, parse_num_examples

__all__ = ["GuardedStrategy", "ParsedReply", "RejectedReply", "RoundFailedError", "parse_reply", "site_name"]

log = logging.getLogger(__name__)


class RoundFailedError(RuntimeError):
    """Too few sites returned a valid update for the round to count."""


def site_name(message: Message) -> str:
    """``site_<index>`` from the reply's site index (a whole number), else ``node_<Flower node id>``."""
    metrics = message.content.metric_records.get(METRICS) if message.has_content() else None
    index = metrics.get(MetricKey.SITE_INDEX) if metrics is not None else None
    if _is_scalar(index) and math.isfinite(index) and float(index).is_integer() and 0 <= index < 2**31:
        return f"site_{int(index)}"
    return f"node_{message.metadata.src_node_id}"


def _distinct_name(message: Message, names: dict[str, int]) -> str:
    """:func:`site_name`, unless another node of this round already claimed that name (a site can
    report any index): then ``<name>@node_<id>``, so no site's record overwrites another's."""
    name, node = site_name(message), message.metadata.src_node_id
    if names.setdefault(name, node) != node:
        name = f"{name}@node_{node}"
        names[name] = node
    return name


def _is_scalar(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _contract_records_only(message: Message) -> list[str]:
    """Keep only the records a reply may carry (``arrays``, ``metrics``); the problems if it carried
    another array or metric record (Flower's aggregation refuses the whole round for those)."""
    content = message.content
    extra = [k for k in (*content.array_records, *content.metric_records) if k not in (ARRAYS, METRICS)]
    kept = {k: content[k] for k in (ARRAYS, METRICS) if k in content}
    message.content = RecordDict(kept)
    return [f"unexpected record {k!r} in reply" for k in extra]


class RejectedReply(ValueError):
    """One site's reply cannot be aggregated; ``problems`` says why (all problems found)."""

    def __init__(self, problems: list[str]) -> None:
        shown = problems[:5] + ([f"... and {len(problems) - 5} more"] if len(problems) > 5 else [])
        super().__init__("; ".join(shown))
        self.problems = problems


@dataclass
class ParsedReply:
    """A reply that passed :func:`parse_reply`: its arrays (read-only views) and its example count."""

    message: Message
    arrays: dict[str, np.ndarray]
    num_examples: int


def parse_reply(message: Message, declaration: Declaration, *, reference: Mapping[str, np.ndarray] | None = None,
                max_update_norm: float | None = None) -> ParsedReply:
    """Parse and validate one train reply on its own; raise :class:`RejectedReply` with every problem.
    The message keeps only its ``arrays`` and ``metrics`` records (what Flower's aggregation reads).

    Each array's bytes are checked before anything reads them (a short or foreign payload is that
    site's problem, never the round's), then the update against the phase's declaration (names,
    shapes, dtypes, NaN/Inf, the norm bound), then ``num-examples`` (a finite positive integer).
    """
    problems = _contract_records_only(message)
    record = message.content.array_records.get(ARRAYS)
    metrics = message.content.metric_records.get(METRICS)
    arrays: dict[str, np.ndarray] = {}
    if record is None:
        problems.append("no arrays in reply")
    else:
        try:
            arrays = parse_record(record)
        except MalformedArrayError as err:
            problems.append(f"malformed {err}")
        else:
            problems += check_update(arrays, declaration, reference=reference, max_update_norm=max_update_norm)
    num_examples = 0
    if metrics is None or MetricKey.NUM_EXAMPLES not in metrics:
        problems.append("no num-examples metric in reply")
    else:
        try:
            num_examples = parse_num_examples(metrics[MetricKey.NUM_EXAMPLES])
        except ValueError as err:
            problems.append(str(err))
    if problems:
        raise RejectedReply(problems)
    return ParsedReply(message, arrays, num_examples)


def _common_metrics(messages: list[Message]) -> list[Message]:
    """Keep only the scalar metric keys every reply has (sites can report different task metrics,
    e.g. a per-class AUROC for a class one site lacks); Flower aggregates identical key sets only,
    and a list where another site sent a number would fail the round."""
    if not messages:
        return messages
    records = [m.content.metric_records[METRICS] for m in messages]
    common = {k for k in set(records[0]).intersection(*map(set, records[1:])) - {MetricKey.SITE_INDEX}
              if all(_is_scalar(r[k]) for r in records)}
    for message, record in zip(messages, records, strict=True):
        if set(record) != common:
            message.content.metric_records[METRICS] = MetricRecord({k: record[k] for k in record if k in common})
    return messages


def _number(value: object) -> float:
    """A metric value as a float (0 for a missing or non-numeric value)."""
    return float(value) if _is_scalar(value) else 0.0


def _scalars(record: MetricRecord | None) -> dict[str, float]:
    """Scalar metrics of a reply (the site's index only names the site)."""
    if record is None:
        return {}
    return {k: float(v) for k, v in record.items() if isinstance(v, (int, float)) and k != MetricKey.SITE_INDEX}


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
        weights: WeightPolicy | None = None,
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
        self.weights = weights or WeightPolicy()
        """How replies are weighted (examples with a bounded ratio unless configured otherwise)."""
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
        parsed: dict[int, tuple[str, ParsedReply]] = {}  # by Flower's (authenticated) node id
        names: dict[str, int] = {}
        for message in replies:
            site = _distinct_name(message, names)
            if message.has_error():
                record.rejected[site] = f"error: {message.error.reason}"
                log.warning("round %d (%s): %s failed: %s", absolute, self.phase_name, site, message.error.reason)
                continue
            arrays = message.content.array_records.get(ARRAYS)
            record.bytes_received += arrays.count_bytes() if arrays is not None else 0
            metrics = message.content.metric_records.get(METRICS)
            if metrics is not None and _number(metrics.get(MetricKey.BUDGET_SPENT)) > 0:
                epsilon = _number(metrics.get(MetricKey.EPSILON))
                record.rejected[site] = f"privacy budget spent (epsilon {epsilon:.3g}): stopped training"
                log.warning("round %d (%s): %s stopped: %s", absolute, self.phase_name, site, record.rejected[site])
                continue
            try:
                parsed[message.metadata.src_node_id] = site, parse_reply(
                    message, self.declaration, reference=self._reference, max_update_norm=self.max_update_norm)
            except RejectedReply as err:
                record.rejected[site] = str(err)
                log.warning("round %d (%s): rejected update from %s: %s", absolute, self.phase_name, site, err)
        if len(parsed) < self.min_sites:
            listed = list(record.rejected.items())
            reasons = "; ".join(f"{s}: {r}" for s, r in listed[:5]) or "no site replied in time"
            if len(listed) > 5:
                reasons += f"; ... and {len(listed) - 5} more sites (see the log)"
            raise RoundFailedError(
                f"phase {self.phase_name} round {absolute}: {len(parsed)} valid updates from {len(replies)} "
                f"replies, but min-sites is {self.min_sites} ({reasons})"
            )
        decision = bound_weights({node: reply.num_examples for node, (_, reply) in parsed.items()}, self.weights)
        for node, reason in decision.clipped.items():
            record.clipped[parsed[node][0]] = reason
            log.warning("round %d (%s): %s: %s", absolute, self.phase_name, parsed[node][0], reason)
        valid: list[Message] = []
        # in node order: Flower samples (and replies arrive) in random order, and a float sum depends on
        # its order; a fixed order makes the aggregate, and so a resumed run, reproducible bit for bit
        for node, (site, reply) in sorted(parsed.items()):
            message = reply.message
            metrics = message.content.metric_records[METRICS]
            record.sites_train[site] = _scalars(metrics)
            # the strategy weights by num-examples: hand it the bounded weight (the site's own count
            # stays in the history); the arrays become the zero-copy views parse_reply checked
            message.content.metric_records[METRICS] = MetricRecord(
                {**dict(metrics), MetricKey.NUM_EXAMPLES: decision.weights[node]})
            message.content[ARRAYS] = view_record(message.content.array_records[ARRAYS])
            valid.append(message)
        arrays, metrics = self.strategy.aggregate_train(absolute, _common_metrics(valid))
        record.train = _scalars(metrics)
        return (self._as_declared(arrays) if arrays is not None else None), metrics

    def _as_declared(self, arrays: ArrayRecord) -> ArrayRecord:
        """The global arrays in their declared dtypes: Flower's FedAdam/FedYogi compute in float64,
        which would double the bytes sent to every site and drift from the phase's declaration."""
        if all(value.dtype == self.declaration[name].dtype for name, value in arrays.items()
               if name in self.declaration):
            return arrays
        return to_arrayrecord({name: value.numpy().astype(self.declaration[name].dtype, copy=False)
                               if name in self.declaration else value.numpy() for name, value in arrays.items()})

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
        counted: dict[int, tuple[str, Message, int]] = {}
        names: dict[str, int] = {}
        for message in replies:
            site = _distinct_name(message, names)
            if message.has_error():
                log.warning("round %d (%s): evaluation on %s failed: %s", absolute, self.phase_name, site,
                            message.error.reason)
                continue
            problems = _contract_records_only(message)
            metrics = message.content.metric_records.get(METRICS)
            reported = metrics.get(MetricKey.NUM_EXAMPLES, 0) if metrics is not None else 0
            if reported == 0 and not problems:
                continue  # nothing evaluated on this site (e.g. no labelled test patients)
            try:
                if problems:
                    raise ValueError("; ".join(problems))
                counted[message.metadata.src_node_id] = site, message, parse_num_examples(reported)
            except ValueError as err:
                log.warning("round %d (%s): evaluation from %s left out: %s", absolute, self.phase_name, site, err)
        # evaluation metrics are weighted like updates: one site cannot dominate them either
        decision = bound_weights({node: n for node, (_, _, n) in counted.items()}, self.weights)
        good = []
        for node, (site, message, _) in counted.items():
            metrics = message.content.metric_records[METRICS]
            if node in decision.clipped:
                log.warning("round %d (%s): evaluation from %s: %s", absolute, self.phase_name, site,
                            decision.clipped[node])
            if self.current is not None:
                self.current.sites_evaluate[site] = _scalars(metrics)
            message.content.metric_records[METRICS] = MetricRecord(
                {**dict(metrics), MetricKey.NUM_EXAMPLES: decision.weights[node]})
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
