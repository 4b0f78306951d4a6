"""FedEcho ClientApp: one site. Unpacks each message and calls fedecho.federation.site; only the
phase's declared tensors and scalar metrics go back. Heavy imports happen inside the handlers
(a deployed SuperNode starts a fresh process for every message)."""

from __future__ import annotations

from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedecho.federation.contract import ARRAYS, CONFIG, METRICS, ConfigKey


def _runtime(context: Context, run_config: dict):
    from pathlib import Path

    from fedecho.config.compose import run_config_from_flower
    from fedecho.federation.site import get_runtime

    cfg, _ = run_config_from_flower({**run_config, **dict(context.run_config)})
    node = context.node_config
    if "partition-id" in node:  # simulation: a virtual site made by data.partition
        index, count = int(node["partition-id"]), int(node["num-partitions"])
        state_dir = Path(cfg.federation.run_dir).resolve() / "sites" / f"site_{index}"
        return get_runtime(cfg, site_index=index, num_sites=count, state_dir=state_dir)
    # deployment: the site's own data and settings, from fedecho-client (fedecho.deploy.supernode)
    from fedecho.config.data import DataConfig

    if node.get("device"):  # the site's choice (fedecho-client start --device) wins over the run's
        import dataclasses

        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, device=str(node["device"])))
    data = DataConfig(format=str(node["data-format"]), root=str(node["data-root"]), on_error="skip")
    return get_runtime(cfg, site_index=int(node.get("site-index", 0)), num_sites=1,
                       state_dir=_run_state_dir(str(node.get("state-dir", ".fedecho-site")), cfg), data=data)


def _run_state_dir(root: str, cfg):
    """A site keeps one state folder per run (named after the coordinator's run directory): a new
    run starts fresh, a resumed run (same run directory) finds its optimiser, heads and accountant."""
    import hashlib
    import re
    from pathlib import Path

    run_dir = str(cfg.federation.run_dir)
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", Path(run_dir).name)[:60] or "run"
    return Path(root) / f"{name}-{hashlib.sha256(run_dir.encode()).hexdigest()[:8]}"


def _unpack(message: Message):
    from fedecho.federation.arrays import torch_dict
    from fedecho.federation.phases import Phase

    config = dict(message.content.config_records[CONFIG])
    return Phase.from_config(config), config, torch_dict(message.content.array_records[ARRAYS])


def _reply(message: Message, metrics: dict, arrays: dict | None = None) -> Message:
    from fedecho.federation.arrays import to_arrayrecord

    content = RecordDict({METRICS: MetricRecord(metrics)})
    if arrays is not None:
        content[ARRAYS] = to_arrayrecord(arrays) if arrays else ArrayRecord()
    return Message(content=content, reply_to=message)


def build_app(run_config: dict | None = None, mods: list | None = None) -> ClientApp:
    """The ClientApp; ``run_config`` as for ``server.app.build_app``; ``mods`` are Flower mods
    wrapped around every handler (e.g. client-side DP clipping)."""
    app = ClientApp(mods=mods or [])
    base = dict(run_config or {})

    @app.query()
    def setup(message: Message, context: Context) -> Message:
        phase, _, encoder = _unpack(message)
        return _reply(message, _runtime(context, base).setup(phase, encoder))

    @app.train()
    def train(message: Message, context: Context) -> Message:
        phase, config, arrays = _unpack(message)
        updated, metrics = _runtime(context, base).train(
            phase, int(config[ConfigKey.ROUND]), arrays, proximal_mu=float(config.get(ConfigKey.PROXIMAL_MU, 0.0)))
        return _reply(message, metrics, updated)

    @app.evaluate()
    def evaluate(message: Message, context: Context) -> Message:
        phase, config, arrays = _unpack(message)
        return _reply(message, _runtime(context, base).evaluate(phase, arrays, str(config.get("split", "val"))))

    return app


app = build_app()
