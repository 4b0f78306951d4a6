"""A site killed without leaving rejoins at once (fedecho.deploy.supernode.rejoin_hook).

The hook by hand (Flower's own error payload, a fake Fleet client) and with real processes: a
site's ``fedecho-client start`` killed with SIGKILL and started again at once joins well before
the SuperLink's 60 s heartbeat patience would have let it, and a second start on the same state
folder while the first runs is refused.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import httpx
import pytest
from flwr.proto.fleet_pb2 import ActivateNodeRequest, ActivateNodeResponse  # pylint: disable=E0611
from flwr.supercore.error import FlowerError
from flwr.supercore.error.base import ApiErrorCode

from fedecho.deploy.supernode import NODE_ID_FILE, SiteAlreadyRunning, lock_node_id_file, rejoin_hook
from fedecho.deploy.process import ManagedProcess, flower_env, free_port
from tests.deploy.test_deployment import _cli, _wait_for, federation, site_folder, superlink  # noqa: F401
from tests.deploy.test_outsider import _coordinator_view


def _refusal(code: int = ApiErrorCode.FLEET_NODE_ACTIVATION_FAILED) -> httpx.HTTPStatusError:
    request = httpx.Request("POST", "https://coordinator/v1/fleet/activate-node")
    body = FlowerError(code, "internal").to_json("SuperNode activation failed")
    response = httpx.Response(409, json=body, request=request)
    return httpx.HTTPStatusError("refused", request=request, response=response)


def _client(refusals: list[Exception]):
    class Client:
        calls: list[str] = []

        def ActivateNode(self, request):  # noqa: N802 - Flower's name
            Client.calls.append("activate")
            if refusals:
                raise refusals.pop(0)
            return ActivateNodeResponse(node_id=4242)

        def DeactivateNode(self, request):  # noqa: N802
            Client.calls.append(f"deactivate {request.node_id}")

    return Client


def test_rejoin_closes_only_the_stored_session_and_only_on_an_activation_refusal(tmp_path):
    said = []
    fd = lock_node_id_file(tmp_path / NODE_ID_FILE)
    # first join: no node id stored yet, a refusal is Flower's as before
    client = _client([_refusal()])
    rejoin_hook(client, fd, said.append)
    with pytest.raises(httpx.HTTPStatusError):
        client().ActivateNode(ActivateNodeRequest())
    assert client.calls == ["activate"] and not said
    # a join that succeeds stores its node id
    client.calls.clear()
    assert client().ActivateNode(ActivateNodeRequest()).node_id == 4242
    assert (tmp_path / NODE_ID_FILE).read_text() == "4242"
    # the next start (same state folder): refused while the old session is "online" -> close it, join
    client2 = _client([_refusal()])
    rejoin_hook(client2, fd, said.append)
    assert client2().ActivateNode(ActivateNodeRequest()).node_id == 4242
    assert client2.calls == ["activate", "deactivate 4242", "activate"]
    assert "previous session (node 4242" in said[-1]
    # any other error (another code, the network) is not handled
    for err in (_refusal(ApiErrorCode.FLEET_INVALID_HEARTBEAT_INTERVAL), httpx.ConnectError("down")):
        client3 = _client([err])
        rejoin_hook(client3, fd, said.append)
        with pytest.raises(type(err)):
            client3().ActivateNode(ActivateNodeRequest())
        assert client3.calls == ["activate"]
    os.close(fd)


def test_the_node_id_file_lock_is_held_until_its_process_dies(tmp_path):
    path = tmp_path / "state" / NODE_ID_FILE
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from pathlib import Path; "
                               "from fedecho.deploy.supernode import lock_node_id_file; "
                               f"lock_node_id_file(Path({str(path)!r})); print('held', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(SiteAlreadyRunning, match="another SuperNode of this site is running"):
            lock_node_id_file(path)
    finally:
        holder.kill()
        holder.wait()
    os.close(lock_node_id_file(path))  # SIGKILL released it
    assert oct(path.stat().st_mode & 0o777) == "0o600"


def _start_site(federation, address, state, log_name):  # noqa: F811 - one state folder, a log per start
    return ManagedProcess(f"fedecho-client start ({log_name})",
                          _cli("client", "start", "--bundle", site_folder(federation, "A"), "--superlink", address,
                               "--data", federation.root.parent / "data_A", "--format", "camus", "--port",
                               free_port(), "--state-dir", state, "--device", "cpu"),
                          env=flower_env(), log_path=state.parent / f"{log_name}.log")


def test_a_killed_site_started_again_at_once_rejoins_before_its_heartbeat_expires(federation, superlink, tmp_path):
    address, _ = superlink
    state = tmp_path / "sites" / "A"
    site = _start_site(federation, address, state, "first")
    try:
        _wait_for(lambda: "SuperNode ID" in site.tail(100_000), 120, "the SuperNode to connect", site)
        assert (state / NODE_ID_FILE).read_text().isdigit()
        secret = (state / "worker.secret").read_bytes()
        # a second start on the same state folder while the first runs: refused before it touches
        # the site's state, the first unharmed
        twice = _start_site(federation, address, state, "second")
        assert twice.wait(timeout=120) == 2
        assert "another SuperNode of this site is running" in twice.tail(100_000)
        assert (state / "worker.secret").read_bytes() == secret
        assert site.poll() is None
        site.kill()  # SIGKILL, the whole process group: no DeactivateNode, heartbeats stop
        killed = time.monotonic()
        site = _start_site(federation, address, state, "third")
        _wait_for(lambda: "SuperNode ID" in site.tail(100_000), 120, "the restarted SuperNode to connect", site)
        # Flower alone refuses the key until 2 missed 30-s heartbeats (exit 305)
        assert time.monotonic() - killed < 55, site.tail()
        assert "still holds this site's previous session" in site.tail(100_000)
        assert site.poll() is None
        # another site cannot close A's session: B's key, A's node id -> 401, A stays online
        node_a = int((state / NODE_ID_FILE).read_text())
        with pytest.raises(httpx.HTTPStatusError) as refused:
            _deactivate_as(federation, address, "B", node_a)
        assert refused.value.response.status_code == 401
        nodes = {int(n["node-id"]): n for n in _coordinator_view(federation)[1]}
        assert nodes[node_a]["status"] == "online", nodes
    finally:
        site.stop()


def _deactivate_as(federation, address: str, site: str, node_id: int) -> None:
    """A DeactivateNode for ``node_id`` signed with ``site``'s key, through the gateway."""
    from cryptography.hazmat.primitives import serialization
    from flwr.proto.fleet_pb2 import DeactivateNodeRequest  # pylint: disable=E0611
    from flwr.supernode.fleet_http_client import FleetHttpClient
    from flwr.supernode.node_auth_http_interceptor import NodeAuthHttpInterceptor

    private = serialization.load_ssh_private_key((site_folder(federation, site) / "site.key").read_bytes(), None)
    interceptor = NodeAuthHttpInterceptor(private, private.public_key())
    with FleetHttpClient.from_server_address(address, False, str(federation.tls.ca_cert), [interceptor]) as client:
        client.DeactivateNode(DeactivateNodeRequest(node_id=node_id))
