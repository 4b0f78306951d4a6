"""FedEcho ClientApp: one site. A thin Flower wrapper: every message goes to
:func:`fedecho.federation.site_messages.handle` (gate for deployed sites, site runtime, coded
error replies, audit log); only the phase's declared tensors and scalar metrics go back. Heavy
imports happen inside the handlers. A message that arrives with its tensors packed (a deployment's
coordinator packs them, see fedecho.deploy.packing) is unpacked before the site sees it, and the
reply is packed after the site's audit log has recorded it."""

from __future__ import annotations

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from fedecho.deploy.packing import pack_message, unpack_message
from fedecho.federation.site_messages import handle


def _serve(kind: str, message: Message, context: Context, base: dict, chain: list) -> Message:
    message, packed = unpack_message(message)
    reply = handle(kind, message, context, base, chain)
    return pack_message(reply) if packed else reply


def build_app(run_config: dict | None = None, mods: list | None = None) -> ClientApp:
    """The ClientApp; ``run_config`` as for ``server.app.build_app``; ``mods`` are Flower mods
    wrapped around the site's work on every admitted message (e.g. client-side DP clipping), inside
    the gate and the audit log (the log records the reply as the mods leave it)."""
    app = ClientApp()
    base = dict(run_config or {})
    chain = list(mods or [])

    @app.query()
    def setup(message: Message, context: Context) -> Message:
        return _serve("query", message, context, base, chain)

    @app.train()
    def train(message: Message, context: Context) -> Message:
        return _serve("train", message, context, base, chain)

    @app.evaluate()
    def evaluate(message: Message, context: Context) -> Message:
        return _serve("evaluate", message, context, base, chain)

    return app


app = build_app()
