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

    ``frames`` selects frame indices (decoding stops after the largest one); ``max_frames`` caps
    how many leading frames are decoded. Raises :class:`EchoDataError` naming the file when it is
    missing, empty, truncated or has no decodable frame, or when a requested frame is absent.
    """
    path = Path(path)
    _check_file(path)
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        cap.release()
        raise EchoDataError.at(path, "not a readable AVI (OpenCV could not open it)")
    fps = float(cap.get(cv2.CAP_PROP_FPS)) or 0.0
    wanted = sorted(set(frames)) if frames is not None else None
    last = wanted[-1] if wanted else (max_frames - 1 if max_frames else None)
    out: list[np.ndarray] = []
    index = 0
    try:
        while last is None or index <= last:
            ok, frame = cap.read()
            if not ok:
                break
            if wanted is None or index in wanted:
                if frame.ndim == 3:
                    frame = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
                out.append(frame)
            index += 1
    finally:
        cap.release()
    if not out:
        raise EchoDataError.at(path, "AVI has no decodable frame (empty or truncated file)")
    if wanted is not None and len(out) != len(wanted):
        raise EchoDataError.at(
            path, f"AVI has {index} decodable frames; frame {wanted[len(out)]} was requested"
        )
    return np.stack(out), fps


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
