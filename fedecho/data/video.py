"""AVI video read/write with OpenCV (torchvision 0.29 has no video reader; OpenCV decodes AVI
without system FFmpeg). Frames are grayscale uint8 (T, H, W); writers store 3-channel MJPG AVIs
like the EchoNet releases."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from fedecho.data.errors import EchoDataError

__all__ = ["read_avi", "write_avi", "avi_info"]


def avi_info(path: str | Path) -> tuple[int, int, int, float]:
    """Return (num_frames, height, width, fps) from the container header, without decoding."""
    path = Path(path)
    _check_file(path)
    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            raise EchoDataError.at(path, "not a readable AVI (OpenCV could not open it)")
        n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        h = int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        w = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH))
        fps = float(cap.get(cv2.CAP_PROP_FPS))
    finally:
        cap.release()
    return n, h, w, fps


def read_avi(
    path: str | Path, *, frames: list[int] | None = None, max_frames: int | None = None
) -> tuple[np.ndarray, float]:
    """Decode an AVI into grayscale uint8 frames (T, H, W) and its frame rate.

    ``frames`` selects frame indices, returned in ascending order without repeats; only those
    are converted, and in intra-only streams (MJPG, like the EchoNet releases) the decoder seeks
    over gaps instead of decoding them. ``max_frames`` caps how many leading frames are decoded.
    Raises :class:`EchoDataError` naming the file when it is missing, empty, truncated or has no
    decodable frame, or when a requested frame is absent.
    """
    path = Path(path)
    _check_file(path)
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        cap.release()
        raise EchoDataError.at(path, "not a readable AVI (OpenCV could not open it)")
    fps = float(cap.get(cv2.CAP_PROP_FPS)) or 0.0
    try:
        if frames is None:
            out = _read_leading(cap, max_frames or None)
        else:
            wanted = sorted({int(i) for i in frames})
            if wanted and wanted[0] < 0:
                raise EchoDataError.at(path, f"negative frame index {wanted[0]} requested")
            out, missing = _read_selected(cap, wanted)
            if missing is not None:
                total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
                raise EchoDataError.at(
                    path, f"frame {missing} was requested but could not be decoded "
                    f"(the header lists {total} frames; the file may be truncated)"
                )
    finally:
        cap.release()
    if not out:
        raise EchoDataError.at(path, "AVI has no decodable frame (empty or truncated file)")
    return np.stack(out), fps


#: Seek instead of decoding through a gap of more than this many frames (intra-only streams).
_SEEK_GAP = 4
_INTRA_ONLY_CODECS = frozenset({"MJPG", "mjpg", "MJPA", "JPEG", "jpeg"})


def _gray(frame: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY) if frame.ndim == 3 else frame


def _read_leading(cap: cv2.VideoCapture, max_frames: int | None) -> list[np.ndarray]:
    out: list[np.ndarray] = []
    while max_frames is None or len(out) < max_frames:
        ok, frame = cap.read()
        if not ok:
            break
        out.append(_gray(frame))
    return out


def _read_selected(cap: cv2.VideoCapture, wanted: list[int]) -> tuple[list[np.ndarray], int | None]:
    """Decode the sorted frame indices ``wanted``; return the frames and the first missing one."""
    fourcc = int(cap.get(cv2.CAP_PROP_FOURCC)).to_bytes(4, "little").decode("latin-1")
    can_seek = fourcc in _INTRA_ONLY_CODECS
    out: list[np.ndarray] = []
    position = 0  # index of the next frame the decoder returns
    for index in wanted:
        if can_seek and index - position > _SEEK_GAP and cap.set(cv2.CAP_PROP_POS_FRAMES, index):
            position = index
        while position < index:
            if not cap.grab():
                return out, index
            position += 1
        ok, frame = cap.read()
        if not ok:
            return out, index
        position += 1
        out.append(_gray(frame))
    return out, None


def write_avi(path: str | Path, frames: np.ndarray, fps: float = 50.0) -> None:
    """Write grayscale uint8 frames (T, H, W) as a 3-channel MJPG AVI."""
    frames = np.asarray(frames)
    if frames.ndim != 3 or frames.dtype != np.uint8:
        raise ValueError(f"write_avi needs uint8 frames (T, H, W), got {frames.dtype} {frames.shape}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    t, h, w = frames.shape
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), float(fps), (w, h))
    if not writer.isOpened():
        raise OSError(f"{path}: OpenCV could not open an MJPG AVI writer")
    try:
        for frame in frames:
            writer.write(cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR))
    finally:
        writer.release()


def _check_file(path: Path) -> None:
    if not path.is_file():
        raise EchoDataError.at(path, "video file does not exist")
    if path.stat().st_size == 0:
        raise EchoDataError.at(path, "video file is empty (0 bytes)")
