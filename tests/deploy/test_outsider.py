"""The outsider attack of issue 11, reproduced on 127.0.0.1 with real processes.

An outsider holds what every site bundle holds (``ca.pem``) and network reach to the
coordinator's public port. With the stock Flower CLI it submits a foreign 40-line app (its
ServerApp and ClientApp each write a marker file) and registers a SuperNode key of its own. Both
are refused by the gateway; no marker file appears, the SuperLink has no run and no new node, and
the refusals are in ``fed/state/gateway.log``. Meanwhile a registered site's Fleet traffic goes
through the same port, and the SuperLink itself listens on the loopback interface only.
``-s`` prints the gateway's added latency per Fleet call.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from fedecho.deploy.federation import Federation, init_federation
from fedecho.deploy.process import ManagedProcess, executable, flower_env, free_port
from fedecho.deploy.sites import add_site, init_site

pytestmark = pytest.mark.deploy

FOREIGN_APP = {
    "pyproject.toml": """[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "foreign"
version = "1.0.0"
dependencies = []

[tool.hatch.build.targets.wheel]
packages = ["."]

[tool.flwr.app]
publisher = "outsider"

[tool.flwr.app.components]
serverapp = "foreign_app:server"
clientapp = "foreign_app:client"

[tool.flwr.app.config]
marker-dir = "MARKER_DIR"
""",
    "foreign_app.py": """import os
from pathlib import Path

from flwr.app import Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

server = ServerApp()
client = ClientApp()


@server.main()
def main(grid: Grid, context: Context) -> None:
    Path(context.run_config["marker-dir"], "serverapp-ran").write_text("owned")
    messages = [Message(RecordDict(), dst_node_id=n, message_type="query") for n in grid.get_node_ids()]
    grid.send_and_receive(messages, timeout=30)


@client.query()
def query(message: Message, context: Context) -> Message:
    Path(context.run_config["marker-dir"], f"clientapp-ran-{os.getpid()}").write_text(str(context.node_config))
    return Message(RecordDict(), reply_to=message)
""",
}


def _wait_for(predicate, timeout: float, what: str, process: ManagedProcess) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if process.poll() is not None:
            raise AssertionError(f"{process.name} exited ({process.poll()}) waiting for {what}:\n{process.tail()}")
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}:\n{process.tail()}")


def _cli(module: str, *args) -> list[str]:
    return [sys.executable, "-m", f"fedecho.cli.{module}", *map(str, args)]


def _flwr(home: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([executable("flwr"), *args], env=flower_env(home), capture_output=True, text=True,
                          timeout=120, check=False)


def _coordinator_view(fed: Federation) -> tuple[list, list]:
    """(runs, nodes) as the coordinator sees them over its loopback Control API."""
    runs = json.loads(_flwr(fed.flwr_home, "ls", "fedecho", "--format", "json").stdout)["runs"]
    nodes = json.loads(_flwr(fed.flwr_home, "supernode", "list", "fedecho", "--format", "json").stdout)["nodes"]
    return runs, nodes


@pytest.fixture(scope="module")
def coordinator(tmp_path_factory):
    from fedecho.data.synthetic import synthesize

    root = tmp_path_factory.mktemp("outsider")
    fed = init_federation(root / "fed")
    site = root / "site_A"
    init_site(site, "A")
    add_site(fed, "A", site / "site.pub")
    for path in fed.bundle("A").iterdir():
        (site / path.name).write_bytes(path.read_bytes())
    synthesize("camus", root / "data_A", patients=4, seed=1, image_size=32)
    port = free_port()
    server = ManagedProcess("fedecho-server start", _cli("server", "start", "--dir", fed.root, "--port", port),
                            env=flower_env(), log_path=root / "server.log")
    node = None
    try:
        _wait_for(lambda: "SuperLink ready" in server.tail(100_000), 120, "the SuperLink", server)
        node = ManagedProcess("fedecho-client start (A)", _cli(
            "client", "start", "--bundle", site, "--superlink", f"127.0.0.1:{port}", "--data", root / "data_A",
            "--format", "camus", "--port", free_port(), "--state-dir", root / "state_A", "--device", "cpu"),
            env=flower_env(), log_path=root / "site_A.log")
        # legit Fleet traffic through the gateway: the registered site connects
        _wait_for(lambda: "SuperNode ID" in node.tail(100_000), 120, "site A to connect", node)
        yield fed, port, server
    finally:
        if node is not None:
            node.stop()
        server.stop()


def test_outsider_with_the_ca_certificate_cannot_run_code_or_register_a_node(coordinator, tmp_path):
    fed, port, server = coordinator
    runs_before, nodes_before = _coordinator_view(fed)
    assert [n["status"] for n in nodes_before] == ["online"]  # site A, through the gateway

    markers = tmp_path / "markers"
    markers.mkdir()
    app = tmp_path / "foreign"
    app.mkdir()
    for name, text in FOREIGN_APP.items():
        (app / name).write_text(text.replace("MARKER_DIR", str(markers)))
    home = tmp_path / "outsider_home"
    home.mkdir()
    (home / "config.toml").write_text(  # what the outsider has: the address and ca.pem from a bundle
        f'[superlink]\ndefault = "target"\n\n[superlink.target]\naddress = "127.0.0.1:{port}"\n'
        f'root-certificates = "{fed.bundle("A") / "ca.pem"}"\n')

    run = _flwr(home, "run", str(app), "target", "--stream")
    assert run.returncode != 0, run.stdout + run.stderr
    assert "refused by the FedEcho gateway" in run.stdout + run.stderr, run.stdout + run.stderr

    key = tmp_path / "rogue"
    subprocess.run(["ssh-keygen", "-q", "-t", "ecdsa", "-b", "384", "-N", "", "-f", str(key)], check=True)
    register = _flwr(home, "supernode", "register", f"{key}.pub", "target")
    assert register.returncode != 0 and "refused by the FedEcho gateway" in register.stdout + register.stderr
    listing = _flwr(home, "ls", "target")
    assert listing.returncode != 0 and "refused by the FedEcho gateway" in listing.stdout + listing.stderr

    # the Runtime API (ServerApp / SuperExec) and Fleet self-registration are not reachable either
    import httpx

    with httpx.Client(base_url=f"https://127.0.0.1:{port}", verify=str(fed.bundle("A") / "ca.pem")) as client:
        for path in ("/v1/runtime/pull-messages", "/v1/runtime/get-nodes", "/v1/fleet/register-node",
                     "/v1/control/start-run", "/docs"):
            reply = client.post(path, content=b"\x00")
            assert reply.status_code == 403 and reply.json()["code"] == 10, (path, reply.text)

    time.sleep(3)  # a run, had one started, would have reached the SuperExec (it polls every second)
    assert sorted(p.name for p in markers.iterdir()) == []
    runs_after, nodes_after = _coordinator_view(fed)
    assert runs_after == runs_before == []
    assert [n["node-id"] for n in nodes_after] == [n["node-id"] for n in nodes_before]
    refused = [json.loads(line) for line in fed.gateway_log.read_text().splitlines()]
    paths = {r["path"] for r in refused}
    assert {"/v1/control/start-run", "/v1/control/register-node", "/v1/control/list-runs"} <= paths
    assert all(r["decision"] == "refused" for r in refused)

    # the SuperLink (and every process under it) listens on the loopback interface only
    processes = [p for p in [psutil.Process(server.pid), *server.descendants()]
                 if "fedecho.deploy.superlink" in " ".join(p.cmdline())]
    assert processes
    listening = [c.laddr for p in processes for c in p.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN]
    assert listening and all(addr.ip == "127.0.0.1" for addr in listening), listening


def test_gateway_latency_per_fleet_call(coordinator):
    """Not a timing assertion: the time per authenticated Fleet call (site A's key, a heartbeat of
    its node; median of 200 on a kept-alive connection), direct to the loopback SuperLink and
    through the gateway, is printed."""
    from cryptography.hazmat.primitives import serialization
    from flwr.common.constant import HEARTBEAT_DEFAULT_INTERVAL
    from flwr.proto.heartbeat_pb2 import SendNodeHeartbeatRequest
    from flwr.proto.node_pb2 import Node
    from flwr.supernode.fleet_http_client import FleetHttpClient
    from flwr.supernode.node_auth_http_interceptor import NodeAuthHttpInterceptor

    fed, port, _ = coordinator
    connection = (fed.flwr_home / "config.toml").read_text()
    internal = int(connection.split('address = "127.0.0.1:')[1].split('"')[0])
    private = serialization.load_ssh_private_key((fed.root.parent / "site_A" / "site.key").read_bytes(), None)
    (node,) = _coordinator_view(fed)[1]
    request = SendNodeHeartbeatRequest(node=Node(node_id=int(node["node-id"])),
                                       heartbeat_interval=HEARTBEAT_DEFAULT_INTERVAL)
    medians = {}
    for name, target in (("direct", internal), ("gateway", port), ("direct again", internal)):
        interceptor = NodeAuthHttpInterceptor(private, private.public_key())
        with FleetHttpClient.from_server_address(f"127.0.0.1:{target}", False, str(fed.tls.ca_cert),
                                                 [interceptor]) as client:
            assert client.SendNodeHeartbeat(request).success  # connect + TLS handshake once
            times = []
            for _ in range(200):
                start = time.perf_counter()
                client.SendNodeHeartbeat(request)
                times.append(time.perf_counter() - start)
            medians[name] = statistics.median(times) * 1000
    direct = min(medians["direct"], medians["direct again"])
    print(f"\nauthenticated Fleet call (SendNodeHeartbeat), median of 200: direct {direct:.2f} ms, through the "
          f"gateway {medians['gateway']:.2f} ms, added {medians['gateway'] - direct:.2f} ms")


def test_add_site_while_running_registers_the_key_at_once(coordinator, tmp_path, capsys):
    from fedecho.cli import client as client_cli
    from fedecho.cli import server as server_cli

    fed, _, _ = coordinator
    assert client_cli.main(["init", "--out", str(tmp_path / "site_B"), "--name", "B"]) == 0
    assert server_cli.main(["add-site", "--dir", str(fed.root), "--name", "B", "--key",
                            str(tmp_path / "site_B" / "site.pub")]) == 0
    out = capsys.readouterr().out
    assert "index 1" in out and "the running SuperLink has its key (registered)" in out
    assert len(_coordinator_view(fed)[1]) == 2  # A online, B registered (not yet connected)


def test_forged_fleet_calls_are_refused_by_the_narrowed_superlink(coordinator):
    """The SuperLink runs Flower's middleware narrowed to the paths each layer acts on
    (fedecho.deploy.superlink.scope_middleware); SuperNode authentication must still hold on every
    Fleet call. Heartbeats of site A's node, on the loopback SuperLink and through the gateway:
    unsigned, signed by a key nobody registered, and signed by A's key but naming another node
    are refused (401); A's own signed heartbeat goes through."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from flwr.common.constant import HEARTBEAT_DEFAULT_INTERVAL
    from flwr.proto.heartbeat_pb2 import SendNodeHeartbeatRequest
    from flwr.proto.node_pb2 import Node
    from flwr.supernode.fleet_http_client import FleetHttpClient
    from flwr.supernode.node_auth_http_interceptor import NodeAuthHttpInterceptor

    fed, port, _ = coordinator
    connection = (fed.flwr_home / "config.toml").read_text()
    internal = int(connection.split('address = "127.0.0.1:')[1].split('"')[0])
    own = serialization.load_ssh_private_key((fed.root.parent / "site_A" / "site.key").read_bytes(), None)
    stranger = ec.generate_private_key(ec.SECP384R1())
    (node,) = [n for n in _coordinator_view(fed)[1] if n["status"] == "online"]  # site A (B may be registered)
    node_id = int(node["node-id"])

    def heartbeat(target: int, key, claimed: int) -> str:
        interceptors = [] if key is None else [NodeAuthHttpInterceptor(key, key.public_key())]
        request = SendNodeHeartbeatRequest(node=Node(node_id=claimed), heartbeat_interval=HEARTBEAT_DEFAULT_INTERVAL)
        with FleetHttpClient.from_server_address(f"127.0.0.1:{target}", False, str(fed.tls.ca_cert),
                                                 interceptors) as client:
            try:
                return "ok" if client.SendNodeHeartbeat(request).success else "not a success"
            except Exception as err:  # noqa: BLE001 - the refusal's text is what is asserted
                return f"refused: {err}"

    for target in (internal, port):
        assert heartbeat(target, own, node_id) == "ok", target
        for what, key, claimed in (("unsigned", None, node_id), ("a stranger's key", stranger, node_id),
                                   ("A's key, another node", own, node_id + 1)):
            outcome = heartbeat(target, key, claimed)
            assert outcome.startswith("refused") and "401" in outcome, (target, what, outcome)
