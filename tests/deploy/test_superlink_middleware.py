"""The SuperLink's middleware narrowed to the paths each layer acts on (fedecho.deploy.superlink).

A layer that only acts on ``/v1/control/`` or ``/v1/fleet/`` must still see every request under
its prefix, decided on ``request.url.path`` as the layer itself decides, and no other request
(ASGI apps driven with hand-made scopes here; ``test_outsider.py`` sends forged Fleet calls to a
real SuperLink built this way). And the installed Flower's own stack must still be the one the
table names, or the narrowing would silently do nothing.
"""

from __future__ import annotations

import asyncio

import pytest
from starlette.middleware.base import BaseHTTPMiddleware

from fedecho.deploy.superlink import SCOPED_MIDDLEWARE, PathScoped, middleware_scopes, scope_middleware


class _Recorder(BaseHTTPMiddleware):
    """Records the paths it was run for."""

    seen: list[str] = []

    async def dispatch(self, request, call_next):
        _Recorder.seen.append(request.url.path)
        return await call_next(request)


async def _endpoint(scope, receive, send):
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": scope["path"].encode()})


def _call(app, path: str) -> tuple[int, bytes]:
    sent = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": path, "raw_path": path.encode(), "query_string": b"",
             "headers": [(b"host", b"127.0.0.1")], "scheme": "https", "server": ("127.0.0.1", 443),
             "root_path": "", "http_version": "1.1", "client": ("127.0.0.1", 5)}
    asyncio.run(app(scope, receive, send))
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return sent[0]["status"], body


@pytest.mark.parametrize(("path", "runs"), [
    ("/v1/fleet/pull-messages", True),
    ("/v1/fleet/", True),
    ("/v1/runtime/pull-messages", False),
    ("/v1/control/start-run", False),
    ("/v1/fleetx/pull-messages", False),
    ("/v2/fleet/pull-messages", False),
])
def test_a_scoped_layer_runs_exactly_for_its_prefix(path, runs):
    _Recorder.seen = []
    app = PathScoped(_endpoint, middleware_cls=_Recorder, prefixes=("/v1/fleet/",))
    status, body = _call(app, path)
    assert (status, body) == (200, path.encode())  # the request always reaches the app
    assert _Recorder.seen == ([path] if runs else [])


def test_no_prefix_means_the_layer_never_runs_and_lifespan_still_goes_through():
    _Recorder.seen = []
    app = PathScoped(_endpoint, middleware_cls=_Recorder, prefixes=())
    assert _call(app, "/v1/fleet/pull-messages") == (200, b"/v1/fleet/pull-messages")
    assert _Recorder.seen == []
    lifespan = []

    async def inner(scope, receive, send):
        lifespan.append(scope["type"])

    asyncio.run(PathScoped(inner, middleware_cls=_Recorder, prefixes=())({"type": "lifespan"}, None, None))
    assert lifespan == ["lifespan"]  # BaseHTTPMiddleware passes non-HTTP scopes to the app


def test_the_installed_flower_stack_is_the_one_the_table_names():
    from flwr.superlink import main as superlink_main

    flower = superlink_main._get_middleware()
    names = [getattr(m.cls, "__name__", "") for m in flower]
    assert set(SCOPED_MIDDLEWARE) <= set(names), f"Flower's SuperLink middleware changed: {names}"
    scopes = middleware_scopes({}, [])
    narrowed = scope_middleware(flower, scopes)
    assert len(narrowed) == len(flower)
    for before, after in zip(flower, narrowed):
        name = getattr(before.cls, "__name__", "")
        if name in SCOPED_MIDDLEWARE:
            assert after.cls is PathScoped
            assert after.kwargs["middleware_cls"] is before.cls
            assert after.kwargs["prefixes"] == scopes[name]
        else:  # the protobuf translation and the error translator run on every path, as they were
            assert after is before
    assert "ProtobufTranslationMiddleware" in names and "ProtobufTranslationMiddleware" not in SCOPED_MIDDLEWARE
    fleet = [n for n in names if n not in scopes or "/v1/fleet/x".startswith(scopes[n])]
    assert fleet == ["BaseHTTPMiddleware", "ProtobufTranslationMiddleware", "NodeAuthMiddleware"]


def test_tracing_and_the_event_log_when_switched_on_run_as_flower_runs_them():
    off = middleware_scopes({}, ["--database", "x"])
    assert off["RuntimeTracingMiddleware"] == () and off["FleetEventLogMiddleware"] == ()
    assert off["ControlEventLogMiddleware"] == () and off["NodeAuthMiddleware"] == ("/v1/fleet/",)
    on = middleware_scopes({"FLWR_TRACING_ENABLED": "1"}, ["--enable-event-log"])
    assert "RuntimeTracingMiddleware" not in on
    assert on["FleetEventLogMiddleware"] == ("/v1/fleet/",) and on["ControlEventLogMiddleware"] == ("/v1/control/",)


def test_the_command_line_narrows_unless_told_to_run_flowers_middleware(monkeypatch):
    from fedecho.deploy import superlink

    calls = []
    monkeypatch.setattr(superlink, "run_superlink", lambda interval, args, **kw: calls.append((interval, args, kw)))
    superlink.main(["--", "--port", "9"])
    superlink.main(["--flower-middleware", "--log-stream-interval", "1", "--", "--port", "9"])
    assert calls == [(2.0, ["--port", "9"], {"narrow_middleware": True}),
                     (1.0, ["--port", "9"], {"narrow_middleware": False})]
