"""The coordinator bells (fedecho.deploy.gateway, fedecho.deploy.grid): the real gateway process
holds a site's empty ``pull-messages`` and asks the SuperLink again the moment the ServerApp rings
the outbox bell; it rings the inbox bell when a site's reply was accepted; nothing unauthenticated
is held or rung for. The SuperLink behind the gateway is a small TLS server here, so that the test
controls when a message is there and counts the calls the gateway makes (every deployment test,
which runs ``fedecho-server start``, runs real SuperLinks with the bells on); the PromptGrid's
side is checked against a Grid whose replies come when the test says."""

from __future__ import annotations

import contextlib
import http.client
import ssl
import threading
import time

import pytest

from fedecho.deploy.certs import make_ca, make_server_cert
from fedecho.deploy.gateway import INBOX_BELL, OUTBOX_BELL, gateway_command
from fedecho.deploy.polling import TaskBell, ring
from fedecho.deploy.process import ManagedProcess, flower_env, free_port, wait_for_port

HOLD_S = 3.0  # long against the test's own steps, so that timings hold on a loaded 2-core machine


class _Upstream:
    """A stand-in SuperLink on 127.0.0.1 over TLS: pull-messages answers no message until
    ``has_message`` is set (as it was when the call came in, before ``after_look`` runs; the
    answer leaves ``delay_s`` later);
    a call whose header ``x-test-auth`` is ``bad`` gets 401 (as the SuperLink answers a SuperNode
    whose signature does not check); every call is counted."""

    def __init__(self, tls, port: int) -> None:
        import uvicorn
        from flwr.proto.fleet_pb2 import PullMessagesResponse
        from flwr.proto.message_pb2 import Message as ProtoMessage
        from starlette.applications import Starlette
        from starlette.responses import Response
        from starlette.routing import Route

        self.calls: list[tuple[float, str]] = []
        self.has_message = False
        self.delay_s = 0.0
        self.after_look = None

        async def fleet(request):
            import asyncio

            self.calls.append((time.monotonic(), request.url.path))
            has_message = self.has_message  # what the SuperLink's state says when it looks
            if self.after_look is not None:
                self.after_look()
                self.after_look = None
            await asyncio.sleep(self.delay_s)
            if request.headers.get("x-test-auth") == "bad":
                return Response(b'{"detail":"Invalid SuperNode authentication"}', status_code=401)
            if request.url.path == "/v1/fleet/pull-messages":
                answer = PullMessagesResponse()
                if has_message:
                    answer.messages_list.append(ProtoMessage())
                return Response(answer.SerializeToString(), media_type="application/protobuf")
            return Response(b"", media_type="application/protobuf")

        app = Starlette(routes=[Route("/v1/fleet/{call}", fleet, methods=["POST"])])
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, ssl_certfile=str(tls.cert),
                                                    ssl_keyfile=str(tls.key), log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@contextlib.contextmanager
def running_gateway(tmp_path, *args: str, **command_options):
    """A real gateway process in front of an :class:`_Upstream` on 127.0.0.1: yields (upstream,
    gateway process, port, TLS context trusting the federation's CA); ``command_options`` go to
    :func:`gateway_command`, ``args`` are appended to its command line."""
    ca = make_ca(tmp_path / "ca")
    tls = make_server_cert(ca, tmp_path / "server", ["127.0.0.1", "localhost"])
    upstream_port, port = free_port(), free_port()
    upstream = _Upstream(tls, upstream_port)
    wait_for_port("127.0.0.1", upstream_port, timeout=30)
    command = gateway_command(listen_host="127.0.0.1", listen_port=port, upstream=f"127.0.0.1:{upstream_port}",
                              cert=tls.cert, key=tls.key, ca_cert=ca.ca_cert, log_file=tmp_path / "gateway.log",
                              **command_options) + list(args)
    process = ManagedProcess("gateway", command, env=flower_env(), log_path=tmp_path / "gateway.out")
    try:
        wait_for_port("127.0.0.1", port, timeout=60, process=process)
        yield upstream, process, port, ssl.create_default_context(cafile=str(ca.ca_cert))
    finally:
        process.stop()
        upstream.stop()


@pytest.fixture
def gateway(tmp_path):
    bells = tmp_path / "bells"
    with running_gateway(tmp_path, "--hold", str(HOLD_S), bells=bells) as (upstream, _, port, context):
        yield upstream, bells, (lambda: http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=10))


def _post(connect, path: str, *, auth: str = "good") -> tuple[int, bytes, float]:
    connection = connect()
    start = time.monotonic()
    connection.request("POST", path, body=b"", headers={"x-test-auth": auth, "content-type": "application/protobuf"})
    reply = connection.getresponse()
    body = reply.read()
    connection.close()
    return reply.status, body, time.monotonic() - start


def _messages(body: bytes) -> int:
    from flwr.proto.fleet_pb2 import PullMessagesResponse

    answer = PullMessagesResponse()
    answer.ParseFromString(body)
    return len(answer.messages_list)


def test_an_empty_pull_is_held_and_asked_again_when_the_serverapp_rings(gateway):
    upstream, bells, connect = gateway
    assert (bells / OUTBOX_BELL).is_fifo()

    # nothing pushed: held for the hold time, one call to the SuperLink, no message
    status, body, seconds = _post(connect, "/v1/fleet/pull-messages")
    assert status == 200 and _messages(body) == 0
    assert HOLD_S - 0.05 <= seconds < HOLD_S + 5.0
    assert [p for _, p in upstream.calls] == ["/v1/fleet/pull-messages"]

    # a message is pushed 0.3 s into a held pull: the site has it right after the ring, not at the hold's end
    upstream.calls.clear()

    def push() -> None:
        time.sleep(0.3)
        upstream.has_message = True
        assert ring(bells / OUTBOX_BELL)

    pusher = threading.Thread(target=push)
    pusher.start()
    status, body, seconds = _post(connect, "/v1/fleet/pull-messages")
    pusher.join()
    assert status == 200 and _messages(body) == 1
    assert 0.3 <= seconds < HOLD_S - 0.5, seconds
    assert [p for _, p in upstream.calls] == ["/v1/fleet/pull-messages"] * 2  # asked again once, at the ring
    assert upstream.calls[1][0] - upstream.calls[0][0] >= 0.25

    # a pull that finds a message is never held
    status, body, seconds = _post(connect, "/v1/fleet/pull-messages")
    assert status == 200 and _messages(body) == 1 and seconds < HOLD_S - 0.5


def test_a_ring_while_the_superlink_answers_is_not_lost(gateway):
    """The SuperLink looked (no message), the ServerApp pushes and rings, then the empty answer
    reaches the gateway: the gateway asks again at once instead of holding for the whole time."""
    upstream, bells, connect = gateway
    upstream.delay_s = 0.4
    upstream.after_look = lambda: (setattr(upstream, "has_message", True), ring(bells / OUTBOX_BELL))
    status, body, seconds = _post(connect, "/v1/fleet/pull-messages")
    assert status == 200 and _messages(body) == 1
    assert seconds < HOLD_S - 0.5, seconds  # two slow answers (0.4 s each), no hold
    assert len(upstream.calls) == 2


def test_unauthenticated_calls_are_neither_held_nor_rung_for(gateway):
    upstream, bells, connect = gateway
    inbox = TaskBell(bells / INBOX_BELL)  # the ServerApp's side
    try:
        status, _, seconds = _post(connect, "/v1/fleet/pull-messages", auth="bad")
        assert status == 401 and seconds < HOLD_S - 0.5
        status, _, _ = _post(connect, "/v1/fleet/push-messages", auth="bad")
        assert status == 401
        assert not inbox.wait(0.3)  # a refused reply rings nothing
        status, _, _ = _post(connect, "/v1/fleet/push-messages")
        assert status == 200
        assert inbox.wait(2.0)  # an accepted reply rings the ServerApp at once
        status, _, _ = _post(connect, "/v1/fleet/pull-object")
        assert status == 200 and not inbox.wait(0.3)  # objects do not ring
    finally:
        inbox.close()


def test_the_serverapp_rings_after_pushing_and_wakes_on_the_inbox_bell(tmp_path):
    from fedecho.deploy.grid import PromptGrid
    from tests.deploy.test_polling import _Grid, _message

    bells = tmp_path / "bells"
    bells.mkdir()
    outbox = TaskBell(bells / OUTBOX_BELL)  # the gateway's side
    try:
        inner = _Grid(0.4)
        grid = PromptGrid(inner, bells=bells, bell_first_poll_s=3.0, bell_poll_s=5.0)  # fallback looks: late
        # the gateway rings once the SuperLink accepted the reply: after the reply is there (0.4 s
        # after the push, which follows this timer's start), never before it
        threading.Timer(0.8, lambda: ring(bells / INBOX_BELL)).start()
        start = time.monotonic()
        replies = list(grid.send_and_receive([_message(1)], timeout=10))
        took = time.monotonic() - start
        assert len(replies) == 1
        assert outbox.wait(0)  # rang after the push
        assert took < 2.4, took  # woken by the ring, not by the fallback look at 3 s
        assert len(inner.looks) == 2, inner.looks  # the first at once, then the ring's
        without = _Grid(0.4)
        list(PromptGrid(without).send_and_receive([_message(1)], timeout=10))
        assert len(without.looks) > len(inner.looks)  # without bells: a look every 10-100 ms
    finally:
        outbox.close()


def test_without_a_listening_gateway_the_serverapp_still_collects_replies(tmp_path):
    """Bells configured but the folder missing (no gateway): nothing to ring, the PromptGrid falls
    back to its looks and still gets every reply."""
    from fedecho.deploy.grid import PromptGrid
    from tests.deploy.test_polling import _Grid, _message

    inner = _Grid(0.2, 0.3)
    replies = list(PromptGrid(inner, bells=tmp_path / "absent").send_and_receive([_message(1), _message(2)],
                                                                                timeout=10))
    assert len(replies) == 2


def test_fedecho_server_start_wires_the_bells_to_the_gateway_and_the_serverapp(tmp_path, monkeypatch):
    from fedecho.deploy.federation import init_federation
    from fedecho.deploy.grid import BELLS_ENV
    from fedecho.deploy.superlink import superlink_env

    fed = init_federation(tmp_path / "fed", port=9200)
    monkeypatch.setenv(BELLS_ENV, "/somewhere/else")  # never inherited from whoever starts the coordinator
    assert BELLS_ENV not in superlink_env(fed)
    assert superlink_env(fed, bells=tmp_path / "b")[BELLS_ENV] == str((tmp_path / "b").resolve())
    command = gateway_command(listen_host="0.0.0.0", listen_port=9200, upstream="127.0.0.1:1", cert=tmp_path / "c",
                              key=tmp_path / "k", ca_cert=tmp_path / "ca", log_file=tmp_path / "l", bells=tmp_path / "b")
    assert command[command.index("--bells") + 1] == str(tmp_path / "b")
    assert "--bells" not in gateway_command(listen_host="0.0.0.0", listen_port=9200, upstream="127.0.0.1:1",
                                            cert=tmp_path / "c", key=tmp_path / "k", ca_cert=tmp_path / "ca",
                                            log_file=tmp_path / "l")
