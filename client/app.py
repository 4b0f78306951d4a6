"""FedEcho ClientApp: one site. A thin Flower wrapper: every message goes to
:func:`fedecho.federation.site_messages.handle` (gate for deployed sites, site runtime, coded
error replies, audit log); only the phase's declared tensors and scalar metrics go back. Heavy
imports happen inside the handlers."""

from __future__ import annotations

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from fedecho.federation.site_messages import handle


def build_app(run_config: dict | None = None, mods: list | None = None) -> ClientApp:
    """The ClientApp; ``run_config`` as for ``server.app.build_app``; ``mods`` are Flower mods
    wrapped around the site's work on every admitted message (e.g. client-side DP clipping), inside
    the gate and the audit log (the log records the reply as the mods leave it)."""
    app = ClientApp()
    base = dict(run_config or {})
    chain = list(mods or [])

    @app.query()
    def setup(message: Message, context: Context) -> Message:
        return handle("query", message, context, base, chain)

    @app.train()
    def train(message: Message, context: Context) -> Message:
        return handle("train", message, context, base, chain)

    @app.evaluate()
    def evaluate(message: Message, context: Context) -> Message:
        return handle("evaluate", message, context, base, chain)

    return app


app = build_app()
