"""Where a result came from: the command, the code (git commit, whether the tree had uncommitted
changes), the machine (CPU count, memory, GPU, load) and the compute spent. Stored in every
``results.json`` and in the published copy ``simulations/results/<experiment>[-<size>].json``
(``fedecho simulate ... --publish``), so a committed number can be re-run and judged."""

from __future__ import annotations

import json
import os
import platform
import shlex
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

__all__ = ["git_state", "machine", "provenance", "publish"]


def git_state(root: Path) -> dict[str, Any]:
    """``{"commit": sha or None, "dirty": bool or None}`` of the checkout at ``root``: dirty means a
    tracked file differs from the commit (untracked files such as run folders do not count)."""

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=20)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def _memory_gib() -> float | None:
    try:
        pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None
    return round(pages * size / 2**30, 1)


def machine() -> dict[str, Any]:
    """The host as far as it shapes timings: CPUs this process may use, memory, GPU, load averages."""
    info: dict[str, Any] = {
        "platform": platform.platform(), "python": platform.python_version(),
        "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory_gib": _memory_gib(), "gpu": None,
        "load_average": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
    }
    try:
        import torch

        info["torch"] = torch.__version__
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    return info


def provenance(root: Path, *, started: datetime, argv: list[str] | None = None) -> dict[str, Any]:
    """The record stored with a result; ``argv`` defaults to this process's command line."""
    argv = list(sys.argv if argv is None else argv)
    program = Path(argv[0]).name if argv else "fedecho"
    if program in ("main.py", "__main__.py") or program.startswith("python"):
        program = "fedecho"
    return {
        "command": shlex.join([program, *argv[1:]]),
        **git_state(root),
        "started": started.isoformat(timespec="seconds"),
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
    }


def publish(results: dict[str, Any], dest_dir: Path) -> Path:
    """Write ``results`` (a results.json payload with its provenance) to
    ``dest_dir/<experiment>.json`` for the ``full`` size, ``<experiment>-<size>.json`` otherwise.
    Run directories are machine paths, kept relative to the results folder."""
    name = results["experiment"] if results["size"] == "full" else f"{results['experiment']}-{results['size']}"
    dest_dir.mkdir(parents=True, exist_ok=True)
    path = dest_dir / f"{name}.json"
    payload = json.loads(json.dumps(results, default=float))
    for arm in payload.get("arms", {}).values():
        arm["run_dir"] = Path(arm["run_dir"]).name
    path.write_text(json.dumps(payload, indent=1) + "\n")
    return path
