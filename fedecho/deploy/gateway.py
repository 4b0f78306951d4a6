"""The coordinator's public port: a TLS gateway that serves the Fleet API and nothing else.

Flower 1.41's SuperLink serves its Fleet API (SuperNodes), its Control API (start / stop / list
runs, register nodes) and its Runtime API (ServerApp, SuperExec) as one FastAPI app on one HTTP
port, and the Control API has no account authentication outside Flower's enterprise plugin.
Anyone holding the federation's CA certificate could therefore submit a run or register a node.

FedEcho binds the SuperLink to 127.0.0.1 (its own TLS, an internal port) and puts this gateway on
the public port. The gateway terminates TLS with the SuperLink's certificate, forwards the Fleet
calls a registered SuperNode makes (``POST /v1/fleet/<call>``, the paths of Flower's
``FleetHttpClient``) and ``/health``, and answers everything else with HTTP 403 and Flower's error
JSON (code ``FORBIDDEN_ACTION``), writing one line per refusal to its log. Node self-registration
through the Fleet API (``register-node``, ``unregister-node``) is refused too: sites are
registered by the coordinator (``fedecho-server add-site`` / ``start``) over the loopback Control
API. SuperNode authentication (signed headers) passes through untouched and is checked by the
SuperLink itself.

The gateway is a Starlette app under uvicorn (both come with Flower) that forwards with an
``httpx`` client over a kept-alive TLS connection; ``python -m fedecho.deploy.gateway`` runs it.

**Coordinator bells** (``--bells DIR``, ``fedecho-server start`` passes ``<federation>/state/
bells``). Sites and the ServerApp otherwise learn of each other's messages by asking the SuperLink
again and again: each SuperNode up to 4 times a second and the ServerApp up to 10, each ask an HTTPS
call that costs the coordinator's CPU (about 11 ms of the SuperLink's) and each answer up to an
interval late. With bells, both ends are told instead, through two named pipes in ``DIR``
(:class:`fedecho.deploy.polling.TaskBell`): the ServerApp rings :data:`OUTBOX_BELL` after it pushed
messages (:class:`fedecho.deploy.grid.PromptGrid`); the gateway listens on it, and a site's
``pull-messages`` the SuperLink answered with no message is held for up to ``hold_s`` seconds
(default :data:`HOLD_S`) and asked again at once when the bell rings, so the message reaches the
site within milliseconds of being pushed (a long poll). The gateway rings :data:`INBOX_BELL`
after a site's ``push-messages`` succeeded; the ServerApp waits on it between its looks for
replies. Only a call the SuperLink answered with HTTP 200 is held (an unauthenticated one got its
401 at once), and one held call re-asks the SuperLink at most once. A bell nobody listens to is
never waited for: every waiter keeps its own looks as a fallback, so a missed ring costs at most
an interval, never a message.

**Request size.** A request body is read only up to ``max_body`` bytes (default
:data:`MAX_BODY_MIB` MiB, ``--max-body-mib``; ``fedecho-server start --max-request-mib``): a larger
one, announced by its Content-Length or streamed in chunks, is answered HTTP 413 without being
buffered or forwarded, so someone holding the CA certificate cannot exhaust the coordinator's
memory with one upload. Flower sends a message's tensors as separate objects of at most 5 MiB
(``FLWR_PRIVATE_MAX_ARRAY_CHUNK_SIZE``), so a site's largest call is far below the default.

**Slow peers.** uvicorn times out only the idle time after a response: a connection that never
completes a request's headers (one that sends nothing, or a header byte now and then: a slowloris)
would stay open for ever, so anyone with network reach could hold the gateway's connections. The
gateway's HTTP protocol (:func:`http_protocol`) drops a connection whose request headers are not
complete ``header_timeout`` seconds (:data:`HEADER_TIMEOUT_S`) after it opened or after its
previous response, and a body that has not arrived within :data:`BODY_TIMEOUT_S` gets HTTP 408.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import logging
import os
import ssl
import sys
from pathlib import Path

__all__ = ["BODY_TIMEOUT_S", "FLEET_PATHS", "HEADER_TIMEOUT_S", "HOLD_S", "INBOX_BELL", "MAX_BODY_MIB", "OUTBOX_BELL", "REFUSAL_CODE", "build_app", "gateway_command",
           "http_protocol", "is_allowed", "main"]

#: The Fleet calls a SuperNode with an authentication key makes (flwr/supernode/fleet_http_client.py).
FLEET_PATHS = frozenset(f"/v1/fleet/{call}" for call in (
    "activate-node", "deactivate-node", "send-node-heartbeat", "pull-messages", "push-messages",
    "get-run", "get-fab", "push-object", "pull-object", "confirm-message-received"))
HEALTH_PATH = "/health"
#: Flower's ApiErrorCode.FORBIDDEN_ACTION: the Flower CLI prints ``detail`` for it.
REFUSAL_CODE = 10
REFUSAL = ("refused by the FedEcho gateway: this port serves only the Fleet API of registered "
           "SuperNodes; runs are started and nodes registered by the coordinator on its own machine")
#: Rung by the ServerApp after it pushed messages for sites; the gateway listens (see the module doc).
OUTBOX_BELL = "outbox.bell"
#: Rung by the gateway after a site pushed a reply; the ServerApp listens.
INBOX_BELL = "inbox.bell"
#: Longest time a site's empty ``pull-messages`` is held waiting for the outbox bell (seconds).
HOLD_S = 1.0
#: Largest request body the gateway reads (MiB); Flower's largest object is 5 MiB (module doc).
MAX_BODY_MIB = 64
#: Longest time from a connection's start, or its previous response, to a request's complete headers (s).
HEADER_TIMEOUT_S = 10.0
#: Longest time a request's body may take to arrive once its headers are in (s).
BODY_TIMEOUT_S = 120.0
_PULL_MESSAGES = "/v1/fleet/pull-messages"
_PUSH_MESSAGES = "/v1/fleet/push-messages"
#: Headers that belong to one hop (RFC 9110 §7.6.1) or that httpx / Starlette set themselves.
_HOP = frozenset({"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding",
                  "upgrade", "host", "content-length"})


def is_allowed(method: str, path: str) -> bool:
    """Whether the gateway forwards ``method path`` (exact paths only: no prefixes, no ``..``)."""
    if path == HEALTH_PATH:
        return method in ("GET", "HEAD")
    return method == "POST" and path in FLEET_PATHS


def _refusal_logger(log_file: Path | None) -> logging.Logger:
    logger = logging.getLogger("fedecho.gateway")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    if log_file is not None and not logger.handlers:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(log_file)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    return logger


class _TooLarge(Exception):
    """A request body over the gateway's limit."""


async def _read_body(request, limit: int) -> bytes:
    """The request's body, or :class:`_TooLarge` as soon as more than ``limit`` bytes are
    announced or have arrived (nothing beyond the limit is kept)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.strip().isdigit() and int(declared) > limit:
        raise _TooLarge(int(declared))
    parts, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _TooLarge(size)
        parts.append(chunk)
    return b"".join(parts)


def http_protocol(header_timeout: float = HEADER_TIMEOUT_S):
    """uvicorn's HTTP/1.1 protocol (httptools) with a deadline for each request's headers
    (module doc, "Slow peers"): armed when the connection opens and after each response, disarmed
    when a request's headers are complete; at the deadline the connection is aborted."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class Protocol(HttpToolsProtocol):
        _deadline = None

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._arm()

        def _arm(self) -> None:
            if self._deadline is None:
                self._deadline = self.loop.call_later(header_timeout, self._too_slow)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _too_slow(self) -> None:
            self._deadline = None
            if not self.transport.is_closing():
                self.transport.abort()

        def on_headers_complete(self) -> None:
            self._disarm()
            super().on_headers_complete()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm()

        def connection_lost(self, exc) -> None:
            self._disarm()
            super().connection_lost(exc)

    return Protocol


def _no_message(content: bytes) -> bool:
    """Whether a ``pull-messages`` answer body carries no message (an unreadable one: False)."""
    from flwr.proto.fleet_pb2 import PullMessagesResponse

    answer = PullMessagesResponse()
    try:
        answer.ParseFromString(content)
    except Exception:  # noqa: BLE001 - not ours to judge: hand it on as it is
        return False
    return not answer.messages_list


class _Outbox:
    """The outbox bell as the gateway's event loop sees it: a count of rings and a way to wait for
    the next one (every held call wakes on one ring)."""

    def __init__(self, path: Path) -> None:
        from fedecho.deploy.polling import TaskBell

        self.bell = TaskBell(path)
        self.rings = 0
        self._rang = asyncio.Event()
        if self.bell.works:
            asyncio.get_running_loop().add_reader(self.bell.fd, self._on_ring)

    def _on_ring(self) -> None:
        try:
            while os.read(self.bell.fd, 4096):
                pass
        except BlockingIOError:
            pass
        self.rings += 1
        rang, self._rang = self._rang, asyncio.Event()
        rang.set()

    async def rang_since(self, rings: int, timeout: float) -> bool:
        """Whether the bell rang after the count was ``rings``, waiting up to ``timeout`` s for it."""
        if self.rings != rings:
            return True
        if not self.bell.works:
            return False
        try:
            await asyncio.wait_for(self._rang.wait(), timeout)
        except TimeoutError:
            return False
        return True

    def close(self) -> None:
        if self.bell.works:
            asyncio.get_running_loop().remove_reader(self.bell.fd)
        self.bell.close()


def build_app(upstream: str, ca_cert: str | Path, log_file: str | Path | None = None, *,
              bells: str | Path | None = None, hold_s: float = HOLD_S, max_body: int = MAX_BODY_MIB << 20):
    """The gateway as an ASGI app forwarding allowed calls to ``https://<upstream>`` (HOST:PORT),
    checking the upstream's certificate against ``ca_cert``; with ``bells`` (a folder), the
    coordinator bells of the module doc, holding an empty ``pull-messages`` up to ``hold_s`` s;
    a request body over ``max_body`` bytes is answered 413 unread."""
    import httpx
    from fedecho.deploy.polling import ring
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    logger = _refusal_logger(Path(log_file) if log_file is not None else None)
    verify = ssl.create_default_context(cafile=str(ca_cert))
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=16)
    client = httpx.AsyncClient(base_url=f"https://{upstream}", verify=verify, timeout=120.0, limits=limits)

    state: dict[str, _Outbox] = {}
    inbox = Path(bells) / INBOX_BELL if bells is not None else None

    def note(request: Request, decision: str, **extra) -> None:
        peer = request.client.host if request.client else "?"
        logger.info(json.dumps({"time": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "peer": peer,
                                "method": request.method, "path": request.url.path[:200], "decision": decision,
                                **extra}))

    async def forward(request: Request) -> Response:
        path, method = request.url.path, request.method
        if not is_allowed(method, path):
            note(request, "refused")
            return JSONResponse({"code": REFUSAL_CODE, "detail": REFUSAL}, status_code=403)
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in _HOP]
        try:
            body = await asyncio.wait_for(_read_body(request, max_body), BODY_TIMEOUT_S)
        except TimeoutError:
            note(request, "too slow")
            return JSONResponse({"detail": f"request body not complete within {BODY_TIMEOUT_S:g} s"},
                                status_code=408, headers={"connection": "close"})
        except _TooLarge as big:
            note(request, "too large", bytes=big.args[0], limit=max_body)
            detail = (f"request body over the FedEcho gateway's limit of {max_body} bytes "
                      f"(the coordinator raises it with `fedecho-server start --max-request-mib`)")
            return JSONResponse({"detail": detail}, status_code=413, headers={"connection": "close"})
        outbox = state.get("outbox")
        rings = outbox.rings if outbox is not None else 0
        try:
            reply = await client.request(method, path, content=body, headers=headers)
            if (outbox is not None and path == _PULL_MESSAGES and reply.status_code == 200
                    and _no_message(reply.content) and await outbox.rang_since(rings, hold_s)):
                # the ServerApp pushed messages while this site was asking: ask again, once
                reply = await client.request(method, path, content=body, headers=headers)
        except httpx.HTTPError as exc:
            return JSONResponse({"detail": f"SuperLink unreachable behind the gateway ({type(exc).__name__})"},
                                status_code=502)
        if inbox is not None and path == _PUSH_MESSAGES and reply.status_code == 200:
            ring(inbox)
        out = {k: v for k, v in reply.headers.items() if k.lower() not in _HOP and k.lower() != "content-encoding"}
        return Response(content=reply.content, status_code=reply.status_code, headers=out)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        if bells is not None:
            Path(bells).mkdir(parents=True, exist_ok=True, mode=0o700)
            state["outbox"] = _Outbox(Path(bells) / OUTBOX_BELL)
        try:
            yield
        finally:
            if "outbox" in state:
                state.pop("outbox").close()
            await client.aclose()

    methods = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
    routes = [Route("/{path:path}", forward, methods=methods)]
    return Starlette(routes=routes, lifespan=lifespan)


def gateway_command(*, listen_host: str, listen_port: int, upstream: str, cert: Path, key: Path, ca_cert: Path,
                    log_file: Path, bells: Path | None = None, max_body_mib: int = MAX_BODY_MIB) -> list[str]:
    """The command line that runs the gateway in its own process (this Python)."""
    return [sys.executable, "-m", "fedecho.deploy.gateway", "--host", listen_host, "--port", str(listen_port),
            "--upstream", upstream, "--certfile", str(cert), "--keyfile", str(key), "--ca-certfile", str(ca_cert),
            "--log-file", str(log_file), *(["--bells", str(bells)] if bells is not None else []),
            "--max-body-mib", str(max_body_mib)]


def main(argv: list[str] | None = None) -> int:
    import uvicorn

    parser = argparse.ArgumentParser(prog="python -m fedecho.deploy.gateway", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="the SuperLink's loopback HOST:PORT")
    parser.add_argument("--certfile", required=True)
    parser.add_argument("--keyfile", required=True)
    parser.add_argument("--ca-certfile", required=True)
    parser.add_argument("--log-file", default=None, help="one JSON line per refused call")
    parser.add_argument("--bells", default=None, help="folder of the coordinator bells (outbox.bell, inbox.bell)")
    parser.add_argument("--hold", type=float, default=HOLD_S,
                        help="seconds an empty pull-messages waits for the outbox bell (with --bells)")
    parser.add_argument("--header-timeout", type=float, default=HEADER_TIMEOUT_S,
                        help=f"seconds a connection may take to send a request's headers (default {HEADER_TIMEOUT_S:g})")
    parser.add_argument("--max-body-mib", type=int, default=MAX_BODY_MIB,
                        help=f"largest request body read, in MiB (default {MAX_BODY_MIB}); larger ones get HTTP 413")
    args = parser.parse_args(argv)
    if not 0 < args.hold <= 10:
        parser.error(f"--hold {args.hold}: give seconds in (0, 10]")
    if not 0 < args.header_timeout <= 300:
        parser.error(f"--header-timeout {args.header_timeout}: give seconds in (0, 300]")
    if args.max_body_mib < 6:
        parser.error(f"--max-body-mib {args.max_body_mib}: give at least 6 (Flower sends objects of up to 5 MiB)")
    for flag in ("certfile", "keyfile", "ca_certfile"):
        if not Path(getattr(args, flag)).is_file():
            parser.error(f"--{flag.replace('_', '-')} {getattr(args, flag)}: file not found")
    app = build_app(args.upstream, args.ca_certfile, args.log_file, bells=args.bells, hold_s=args.hold,
                    max_body=args.max_body_mib << 20)
    print(f"FedEcho gateway on {args.host}:{args.port} -> SuperLink {args.upstream} (Fleet API only)", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, ssl_certfile=args.certfile, ssl_keyfile=args.keyfile,
                log_level="warning", access_log=False, server_header=False,
                http=http_protocol(args.header_timeout))
    return 0


if __name__ == "__main__":
    sys.exit(main())
