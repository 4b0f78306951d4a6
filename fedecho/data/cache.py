"""A site-side decoded cache: decode each video/NIfTI/DICOM once, read compact uint8 arrays after.

:class:`DecodedCache` wraps an :class:`~fedecho.data.base.EchoReader`. The first
:meth:`~DecodedCache.load` of a record decodes it with the reader, resizes its frames (and the
pixel labels that go with them: label maps, landmarks, spacing) to the *training resolution*,
and writes them under ``cache_dir`` as memory-mapped ``.npy`` files; later loads — later epochs,
rounds and runs, in any DataLoader worker — map those files instead of decoding (FFCV's and
DALI's "decode once, read compact samples"). Each entry is one folder::

    <cache_dir>/<format>/<key[:2]>/<key>/frames.npy     uint8 (T, h, w) or (h, w)
                                         label.<name>.npy  label maps at (h, w) (uint8 when they fit)
                                         meta.json       the other labels, spacing, fps, and the
                                                         values each label map holds (JSON)

Why memory-mapped ``.npy`` and not zarr / webdataset shards: a training sample needs random
access to a few frames of one item, in any order, from several worker processes; one uncompressed
uint8 array per item gives that with zero decode cost and no new dependency (numpy only), and a
changed item is replaced on its own (shards would be rewritten whole).

**Key.** sha256 of the reader format, the target size, this cache's version, the record's
labels and, for every file of the record, its path, size, modification time (ns) and a
fingerprint of its content (BLAKE2 of the first and last 64 KiB): a file replaced or edited in
place gets a new key and is decoded again (the stale entry stays until ``fedecho data
cache-clear``). The key is computed once per record per process.

**Label values.** When an entry is written, the values of each label map (per frame for a
(K, H, W) stack) are stored with it and served as :attr:`Sample.label_values`, so a task checks a
mask's labels without scanning its pixels on every read (see ``LVSegmentationTask.make_example``).

**Errors.** A record that fails to decode raises the reader's
:class:`~fedecho.data.errors.EchoDataError` on every load, exactly as without the cache (nothing
is written for it), so the skip policy skips and counts it as before.

**Privacy.** The cache holds the site's pixels: it lives in ``data.cache_dir`` (a deployed site
points it into its state directory) or ``$FEDECHO_CACHE/decoded`` and never leaves the site;
nothing in it is sent anywhere, and its error texts are the reader's own. Entries are written to
a temporary folder and renamed into place, so concurrent workers never read a half-written entry.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from fedecho.data.schema import ItemRecord, Sample

__all__ = ["CACHE_VERSION", "DecodedCache", "clear_cache", "default_cache_dir", "map_values", "resize_sample"]

log = logging.getLogger(__name__)

#: Bump when the stored layout or the resizing changes: old entries are then never read.
CACHE_VERSION = 2  # 2: label-map values stored in meta.json
_FINGERPRINT_BYTES = 64 * 1024
_ARRAY_TAG = "__ndarray__"


def default_cache_dir() -> Path:
    """``$FEDECHO_CACHE/decoded`` (``$FEDECHO_CACHE`` defaults to ``~/.cache/fedecho``)."""
    return Path(os.environ.get("FEDECHO_CACHE", Path.home() / ".cache" / "fedecho")) / "decoded"


def clear_cache(cache_dir: str | Path) -> tuple[int, int]:
    """Delete every decoded-cache entry under ``cache_dir``; return (entries, bytes) removed.

    Only folders this module wrote (holding ``meta.json`` and ``frames.npy``) and its temporary
    folders are removed, so a mistyped path never deletes anything else.
    """
    root = Path(cache_dir)
    if not root.is_dir():
        return 0, 0
    entries = freed = 0
    for meta in sorted(root.glob("*/*/*/meta.json")):
        entry = meta.parent
        if not (entry / "frames.npy").is_file():
            continue
        freed += sum(f.stat().st_size for f in entry.iterdir() if f.is_file())
        shutil.rmtree(entry, ignore_errors=True)
        entries += 1
    for tmp in root.glob("*/*/.tmp-*"):
        shutil.rmtree(tmp, ignore_errors=True)
    for folder in sorted(root.glob("*/*"), reverse=True):  # empty key-prefix folders
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
    return entries, freed


def _digest(value: Any, h: Any) -> None:
    """Feed a canonical encoding of labels (dicts, lists, numbers, strings, arrays) to ``h``."""
    if isinstance(value, Mapping):
        h.update(b"{")
        for key in sorted(value, key=str):
            h.update(str(key).encode() + b":")
            _digest(value[key], h)
        h.update(b"}")
    elif isinstance(value, list | tuple):
        h.update(b"[")
        for item in value:
            _digest(item, h)
        h.update(b"]")
    elif isinstance(value, np.ndarray):
        h.update(f"nd{value.dtype.str}{value.shape}".encode())
        h.update(np.ascontiguousarray(value).tobytes())
    else:
        h.update(repr(value).encode())


def _fingerprint(value: Any) -> bytes:
    h = hashlib.sha256()
    _digest(value, h)
    return h.digest()


def _file_fingerprint(path: Path, h: Any) -> None:
    stat = path.stat()
    h.update(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|".encode())
    with path.open("rb") as handle:
        h.update(hashlib.blake2b(handle.read(_FINGERPRINT_BYTES)).digest())
        if stat.st_size > 2 * _FINGERPRINT_BYTES:
            handle.seek(-_FINGERPRINT_BYTES, os.SEEK_END)
            h.update(hashlib.blake2b(handle.read()).digest())


def _resize_frames(frames: np.ndarray, size: tuple[int, int], path: str) -> np.ndarray:
    """Frames (T, H, W) or (H, W) as uint8 at ``size``: area averaging when shrinking, bilinear
    else (as :func:`fedecho.tasks.frames.resize_image`), rounded to the nearest grey level."""
    from fedecho.tasks.frames import to_unit_float

    if frames.dtype == np.uint8 and frames.shape[-2:] == tuple(size):
        return np.ascontiguousarray(frames)
    unit = to_unit_float(frames, path)
    flat = unit.reshape(-1, *unit.shape[-2:])
    h, w = flat.shape[-2:]
    shrinking = size[0] * size[1] < h * w
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    out = np.empty((len(flat), *size), np.uint8)
    for i, frame in enumerate(flat):
        resized = frame if (h, w) == tuple(size) else cv2.resize(frame, (size[1], size[0]),
                                                                  interpolation=interpolation)
        out[i] = np.clip(np.rint(resized * 255.0), 0, 255).astype(np.uint8)
    return out.reshape(*frames.shape[:-2], *size)


def _resize_labels_map(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of (..., H, W) label maps (the rule of ``resize_mask``)."""
    h, w = mask.shape[-2:]
    rows = np.minimum(((np.arange(size[0]) + 0.5) * h / size[0]).astype(np.int64), h - 1)
    cols = np.minimum(((np.arange(size[1]) + 0.5) * w / size[1]).astype(np.int64), w - 1)
    out = mask[..., rows[:, None], cols[None, :]]
    if np.issubdtype(out.dtype, np.integer) and out.size and 0 <= out.min() and out.max() <= 255:
        out = out.astype(np.uint8)
    return np.ascontiguousarray(out)


def resize_sample(sample: Sample, size: tuple[int, int] | None) -> tuple[np.ndarray, dict[str, np.ndarray],
                                                                          dict[str, Any]]:
    """Split a decoded sample into (uint8 frames at ``size``, label maps at ``size``, other labels).

    Label maps are integer arrays whose last two dims are the frame's (H, W); ``landmarks``
    (pixel ``(x1, y1, x2, y2)``) and ``spacing`` (mm per pixel) are rescaled to the new grid.
    ``size`` None keeps the native resolution (frames still become uint8).
    """
    from fedecho.tasks.frames import scale_points

    source = tuple(sample.frames.shape[-2:])
    target = source if size is None else (int(size[0]), int(size[1]))
    frames = _resize_frames(sample.frames, target, sample.path)
    maps: dict[str, np.ndarray] = {}
    labels: dict[str, Any] = {}
    for key, value in sample.labels.items():
        if (isinstance(value, np.ndarray) and value.ndim >= 2 and tuple(value.shape[-2:]) == source
                and np.issubdtype(value.dtype, np.integer)):
            maps[key] = _resize_labels_map(value, target)
        elif key == "landmarks" and isinstance(value, Mapping) and target != source:
            labels[key] = {name: scale_points(np.asarray(c, np.float64).reshape(2, 2), source, target)
                           .astype(np.float64).reshape(-1) for name, c in value.items()}
        else:
            labels[key] = value
    spacing = sample.spacing
    if spacing is not None and target != source:
        spacing = (spacing[0] * source[0] / target[0], spacing[1] * source[1] / target[1])
    meta = {"labels": labels, "spacing": spacing, "fps": sample.fps}
    return frames, maps, meta


def map_values(array: np.ndarray) -> list[int] | list[list[int]] | None:
    """The sorted values of an integer label map (H, W), per frame for a stack (K, H, W); None
    for other ranks (not stored)."""
    if array.ndim == 2:
        return [int(v) for v in np.unique(array)]
    if array.ndim == 3:
        return [[int(v) for v in np.unique(frame)] for frame in array]
    return None


def _to_json(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return {_ARRAY_TAG: value.tolist(), "dtype": value.dtype.str}
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Mapping):
        return {str(k): _to_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_to_json(v) for v in value]
    return value


def _from_json(value: Any) -> Any:
    if isinstance(value, dict):
        if _ARRAY_TAG in value:
            return np.asarray(value[_ARRAY_TAG], dtype=np.dtype(value["dtype"]))
        return {k: _from_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_from_json(v) for v in value]
    return value


#: arrays up to this size are read into memory when an entry is reopened; larger ones are mapped
_READ_BYTES = 256 * 1024


def _reopen(path: Path, offset: int, dtype: np.dtype, shape: tuple[int, ...], order: str) -> np.ndarray:
    """A read-only array stored at ``offset`` of the ``.npy`` file ``path`` (header already known):
    small C-order arrays are read with one system call (a 256² CAMUS frame: ~20 µs, no file
    descriptor held), others memory-mapped."""
    size = math.prod(shape) * dtype.itemsize
    if order != "C" or size > _READ_BYTES:
        return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape, order=order)
    out = np.empty(shape, dtype)
    with open(path, "rb", buffering=0) as handle:
        handle.seek(offset)
        read = handle.readinto(memoryview(out).cast("B")) if size else 0
    if read != size:
        raise OSError(f"decoded cache file {path} holds {read} of {size} bytes; clear the cache "
                      f"(fedecho data cache-clear)")
    out.flags.writeable = False
    return out


class DecodedCache:
    """An :class:`EchoReader` stand-in that serves records from the decoded cache (see the module
    docstring). ``size`` (H, W) is the training resolution; None keeps the native one.

    ``hits``/``misses`` count loads served from / written to the cache in this process.
    """

    def __init__(self, reader: Any, cache_dir: str | Path, size: tuple[int, int] | int | None,
                 *, max_open: int = 256) -> None:
        self.reader = reader
        self.cache_dir = Path(cache_dir)
        self.size = None if size is None else ((size, size) if isinstance(size, int) else tuple(int(s) for s in size))
        self.max_open = max_open
        self.hits = 0
        self.misses = 0
        self._keys: dict[tuple, str] = {}
        self._open: OrderedDict[str, Sample] = OrderedDict()
        self._layouts: dict[str, tuple[dict[str, Any], dict[str, tuple]]] = {}
        self._entries: dict[str, Path] = {}

    # reader attributes (format, root, on_error, ...) pass through
    def __getattr__(self, name: str) -> Any:
        if name == "reader":
            raise AttributeError(name)
        return getattr(self.reader, name)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_open"] = OrderedDict()  # memory maps are reopened in each worker, never pickled
        return state

    def key(self, record: ItemRecord) -> str:
        """The record's cache key (computed once per process; see the module docstring)."""
        ident = (record.item_id, record.path, tuple(sorted(record.files.items())))
        if ident not in self._keys:
            h = hashlib.sha256(f"fedecho-decoded-v{CACHE_VERSION}|{self.reader.format}|{self.size}|".encode())
            _digest(dict(record.labels), h)
            for path in sorted({record.path, *record.files.values()} - {""}):
                file = Path(path)
                if file.is_file():
                    _file_fingerprint(file, h)
                else:
                    h.update(f"{path}|missing|".encode())
            self._keys[ident] = h.hexdigest()
        return self._keys[ident]

    def entry(self, record: ItemRecord) -> Path:
        key = self.key(record)
        return self.cache_dir / self.reader.format / key[:2] / key

    def load(self, record: ItemRecord) -> Sample:
        """The record's sample from the cache, decoding and storing it first on a miss.

        Frames and label maps are read-only arrays (memory maps, or small arrays read into memory
        when an entry is reopened); the reader's errors propagate.
        """
        key = self.key(record)
        if key in self._open:
            self._open.move_to_end(key)
            self.hits += 1
            return self._open[key]
        entry = self._entries.get(key) or self.entry(record)
        if key in self._layouts or (entry / "meta.json").is_file():  # opened before in this process
            self.hits += 1
        else:
            self._store(record, entry)
            self.misses += 1
        try:
            sample = self._read(record, entry, key)
        except FileNotFoundError:  # the entry was cleared since this process opened it
            if self._layouts.pop(key, None) is None:
                raise
            self._store(record, entry)
            self.hits, self.misses = self.hits - 1, self.misses + 1
            sample = self._read(record, entry, key)
        self._open[key] = sample
        while len(self._open) > self.max_open:
            self._open.popitem(last=False)
        return sample

    def _store(self, record: ItemRecord, entry: Path) -> None:
        sample = self.reader.load(record)  # EchoDataError propagates: nothing is written
        frames, maps, meta = resize_sample(sample, self.size)
        # labels equal to the record's are taken from the record when read (exact types kept)
        meta["labels"] = {k: v for k, v in meta["labels"].items()
                          if k not in record.labels or _fingerprint(v) != _fingerprint(record.labels[k])}
        entry.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=entry.parent))
        try:
            np.save(tmp / "frames.npy", frames, allow_pickle=False)
            for name, array in maps.items():
                np.save(tmp / f"label.{name}.npy", array, allow_pickle=False)
            meta["maps"] = sorted(maps)
            meta["values"] = {name: values for name, array in maps.items()
                              if (values := map_values(array)) is not None}
            (tmp / "meta.json").write_text(json.dumps(_to_json(meta)))
            log.debug("decoded %s into the cache (%s)", record.item_id, entry.name[:12])
            try:
                os.rename(tmp, entry)
            except OSError:
                if not (entry / "meta.json").is_file():  # not another worker's identical entry
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _map(self, key: str, entry: Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """(meta, read-only memory maps by name: ``frames`` and each label map) of an entry.

        The first open in a process parses ``meta.json`` and the ``.npy`` headers and keeps them
        (a few hundred bytes per entry); reopening an entry the LRU of open samples dropped then
        maps its files at the known offsets, with no JSON or header parsing (the two were most of
        a sample's cost on sites with more items than ``max_open``)."""
        layout = self._layouts.get(key)
        if layout is not None:
            meta, headers = layout
            return meta, {name: _reopen(entry / file, offset, dtype, shape, order)
                          for name, (file, offset, dtype, shape, order) in headers.items()}
        meta = _from_json(json.loads((entry / "meta.json").read_text()))
        files = {"frames": "frames.npy", **{name: f"label.{name}.npy" for name in meta["maps"]}}
        arrays = {name: np.load(entry / file, mmap_mode="r", allow_pickle=False) for name, file in files.items()}
        self._entries[key] = entry
        self._layouts[key] = (meta, {
            name: (files[name], a.offset, a.dtype, a.shape, "C" if a.flags.c_contiguous else "F")
            for name, a in arrays.items()})
        return meta, arrays

    def _read(self, record: ItemRecord, entry: Path, key: str) -> Sample:
        meta, arrays = self._map(key, entry)
        labels = dict(record.labels)
        labels.update(meta["labels"])
        for name in meta["maps"]:
            labels[name] = arrays[name]
        frames = arrays["frames"]
        spacing = tuple(meta["spacing"]) if meta["spacing"] is not None else None
        return Sample(source=record.source, patient_id=record.patient_id, study_id=record.study_id,
                      item_id=record.item_id, frames=frames, spacing=spacing, fps=meta["fps"], labels=labels,
                      path=record.path, split=record.split, label_values=meta.get("values", {}))
