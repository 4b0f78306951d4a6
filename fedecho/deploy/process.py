"""Child processes of the deployment commands: Flower's executables found beside this Python, an
environment that keeps Flower offline and quiet, process groups started and always stopped, and
waiting for a port."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

__all__ = ["ManagedProcess", "executable", "flower_env", "free_port", "run_foreground", "wait_for_port"]


def executable(name: str) -> str:
    """Absolute path of a console script (``flower-superlink``, ``flwr``, ...): beside the running
    Python first (the project's venv), then on PATH."""
    beside = Path(sys.executable).parent / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"{name} not found beside {sys.executable} or on PATH; install the project "
                                f"(pip install -e .) into this environment")
    return found


def flower_env(flwr_home: str | Path | None = None, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for Flower processes: telemetry off, no run-time ``uv sync`` (sites and the
    coordinator are offline, and it may replace torch), the venv's scripts first on PATH."""
    env = dict(os.environ)
    env.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    env["FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"] = "1"
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    if flwr_home is not None:
        env["FLWR_HOME"] = str(Path(flwr_home).resolve())
    env.update(extra or {})
    return env


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def wait_for_port(host: str, port: int, timeout: float = 60.0, process: ManagedProcess | None = None) -> None:
    """Return once ``host:port`` accepts connections; raise if ``process`` exits first or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{process.name} exited with status {process.poll()} before listening on "
                               f"{host}:{port}:\n{process.tail()}")
        try:
            with socket.create_connection((host, port), timeout=1.0):
                return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout:.0f} s"
                       + (f"; {process.name} log:\n{process.tail()}" if process is not None else ""))


class ManagedProcess:
    """A command in its own process group, its output in ``log_path``; ``stop()`` ends the whole
    group (SIGTERM, then SIGKILL after ``grace`` seconds). Use as a context manager so that it is
    stopped whatever happens."""

    def __init__(self, name: str, command: Sequence[str], *, env: Mapping[str, str] | None = None,
                 log_path: str | Path | None = None, cwd: str | Path | None = None) -> None:
        self.name = name
        self.command = list(command)
        self.log_path = Path(log_path) if log_path is not None else None
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            out = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        else:
            out = None
        self._out = out
        self.process = subprocess.Popen(self.command, env=dict(env) if env is not None else None, cwd=cwd,
                                        stdout=out, stderr=subprocess.STDOUT if out else None,
                                        stdin=subprocess.DEVNULL, start_new_session=True)

    @property
    def pid(self) -> int:
        return self.process.pid

    def poll(self) -> int | None:
        return self.process.poll()

    def wait(self, timeout: float | None = None) -> int:
        return self.process.wait(timeout=timeout)

    def tail(self, chars: int = 3000) -> str:
        if self.log_path is None or not self.log_path.is_file():
            return ""
        return self.log_path.read_text(errors="replace")[-chars:]

    def signal_group(self, sig: int) -> None:
        try:
            os.killpg(self.process.pid, sig)
        except ProcessLookupError:
            pass

    def descendants(self) -> list:
        """The leader's child processes, recursively (psutil.Process objects)."""
        import psutil

        try:
            return psutil.Process(self.process.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def kill(self) -> None:
        """SIGKILL the process group and every descendant at once (a crash, as tests simulate it)."""
        import psutil

        children = self.descendants()
        self.signal_group(signal.SIGKILL)
        for child in children:
            try:
                child.kill()
            except psutil.NoSuchProcess:
                pass
        self.process.wait()

    def stop(self, grace: float = 10.0) -> int | None:
        """End the process group and every descendant (Flower detaches some children into their
        own sessions: SuperExec, ServerApp, ClientApp); return the exit status of the leader."""
        import psutil

        children = self.descendants()
        if self.process.poll() is None:
            self.signal_group(signal.SIGTERM)
            try:
                self.process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                pass
        self.signal_group(signal.SIGKILL)  # children that outlived their leader
        for child in children:
            try:
                child.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(children, timeout=grace)
        try:
            self.process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
        if self._out is not None:
            self._out.close()
            self._out = None
        return self.process.poll()

    def __enter__(self) -> ManagedProcess:  # noqa: PYI034 - no subclasses
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def run_foreground(process: ManagedProcess) -> int:
    """Wait for ``process``; Ctrl-C or SIGTERM stops it (and its descendants) cleanly. Returns its
    exit status (0 when stopped on request)."""
    def _terminate(signum, frame):
        raise KeyboardInterrupt

    # SIGINT too: a shell starts background jobs with SIGINT ignored, and Python keeps it so.
    previous = {sig: signal.signal(sig, _terminate) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        return process.wait()
    except KeyboardInterrupt:
        process.stop()
        return 0
    finally:
        process.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
