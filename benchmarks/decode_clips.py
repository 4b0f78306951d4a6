"""Decoding speed of 16-frame 112x112 clips (and whole videos) from EchoNet-style MJPG AVIs.

Writes N synthetic-looking videos (speckle around a beating dark cavity) in the EchoNet-Dynamic
layout to a temporary folder, then times the reader path: ``EchoNetDynamicReader.load_frames``
for random clips and ``EchoNetDynamicReader.load`` for whole videos. Prints the command, the
cores, and the median and spread (min, max) over repetitions.

    .venv/bin/python benchmarks/decode_clips.py --videos 24 --frames 100 --reps 5
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from fedecho.data.echonet_dynamic import EchoNetDynamicReader, write_echonet_dynamic
from fedecho.data.schema import Sample


def speckle_video(rng: np.random.Generator, n_frames: int, size: int = 112) -> tuple[np.ndarray, np.ndarray]:
    """A (T, size, size) uint8 speckle video with a cavity whose radius beats; and its (2, H, W)
    cavity masks at the largest and smallest radius (frames 0 and T // 2)."""
    rows, cols = np.mgrid[0:size, 0:size].astype(np.float32)
    t = np.arange(n_frames)
    scale = 1.0 - 0.25 * (1 - np.cos(2 * np.pi * t / n_frames)) / 2  # 1 at frame 0, 0.75 at T/2
    frames = np.empty((n_frames, size, size), np.uint8)
    masks = np.zeros((2, size, size), np.uint8)
    for i, s in enumerate(scale):
        cavity = ((cols - size / 2) / (18 * s)) ** 2 + ((rows - size / 2) / (36 * s)) ** 2 <= 1
        speckle = rng.rayleigh(40.0, (size, size)).astype(np.float32)
        image = cv2.GaussianBlur(speckle, (0, 0), 1.2) * np.where(cavity, 0.25, 1.0)
        frames[i] = np.clip(image, 0, 255).astype(np.uint8)
        if i in (0, n_frames // 2):
            masks[0 if i == 0 else 1] = cavity
    return frames, masks


def timed(repeats: int, work) -> list[float]:
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        count = work()
        out.append(count / (time.perf_counter() - start))
    return out


def summary(name: str, rates: list[float], unit: str) -> str:
    return (f"{name}: median {statistics.median(rates):.1f} {unit} "
            f"(min {min(rates):.1f}, max {max(rates):.1f}, {len(rates)} repetitions)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=24, help="number of AVIs to write")
    parser.add_argument("--frames", type=int, default=100, help="frames per video")
    parser.add_argument("--clip", type=int, default=16, help="frames per clip")
    parser.add_argument("--clips", type=int, default=96, help="clips decoded per repetition")
    parser.add_argument("--reps", type=int, default=5, help="repetitions")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    print("command:", " ".join([sys.executable, *sys.argv]))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"machine: {platform.processor() or platform.machine()}, {cores} usable cores, "
          f"OpenCV {cv2.__version__} with {cv2.getNumThreads()} threads, Python {platform.python_version()}")
    rng = np.random.default_rng(args.seed)
    with tempfile.TemporaryDirectory(prefix="fedecho-decode-") as tmp:
        root = Path(tmp)
        samples = []
        for i in range(args.videos):
            frames, masks = speckle_video(rng, args.frames)
            samples.append(Sample("synthetic", f"video{i:04d}", f"video{i:04d}", f"video{i:04d}", frames,
                                  fps=50.0, split="train",
                                  labels={"ef": 45.0, "edv": 100.0, "esv": 55.0, "mask": masks,
                                          "mask_frames": [0, args.frames // 2]}))
        start = time.perf_counter()
        write_echonet_dynamic(root, samples)
        print(f"wrote {args.videos} videos of {args.frames} frames in {time.perf_counter() - start:.2f} s")
        reader = EchoNetDynamicReader(root)
        records = reader.scan().records

        def clips() -> int:
            for _ in range(args.clips):
                record = records[int(rng.integers(len(records)))]
                start = int(rng.integers(args.frames - args.clip + 1))
                reader.load_frames(record, range(start, start + args.clip))
            return args.clips

        def videos() -> int:
            for record in records:
                reader.load(record)
            return len(records)

        clips()  # warm-up (imports, caches)
        print(summary(f"random {args.clip}-frame clips", timed(args.reps, clips), "clips/s"))
        print(summary(f"whole {args.frames}-frame videos", timed(args.reps, videos), "videos/s"))


if __name__ == "__main__":
    main()
