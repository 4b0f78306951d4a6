"""Prediction files of a run: ``RUN_DIR/predictions/<name>.npz``, one per evaluated task.

The run code calls :func:`save_predictions` at the end of an evaluation phase; the report reads
them back with :func:`load_predictions`. A file is a NumPy ``.npz`` archive (compressed, no
pickled objects: strings are stored as NumPy unicode arrays). Its kind follows from its keys:

classification (``probs`` present)
    ``probs`` (N, C) float class probabilities in [0, 1] (softmax outputs), ``targets`` (N,) int
    class indices in 0..C-1, ``class_names`` (C,) str; optional ``sites`` (N,) str (the site each
    sample came from), ``patients`` (N,) str (its patient id: bootstrap intervals resample
    patients) and ``embeddings`` (M, D) float (e.g. the pooled encoder output) of every sample
    (M = N) or, with ``embedding_index`` (M,) int (distinct sample indices in 0..N-1), of a subset.
regression (``preds`` present)
    ``preds`` (N,) float and ``targets`` (N,) float in physical units (EF %, volumes mL, age y);
    optional ``unit`` () str (e.g. ``"mL"``, used on axis labels), ``quantities`` (N,) str (what
    each row measures when a file holds several, e.g. the LVH calipers ``IVSd``/``LVIDd``),
    ``sites``, ``patients``, ``embeddings``, ``embedding_index`` as for classification.
segmentation (``pred_masks`` present)
    a few examples: ``images`` (K, H, W) float in [0, 1], ``masks`` (K, H, W) int ground truth,
    ``pred_masks`` (K, H, W) int prediction (label values as in the task: 0 background, 1 LV
    cavity, 2 myocardium, 3 LA for CAMUS); optional ``class_names`` (C,) str naming label values
    0..C-1. Optional statistics over all N evaluated items: ``sample_dice`` (N, S) float in [0, 1]
    (Dice of each item and structure), with ``structure_names`` (S,) str (required with it), and
    ``patients`` (N,) str, ``sites`` (N,) str, ``phases`` (N,) str (each item's cardiac phase, e.g.
    ``ED``/``ES``; ``""`` where unknown) (allowed only with ``sample_dice``).

Every array must be finite. Both functions check the whole file and raise one
:class:`~fedecho.data.errors.EchoDataError` naming the file and listing every problem.

>>> save_predictions(tmp / "view.npz", probs=p, targets=y, class_names=["A2C", "A4C"])  # doctest: +SKIP
>>> load_predictions(tmp / "view.npz").kind  # doctest: +SKIP
'classification'
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedecho.data.errors import EchoDataError
from fedecho.data.schema import DataIssue

__all__ = ["PREDICTION_KEYS", "Predictions", "load_predictions", "save_predictions"]

#: kind -> (required keys, optional keys)
PREDICTION_KEYS: Mapping[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "classification": (("probs", "targets", "class_names"), ("embeddings", "embedding_index", "sites", "patients")),
    "regression": (("preds", "targets"), ("unit", "quantities", "embeddings", "embedding_index", "sites", "patients")),
    "segmentation": (
        ("images", "masks", "pred_masks"),
        ("class_names", "sample_dice", "structure_names", "patients", "sites", "phases"),
    ),
}
#: the key whose presence decides the kind
_MARKERS = {"probs": "classification", "preds": "regression", "pred_masks": "segmentation"}


@dataclass(frozen=True)
class Predictions:
    """The arrays of one prediction file; ``kind`` is ``classification``, ``regression`` or
    ``segmentation`` and ``name`` the file stem (the task or evaluation it belongs to)."""

    name: str
    kind: str
    arrays: Mapping[str, np.ndarray]

    def __getitem__(self, key: str) -> np.ndarray:
        return self.arrays[key]

    def __contains__(self, key: object) -> bool:
        return key in self.arrays

    def __iter__(self) -> Iterator[str]:
        return iter(self.arrays)

    def get(self, key: str, default: np.ndarray | None = None) -> np.ndarray | None:
        return self.arrays.get(key, default)

    @property
    def size(self) -> int:
        """N (samples) for classification/regression, K (examples) for segmentation."""
        return len(self.arrays["targets" if "targets" in self.arrays else "masks"])

    @property
    def num_items(self) -> int:
        """N: rows of the per-sample arrays (segmentation: of ``sample_dice``, else K)."""
        if self.kind == "segmentation":
            return len(self.arrays["sample_dice"]) if "sample_dice" in self.arrays else self.size
        return self.size


def save_predictions(path: str | Path, **arrays: Any) -> Path:
    """Check ``arrays`` against the format above and write them to ``path`` (``.npz``) atomically.

    numpy arrays, torch tensors and lists are accepted; string lists become unicode arrays.
    Returns the path written. Raises EchoDataError (naming ``path``) listing every problem.
    """
    path = Path(path)
    if path.suffix != ".npz":
        raise EchoDataError.at(path, "prediction files must end in .npz")
    converted = {key: _as_array(value) for key, value in arrays.items()}
    _check(path, converted)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as handle:
        np.savez_compressed(handle, **converted)
    os.replace(tmp, path)
    return path


def load_predictions(path: str | Path) -> Predictions:
    """Read and check one prediction file; EchoDataError naming the file on any problem."""
    path = Path(path)
    if not path.is_file():
        raise EchoDataError.at(path, "prediction file not found")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
        raise EchoDataError.at(path, f"not a readable .npz archive ({type(err).__name__}: {err})") from None
    kind = _check(path, arrays)
    return Predictions(name=path.stem, kind=kind, arrays=arrays)


def _as_array(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # torch tensor
        value = value.detach().cpu().numpy()
    array = np.asarray(value)
    if array.dtype == object:  # e.g. a list of str mixed with None: store as str, loadable without pickle
        array = array.astype(str)
    return array


def _check(path: Path, arrays: Mapping[str, np.ndarray]) -> str:
    """The kind of ``arrays``; raises EchoDataError listing every problem."""
    kinds = sorted({_MARKERS[key] for key in arrays if key in _MARKERS})
    if len(kinds) != 1:
        found = f"keys for {' and '.join(kinds)}" if kinds else f"keys {sorted(arrays)}"
        raise EchoDataError.at(
            path,
            f"cannot tell the prediction kind from {found}; a file holds exactly one of 'probs' "
            f"(classification), 'preds' (regression) or 'pred_masks' (segmentation)",
        )
    kind = kinds[0]
    required, optional = PREDICTION_KEYS[kind]
    problems = [f"{kind} file lacks required key {key!r}" for key in required if key not in arrays]
    problems += [
        f"unexpected key {key!r} in a {kind} file (allowed: {', '.join(required + optional)})"
        for key in arrays
        if key not in required + optional
    ]
    if not problems:
        problems = _check_classification(arrays) if kind == "classification" else (
            _check_regression(arrays) if kind == "regression" else _check_segmentation(arrays))
    if problems:
        raise EchoDataError([DataIssue(str(path), problem) for problem in problems])
    return kind


def _shape_problem(arrays: Mapping[str, np.ndarray], key: str, ndim: int, numeric: str) -> str | None:
    """Checks rank and dtype family (``float``, ``int``, ``str``) and finiteness of one array."""
    array = arrays[key]
    if array.ndim != ndim:
        return f"{key!r} must have {ndim} dimension(s), got shape {array.shape}"
    if numeric == "str":
        return None if array.dtype.kind == "U" else f"{key!r} must hold strings, got dtype {array.dtype}"
    if numeric == "int" and array.dtype.kind not in "iub":
        return f"{key!r} must hold integers, got dtype {array.dtype}"
    if numeric == "float" and array.dtype.kind not in "fiub":
        return f"{key!r} must be numeric, got dtype {array.dtype}"
    if array.size and not np.isfinite(array.astype(np.float64)).all():
        return f"{key!r} contains NaN or Inf"
    return None


def _rows_problem(arrays: Mapping[str, np.ndarray], key: str, ndim: int, numeric: str, n: int) -> str | None:
    problem = _shape_problem(arrays, key, ndim, numeric)
    if problem is None and len(arrays[key]) != n:
        problem = f"{key!r} has {len(arrays[key])} rows but there are {n} samples"
    return problem


def _common_optional(arrays: Mapping[str, np.ndarray], n: int) -> list[str]:
    """Per-sample ``sites``/``patients``/``quantities`` and ``embeddings`` (+ ``embedding_index``)."""
    problems = [p for key in ("sites", "patients", "quantities")
                if key in arrays and (p := _rows_problem(arrays, key, 1, "str", n))]
    if "embedding_index" in arrays and "embeddings" not in arrays:
        problems.append("'embedding_index' given without 'embeddings'")
    elif "embeddings" in arrays:
        problem = _shape_problem(arrays, "embeddings", 2, "float")
        if problem:
            problems.append(problem)
        elif "embedding_index" not in arrays:
            if len(arrays["embeddings"]) != n:
                problems.append(f"'embeddings' has {len(arrays['embeddings'])} rows but there are {n} samples "
                                f"(give 'embedding_index' for a subset)")
        elif (problem := _shape_problem(arrays, "embedding_index", 1, "int")):
            problems.append(problem)
        else:
            index = arrays["embedding_index"]
            if len(index) != len(arrays["embeddings"]):
                problems.append(f"'embedding_index' has {len(index)} entries but 'embeddings' has "
                                f"{len(arrays['embeddings'])} rows")
            if index.size and (index.min() < 0 or index.max() >= n or len(np.unique(index)) != len(index)):
                problems.append(f"'embedding_index' must hold distinct sample indices in 0..{n - 1}")
    return problems


def _check_classification(arrays: Mapping[str, np.ndarray]) -> list[str]:
    checks = [("probs", 2, "float"), ("targets", 1, "int"), ("class_names", 1, "str")]
    problems = [p for key, ndim, kind in checks if (p := _shape_problem(arrays, key, ndim, kind))]
    if problems:
        return problems
    probs, targets, names = arrays["probs"], arrays["targets"], arrays["class_names"]
    n, c = probs.shape
    if n == 0:
        problems.append("'probs' has no samples")
    if c < 2 or len(names) != c:
        problems.append(f"'probs' has {c} columns but 'class_names' has {len(names)} names (need C >= 2, equal)")
    if len(targets) != n:
        problems.append(f"'targets' has {len(targets)} entries but 'probs' has {n} rows")
    if probs.size and (probs.min() < -1e-6 or probs.max() > 1 + 1e-6):
        problems.append(f"'probs' must be probabilities in [0, 1], got [{probs.min():.4g}, {probs.max():.4g}]")
    if targets.size and (targets.min() < 0 or targets.max() >= c):
        problems.append(f"'targets' has class indices in [{targets.min()}, {targets.max()}]; expected 0..{c - 1}")
    return problems + _common_optional(arrays, n)


def _check_regression(arrays: Mapping[str, np.ndarray]) -> list[str]:
    problems = [p for key in ("preds", "targets") if (p := _shape_problem(arrays, key, 1, "float"))]
    if "unit" in arrays and (p := _shape_problem(arrays, "unit", 0, "str")):
        problems.append(p)
    if problems:
        return problems
    n = len(arrays["preds"])
    if n == 0:
        problems.append("'preds' has no samples")
    if len(arrays["targets"]) != n:
        problems.append(f"'targets' has {len(arrays['targets'])} entries but 'preds' has {n}")
    return problems + _common_optional(arrays, n)


def _check_segmentation(arrays: Mapping[str, np.ndarray]) -> list[str]:
    checks = [("images", 3, "float"), ("masks", 3, "int"), ("pred_masks", 3, "int")]
    problems = [p for key, ndim, kind in checks if (p := _shape_problem(arrays, key, ndim, kind))]
    if "class_names" in arrays and (p := _shape_problem(arrays, "class_names", 1, "str")):
        problems.append(p)
    if problems:
        return problems
    images, masks, pred = arrays["images"], arrays["masks"], arrays["pred_masks"]
    if len(images) == 0:
        problems.append("'images' has no examples")
    if not images.shape == masks.shape == pred.shape:
        problems.append(
            f"'images' {images.shape}, 'masks' {masks.shape} and 'pred_masks' {pred.shape} must have one shape (K, H, W)"
        )
    if images.size and (images.min() < 0 or images.max() > 1):
        problems.append(f"'images' must be scaled to [0, 1], got [{images.min():.4g}, {images.max():.4g}]")
    labels = np.concatenate([masks.reshape(-1), pred.reshape(-1)]) if masks.size or pred.size else np.zeros(0)
    if labels.size and labels.min() < 0:
        problems.append(f"mask label values must be >= 0, got {labels.min()}")
    if "class_names" in arrays and labels.size and labels.max() >= len(arrays["class_names"]):
        problems.append(
            f"mask label {labels.max()} has no name: 'class_names' names labels 0..{len(arrays['class_names']) - 1}"
        )
    return problems + _check_sample_dice(arrays)


def _check_sample_dice(arrays: Mapping[str, np.ndarray]) -> list[str]:
    """The optional per-item statistics of a segmentation file."""
    if "sample_dice" not in arrays:
        extra = [key for key in ("structure_names", "patients", "sites", "phases") if key in arrays]
        return [f"{key!r} describes 'sample_dice' rows but the file has no 'sample_dice'" for key in extra]
    if "structure_names" not in arrays:
        return ["'sample_dice' needs 'structure_names' (S,) naming its columns"]
    problems = [p for key, ndim, kind in (("sample_dice", 2, "float"), ("structure_names", 1, "str"))
                if (p := _shape_problem(arrays, key, ndim, kind))]
    if problems:
        return problems
    dice, names = arrays["sample_dice"], arrays["structure_names"]
    if len(dice) == 0:
        problems.append("'sample_dice' has no rows")
    if dice.shape[1] != len(names):
        problems.append(f"'sample_dice' has {dice.shape[1]} columns but 'structure_names' has {len(names)} names")
    if dice.size and (dice.min() < 0 or dice.max() > 1):
        problems.append(f"'sample_dice' must lie in [0, 1], got [{dice.min():.4g}, {dice.max():.4g}]")
    problems += [p for key in ("patients", "sites", "phases")
                 if key in arrays and (p := _rows_problem(arrays, key, 1, "str", len(dice)))]
    return problems
