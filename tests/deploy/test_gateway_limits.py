"""What one peer with network reach can make the gateway hold (fedecho.deploy.gateway): a request
body is read only up to its limit (``--max-body-mib``): an outsider who announces or streams a huge
upload gets HTTP 413, the SuperLink never sees the call, and the gateway's memory does not grow with
the upload, while a site's largest real call (a 5 MiB tensor chunk in ``push-object``) still passes;
a connection that does not complete a request's headers in time (``--header-timeout``: silent, or a
slowloris dripping header bytes) is dropped, while a site's kept-alive connection keeps working.
Real gateway process, the stand-in SuperLink of the bells tests behind it."""

from __future__ import annotations

import json
import socket
import ssl
import time

import psutil
import pytest

from fedecho.deploy.gateway import gateway_command
from tests.deploy.test_coordinator_bells import running_gateway

LIMIT_MIB = 6
HEADER_TIMEOUT_S = 1.5


@pytest.fixture
def gateway(tmp_path):
    with running_gateway(tmp_path, "--header-timeout", str(HEADER_TIMEOUT_S),
                         max_body_mib=LIMIT_MIB) as (upstream, process, port, context):

        def connect() -> ssl.SSLSocket:
            raw = socket.create_connection(("127.0.0.1", port), timeout=20)
            return context.wrap_socket(raw, server_hostname="127.0.0.1")

        yield upstream, process, tmp_path / "gateway.log", connect


def _head(path: str, extra: str) -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/protobuf\r\n"
            f"{extra}\r\n").encode()


def _answer(sock: ssl.SSLSocket) -> tuple[int, bytes]:
    data = b""
    while b"\r\n\r\n" not in data or len(data) < data.index(b"\r\n\r\n") + 4 + _length(data):
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    status = int(data.split(b" ", 2)[1])
    return status, data.split(b"\r\n\r\n", 1)[1]


def _length(data: bytes) -> int:
    for line in data.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


def test_an_announced_huge_body_is_refused_before_it_is_sent(gateway):
    upstream, _, log, connect = gateway
    with connect() as sock:
        sock.sendall(_head("/v1/fleet/push-object", f"Content-Length: {64 << 30}\r\n"))  # 64 GiB, never sent
        status, body = _answer(sock)
    assert status == 413
    detail = json.loads(body)["detail"]
    assert f"{LIMIT_MIB << 20} bytes" in detail and "fedecho-server start --max-request-mib" in detail
    assert upstream.calls == []  # the SuperLink never saw it
    line = json.loads(log.read_text().splitlines()[-1])
    assert line["decision"] == "too large" and line["bytes"] == 64 << 30 and line["path"] == "/v1/fleet/push-object"


def test_a_streamed_upload_is_cut_at_the_limit_and_never_buffered(gateway):
    """Chunked transfer, no length announced: 128 MiB offered; the gateway stops reading past 6 MiB
    and answers 413; what the sender goes on sending is dropped while the TLS connection closes
    (asyncio's TLS shutdown), never kept: the gateway's memory grows by far less than the upload."""
    upstream, process, log, connect = gateway
    before = psutil.Process(process.pid).memory_info().rss
    chunk = b"\0" * (1 << 20)
    with connect() as sock:
        sock.sendall(_head("/v1/fleet/push-messages", "Transfer-Encoding: chunked\r\n"))
        try:
            for _ in range(128):
                sock.sendall(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
        except OSError:
            pass  # the gateway closed the connection after its 413
    grown = psutil.Process(process.pid).memory_info().rss - before
    assert grown < 64 << 20, f"gateway memory grew by {grown >> 20} MiB during a refused upload"
    assert upstream.calls == []
    deadline = time.monotonic() + 10
    while "too large" not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    line = json.loads(log.read_text().splitlines()[-1])
    assert line["decision"] == "too large" and line["limit"] == LIMIT_MIB << 20
    assert LIMIT_MIB << 20 < line["bytes"] <= (LIMIT_MIB + 2) << 20  # stopped right after the limit


def test_a_sites_largest_real_call_still_passes(gateway):
    """A push-object with one full tensor chunk (Flower's 5 MiB, FLWR_PRIVATE_MAX_ARRAY_CHUNK_SIZE)
    plus its object header reaches the SuperLink whole, by length or chunked."""
    from flwr.common.constant import FLWR_PRIVATE_MAX_ARRAY_CHUNK_SIZE

    upstream, _, _, connect = gateway
    payload = b"\1" * (FLWR_PRIVATE_MAX_ARRAY_CHUNK_SIZE + 4096)
    with connect() as sock:
        sock.sendall(_head("/v1/fleet/push-object", f"Content-Length: {len(payload)}\r\n") + payload)
        status, _ = _answer(sock)
    assert status == 200
    with connect() as sock:
        half = len(payload) // 2
        sock.sendall(_head("/v1/fleet/push-object", "Transfer-Encoding: chunked\r\n")
                     + b"%x\r\n" % half + payload[:half] + b"\r\n"
                     + b"%x\r\n" % (len(payload) - half) + payload[half:] + b"\r\n0\r\n\r\n")
        status, _ = _answer(sock)
    assert status == 200
    assert [p for _, p in upstream.calls] == ["/v1/fleet/push-object"] * 2


def test_the_limit_is_set_from_the_coordinators_command_line(tmp_path):
    from fedecho.cli.server import build_parser

    args = build_parser().parse_args(["start", "--dir", str(tmp_path), "--max-request-mib", "32"])
    assert args.max_request_mib == 32
    command = gateway_command(listen_host="0.0.0.0", listen_port=9200, upstream="127.0.0.1:1", cert=tmp_path / "c",
                              key=tmp_path / "k", ca_cert=tmp_path / "ca", log_file=tmp_path / "l", max_body_mib=32)
    assert command[command.index("--max-body-mib") + 1] == "32"


def _closed_after(sock: ssl.SSLSocket, drip: bytes = b"", every: float = 0.25, limit: float = 20.0) -> float:
    """Seconds until the gateway closes ``sock``, sending ``drip`` every ``every`` s meanwhile."""
    start = time.monotonic()
    sock.settimeout(every)
    while time.monotonic() - start < limit:
        try:
            if drip:
                sock.sendall(drip)
            if sock.recv(1024) == b"":
                break
        except TimeoutError:
            continue
        except OSError:
            break
    return time.monotonic() - start


def test_a_silent_connection_is_dropped_at_the_header_deadline(gateway):
    upstream, _, _, connect = gateway
    with connect() as sock:  # TLS handshake done, then nothing
        seconds = _closed_after(sock)
    assert HEADER_TIMEOUT_S - 0.2 <= seconds < HEADER_TIMEOUT_S + 5.0, seconds
    assert upstream.calls == []


def test_a_slowloris_is_dropped_although_it_keeps_sending(gateway):
    """Header bytes every 0.25 s (each one resets no timer): dropped at the header deadline."""
    upstream, _, _, connect = gateway
    with connect() as sock:
        sock.sendall(b"POST /v1/fleet/pull-messages HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        seconds = _closed_after(sock, drip=b"X")
    assert HEADER_TIMEOUT_S - 0.2 <= seconds < HEADER_TIMEOUT_S + 5.0, seconds
    assert upstream.calls == []


def test_a_sites_kept_alive_connection_outlives_the_header_deadline(gateway):
    """A site's requests on one connection, spaced by less than uvicorn's keep-alive time, each
    complete its headers at once: the connection serves them all, well past the header deadline."""
    upstream, _, _, connect = gateway
    start = time.monotonic()
    with connect() as sock:
        for _ in range(4):
            sock.sendall(_head("/v1/fleet/send-node-heartbeat", "Content-Length: 0\r\n"))
            status, _ = _answer(sock)
            assert status == 200
            time.sleep(HEADER_TIMEOUT_S * 0.6)
    assert time.monotonic() - start > 2 * HEADER_TIMEOUT_S
    assert [p for _, p in upstream.calls] == ["/v1/fleet/send-node-heartbeat"] * 4
