"""Site-level (central) differential privacy at the coordinator: each site's whole update is clipped
to an L2 norm ``C``, the clipped updates are averaged with **uniform** weights, and Gaussian noise of
standard deviation ``z · C / n`` is added to that mean (``n`` = updates aggregated this round).

It follows DP-FedAvg (McMahan et al. 2018, "Learning Differentially Private Recurrent Language
Models", arXiv:1710.06963) as Flower's ``DifferentialPrivacyServerSideFixedClipping`` does, and
wraps any averaging strategy the same way (``strategy=``), but differs where Flower's wrapper is
unsafe for FedEcho:

- **Uniform weights whatever the sites report.** The sensitivity of the mean to one site is
  ``C / n`` only if every site counts ``1 / n``; weighting by ``num-examples`` (e.g. [1, 1, 1000])
  lets one site move the aggregate far more than the noise assumes. Every reply's weight is set to 1.
- **A zero-norm update is fine** (Flower's clipping divides by the norm: an unchanged model raised
  ``ZeroDivisionError``).
- **Noise is calibrated to the updates actually aggregated**, not to the number sampled: a rejected
  site makes the noise larger, never the guarantee weaker. The release is the Gaussian mechanism on
  the sum of clipped updates (sensitivity ``C`` when one site is added or removed), divided by
  ``n``; ``n`` — which sites replied — is treated as public, as the coordinator sees it. Updates
  are never rejected by their norm under site-level DP (the config refuses ``max_update_norm``):
  that would choose participants by their data.
- **Noise enters before a server optimiser.** The same noise vector is added to every clipped reply,
  so the inner strategy's (uniform) mean is ``mean + noise``; FedAdam / FedYogi / FedAvgM then
  post-process a privatised mean. (Robust aggregators — median, trimmed mean, Krum — have another
  sensitivity; the config refuses them with site-level DP.)
- Integer tensors (e.g. BatchNorm's ``num_batches_tracked``) are not privatised, so they keep the
  global value instead of a site's.

No accountant is attached (Flower's needs ``dp-accounting``, whose install downgrades ``attrs``):
each round's noise standard deviation and number of clipped updates are reported in the round's
metrics (``site-dp-noise-std``, ``site-dp-clipped``). The noise comes from the coordinator's own
generator (OS entropy unless one is passed), never from the run's public seed.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedecho.federation.arrays import numpy_dict, to_arrayrecord
from fedecho.federation.contract import ARRAYS, METRICS, MetricKey

__all__ = ["SiteLevelDP", "clip_update"]

log = logging.getLogger(__name__)


def clip_update(arrays: dict[str, np.ndarray], reference: dict[str, np.ndarray],
                clipping_norm: float) -> tuple[dict[str, np.ndarray], float]:
    """``reference + (arrays − reference) · min(1, C / ‖arrays − reference‖)`` over the floating-point
    tensors (integer tensors take ``reference``'s value), and the update's norm before clipping.
    A zero-norm update is returned unchanged."""
    updates = {k: np.asarray(v, dtype=np.float64) - reference[k] for k, v in arrays.items()
               if np.issubdtype(v.dtype, np.floating)}
    norm = float(np.sqrt(sum(float(np.dot(u.ravel(), u.ravel())) for u in updates.values())))
    scale = clipping_norm / norm if norm > clipping_norm else 1.0
    clipped = {k: (reference[k] + updates[k] * scale).astype(v.dtype) if k in updates else reference[k].copy()
               for k, v in arrays.items()}
    return clipped, norm


class SiteLevelDP(Strategy):
    """Clip each site's update to ``clipping_norm``, weight sites uniformly, add Gaussian noise of
    std ``noise_multiplier · clipping_norm / n`` to the mean; ``strategy`` must average its replies."""

    def __init__(self, strategy: Strategy, *, noise_multiplier: float, clipping_norm: float,
                 rng: np.random.Generator | None = None) -> None:
        if noise_multiplier < 0 or not clipping_norm > 0:
            raise ValueError(f"site-level DP needs noise_multiplier >= 0 and clipping_norm > 0, got "
                             f"{noise_multiplier} and {clipping_norm} (federation.privacy.noise_multiplier, "
                             f"federation.privacy.max_grad_norm)")
        self.strategy = strategy
        self.noise_multiplier = noise_multiplier
        self.clipping_norm = clipping_norm
        self.rng = rng if rng is not None else np.random.default_rng()
        self._reference: dict[str, np.ndarray] = {}

    def __repr__(self) -> str:
        return f"SiteLevelDP(z={self.noise_multiplier}, C={self.clipping_norm}, {self.strategy!r})"

    def summary(self) -> None:
        log.info("site-level DP: clipping norm %g, noise multiplier %g, uniform weights", self.clipping_norm,
                 self.noise_multiplier)
        self.strategy.summary()

    def noise_std(self, num_updates: int) -> float:
        """Standard deviation of the noise added to the mean of ``num_updates`` clipped updates."""
        return self.noise_multiplier * self.clipping_norm / num_updates

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        self._reference = {k: np.asarray(v, dtype=np.float64) if np.issubdtype(v.dtype, np.floating) else v
                           for k, v in numpy_dict(arrays).items()}
        return self.strategy.configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = [r for r in replies if not r.has_error()]
        if not replies:
            return None, None
        std = self.noise_std(len(replies))
        noise = {k: self.rng.normal(0.0, std, v.shape) for k, v in self._reference.items()
                 if np.issubdtype(v.dtype, np.floating)} if std > 0 else {}
        clipped_count = 0
        for message in replies:
            clipped, norm = clip_update(numpy_dict(message.content.array_records[ARRAYS]), self._reference,
                                        self.clipping_norm)
            clipped_count += norm > self.clipping_norm
            noised = {k: (v + noise[k]).astype(v.dtype) if k in noise else v for k, v in clipped.items()}
            message.content[ARRAYS] = to_arrayrecord(noised)
            metrics = message.content.metric_records[METRICS]
            message.content.metric_records[METRICS] = MetricRecord({**dict(metrics), MetricKey.NUM_EXAMPLES: 1})
        log.info("round %d: site-level DP clipped %d of %d updates to %g, noise std %.4g", server_round,
                 clipped_count, len(replies), self.clipping_norm, std)
        arrays, metrics = self.strategy.aggregate_train(server_round, replies)
        metrics = MetricRecord({**dict(metrics or {}), "site-dp-noise-std": float(std),
                                "site-dp-clipped": int(clipped_count)})
        return arrays, metrics

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        return self.strategy.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return self.strategy.aggregate_evaluate(server_round, replies)
