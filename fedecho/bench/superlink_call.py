"""Benchmark ``superlink-call``: the coordinator's CPU per authenticated Fleet call, with Flower's
HTTP middleware on every path (``flower-superlink`` as Flower runs it) vs narrowed to the paths
each layer acts on (``python -m fedecho.deploy.superlink``, see :func:`fedecho.deploy.superlink.
scope_middleware`).

Setting: two SuperLinks on 127.0.0.1, each with its own federation folder (TLS, SuperNode
authentication, SQLite state), started with the same arguments, one with ``--flower-middleware``.
One site key is registered with each (``flwr supernode register`` over the loopback Control API)
and its node activated (a signed ``ActivateNode``). A repetition sends ``calls`` signed
``SendNodeHeartbeat`` calls over one kept-alive HTTPS connection to one SuperLink and reads that
SuperLink's CPU time (user + system, ``/proc``) before and after: CPU ms per call. The two sides
alternate (A B, B A, ...). A heartbeat passes every layer a Fleet call passes (TLS, protobuf
translation, error translation, SuperNode authentication: signature, timestamp and the node's key
in SQLite) and a small state write; the ~80 calls of a deployed round (``fedecho bench
deploy-round``) are Fleet and Runtime calls of this kind, Runtime calls skipping one layer more.

The row is the ratio narrowed / Flower's per-call CPU (less is better); each side's ms per call
and the wall time per call are in the details.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

from fedecho.bench.common import BenchOptions, interleave, ratio_row

__all__ = ["run"]


class _SuperLink:
    """One SuperLink and a signed Fleet client of its one registered node."""

    def __init__(self, root: Path, *, flower_middleware: bool) -> None:
        from cryptography.hazmat.primitives import serialization

        from fedecho.deploy.federation import init_federation
        from fedecho.deploy.process import ManagedProcess, flower_env, free_port
        from fedecho.deploy.sites import add_site, init_site
        from fedecho.deploy.superlink import register_sites, superlink_command, superlink_env, write_connection

        root.mkdir(parents=True)
        self.fed = init_federation(root / "fed")
        init_site(root / "site", "A")
        add_site(self.fed, "A", root / "site" / "site.pub")
        self.key = serialization.load_ssh_private_key((root / "site" / "site.key").read_bytes(), None)
        port = free_port()
        command = superlink_command(self.fed, port=port, log_file=root / "superlink.log")
        if flower_middleware:
            command.insert(command.index("--"), "--flower-middleware")
        self.process = ManagedProcess("SuperLink" + (" (Flower's middleware)" if flower_middleware else ""),
                                      command, env=superlink_env(self.fed), log_path=root / "superlink.out")
        self.address = f"127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        write_connection(self.fed, self.address)
        while True:
            try:
                register_sites(self.fed, timeout=30)
                break
            except Exception:  # noqa: BLE001 - not up yet; give up at the deadline
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise RuntimeError(f"{self.process.name} did not start:\n{self.process.tail()}") from None
                time.sleep(0.5)
        self.client = self._client()
        self.node_id = self._activate()
        self.os_process = psutil.Process(self.process.pid)

    def _client(self) -> Any:
        from flwr.supernode.fleet_http_client import FleetHttpClient
        from flwr.supernode.node_auth_http_interceptor import NodeAuthHttpInterceptor

        return FleetHttpClient.from_server_address(self.address, False, str(self.fed.tls.ca_cert),
                                                   [NodeAuthHttpInterceptor(self.key, self.key.public_key())])

    def _activate(self) -> int:
        from flwr.common.constant import HEARTBEAT_DEFAULT_INTERVAL
        from flwr.proto.fleet_pb2 import ActivateNodeRequest
        from flwr.supercore.primitives.asymmetric import public_key_to_bytes

        request = ActivateNodeRequest(public_key=public_key_to_bytes(self.key.public_key()),
                                      heartbeat_interval=HEARTBEAT_DEFAULT_INTERVAL)
        return int(self.client.ActivateNode(request).node_id)

    def cpu_s(self) -> float:
        times = self.os_process.cpu_times()
        return times.user + times.system

    def calls(self, count: int) -> tuple[float, float]:
        """(SuperLink CPU ms per call, wall ms per call) over ``count`` heartbeats."""
        from flwr.common.constant import HEARTBEAT_DEFAULT_INTERVAL
        from flwr.proto.heartbeat_pb2 import SendNodeHeartbeatRequest
        from flwr.proto.node_pb2 import Node

        request = SendNodeHeartbeatRequest(node=Node(node_id=self.node_id), heartbeat_interval=HEARTBEAT_DEFAULT_INTERVAL)
        cpu, start = self.cpu_s(), time.perf_counter()
        for _ in range(count):
            if not self.client.SendNodeHeartbeat(request).success:
                raise RuntimeError(f"{self.process.name}: a heartbeat was refused")
        wall = time.perf_counter() - start
        return 1000 * (self.cpu_s() - cpu) / count, 1000 * wall / count

    def stop(self) -> None:
        try:
            self.client.close()
        finally:
            self.process.stop()


def run(options: BenchOptions) -> list:
    import logging

    logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per call otherwise
    reps = options.repetitions(6, quick=2)
    calls = 50 if options.quick else 300
    with tempfile.TemporaryDirectory(prefix="fedecho-bench-superlink-") as tmp:
        links: dict[str, _SuperLink] = {}
        try:
            links["flower"] = _SuperLink(Path(tmp) / "flower", flower_middleware=True)
            links["narrowed"] = _SuperLink(Path(tmp) / "narrowed", flower_middleware=False)
            walls: dict[str, list[float]] = {name: [] for name in links}

            def side(name: str):
                def measure() -> float:
                    cpu_ms, wall_ms = links[name].calls(calls)
                    walls[name].append(wall_ms)
                    return cpu_ms
                return measure

            cpu = interleave({name: side(name) for name in links}, reps)
        finally:
            for link in links.values():
                link.stop()
    ratios = [n / f for n, f in zip(cpu["narrowed"], cpu["flower"], strict=True)]
    row = ratio_row("SendNodeHeartbeat, signed, one kept-alive HTTPS connection",
                    "SuperLink CPU per call: narrowed / Flower's middleware", ratios, None,
                    {"flower_cpu_ms_per_call": cpu["flower"], "narrowed_cpu_ms_per_call": cpu["narrowed"],
                     "flower_wall_ms_per_call": walls["flower"][-reps:],
                     "narrowed_wall_ms_per_call": walls["narrowed"][-reps:]},
                    note=(f"SuperLink CPU per call {statistics.median(cpu['flower']):.2f} ms with Flower's middleware "
                          f"on every path vs {statistics.median(cpu['narrowed']):.2f} ms narrowed; wall per call "
                          f"{statistics.median(walls['flower'][-reps:]):.2f} vs "
                          f"{statistics.median(walls['narrowed'][-reps:]):.2f} ms ({calls} calls x {reps} "
                          f"repetitions per side, alternating)"))
    return [row]
