"""Draw random numbers from an explicit generator: ``np.random.Generator`` or ``torch.Generator``.

Every random transform and view builder in FedEcho takes its randomness from a generator passed
by the caller (MONAI style); nothing here touches global random state. Both generator kinds are
accepted so that a dataset's ``np.random.default_rng((seed, epoch, index))`` and a
``torch.Generator().manual_seed(s)`` both work.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["RandomGenerator", "bernoulli", "check_generator", "integer", "permutation", "uniform"]

RandomGenerator = np.random.Generator | torch.Generator


def check_generator(generator: object, who: str) -> RandomGenerator:
    """Return ``generator`` if it is a numpy or torch generator, else raise naming ``who``."""
    if isinstance(generator, (np.random.Generator, torch.Generator)):
        return generator
    raise TypeError(
        f"{who} is random and needs a generator: pass np.random.default_rng(seed) or "
        f"torch.Generator().manual_seed(seed), got {type(generator).__name__}"
    )


def uniform(generator: RandomGenerator, low: float, high: float) -> float:
    """One float uniform in ``[low, high)``."""
    if isinstance(generator, np.random.Generator):
        return float(generator.uniform(low, high))
    return low + (high - low) * float(torch.rand((), generator=generator, dtype=torch.float64))


def integer(generator: RandomGenerator, low: int, high: int) -> int:
    """One integer uniform in ``[low, high)`` (``high`` exclusive, like numpy)."""
    if high <= low:
        raise ValueError(f"empty integer range [{low}, {high})")
    if isinstance(generator, np.random.Generator):
        return int(generator.integers(low, high))
    return int(torch.randint(low, high, (), generator=generator))


def bernoulli(generator: RandomGenerator, p: float) -> bool:
    """True with probability ``p``. ``p`` of exactly 0 or 1 draws nothing (deterministic)."""
    if p <= 0.0:
        return False
    if p >= 1.0:
        return True
    return uniform(generator, 0.0, 1.0) < p


def permutation(generator: RandomGenerator, n: int) -> list[int]:
    """A uniformly random permutation of ``range(n)``."""
    if isinstance(generator, np.random.Generator):
        return [int(i) for i in generator.permutation(n)]
    return [int(i) for i in torch.randperm(n, generator=generator)]
