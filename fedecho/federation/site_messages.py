"""A site's message handling: unpack each message of the coordinator, pass it through the gate
(deployed sites), run it on the site runtime, reply — and record both in the audit log.

``client/app.py`` is a thin Flower wrapper around :func:`handle`. Every exception at the site
becomes an error reply with a numeric code and a generic reason (:class:`fedecho.deploy.gate.Code`):
no path, id, file name or exception text leaves the site; the full detail goes to the site log
(``<state-dir>/site.log``) and the process log. The same holds in simulation.

Deployed node (node config has ``bundle-dir``): the gate verifies the run's signed grant, the
site's policy and the message's place in the signed plan before anything reads data; the site's
configuration comes from the verified grant and the site's own settings. Simulated node
(``partition-id``): the run config is the researcher's own, no gate.

Heavy imports (torch, the engine) happen inside the handlers.
"""

from __future__ import annotations

import logging
import traceback
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord, Context, Error, Message, MetricRecord, RecordDict

from fedecho.deploy.gate import Admitted, Code, SiteRefusal, Verdict
from fedecho.federation.contract import ARRAYS, CONFIG, METRICS, ConfigKey
from fedecho.federation.phases import Phase

__all__ = ["KINDS", "handle"]

log = logging.getLogger(__name__)

#: Flower message types the site answers, and the runtime call each one makes.
KINDS = ("query", "train", "evaluate")


def _header(message: Message) -> tuple[Phase, int, dict]:
    """(phase, round, config) of an instruction; no tensor is touched."""
    try:
        config = dict(message.content.config_records[CONFIG])
        phase = Phase.from_config(config)
        round_ = int(config.get(ConfigKey.ROUND, 0))
        if ARRAYS not in message.content.array_records:
            raise KeyError(ARRAYS)
    except (KeyError, TypeError, ValueError) as err:
        raise SiteRefusal(Code.MESSAGE, f"malformed message: {err!r}") from None
    return phase, round_, config


def _reply(message: Message, metrics: dict, arrays: dict | None = None) -> Message:
    from fedecho.federation.arrays import to_arrayrecord

    content = RecordDict({METRICS: MetricRecord(metrics)})
    if arrays is not None:
        content[ARRAYS] = to_arrayrecord(arrays) if arrays else ArrayRecord()
    return Message(content=content, reply_to=message)


def _simulated(context: Context, run_config: dict) -> Admitted:
    """A virtual site of a simulation (data.partition): the researcher's own run config."""
    from fedecho.config.compose import run_config_from_flower

    cfg, _ = run_config_from_flower(run_config)
    node = context.node_config
    index, count = int(node["partition-id"]), int(node["num-partitions"])
    state_dir = Path(cfg.federation.run_dir).resolve() / "sites" / f"site_{index}"
    return Admitted(cfg=cfg, data=cfg.data, site_index=index, state_dir=state_dir, num_sites=count)


def _state_root(node: dict) -> Path | None:
    """The deployed site's state folder (audit log, site log, per-run state)."""
    if node.get("state-dir"):
        return Path(str(node["state-dir"]))
    return Path(str(node["bundle-dir"])) / "state" if node.get("bundle-dir") else None


def _work(kind: str, message: Message, admitted: Admitted) -> Message:
    """Run one admitted message on the site runtime."""
    from fedecho.federation.arrays import torch_dict
    from fedecho.federation.site import get_runtime

    phase, round_, config = _header(message)
    arrays = torch_dict(message.content.array_records[ARRAYS])
    runtime = get_runtime(admitted.cfg, site_index=admitted.site_index, num_sites=admitted.num_sites,
                          state_dir=admitted.state_dir, data=admitted.data)
    if kind == "query":
        return _reply(message, runtime.setup(phase, arrays))
    if kind == "train":
        updated, metrics = runtime.train(phase, round_, arrays,
                                         proximal_mu=float(config.get(ConfigKey.PROXIMAL_MU, 0.0)))
        return _reply(message, metrics, updated)
    return _reply(message, runtime.evaluate(phase, arrays, str(config.get(ConfigKey.SPLIT, "val"))))


def _classify(exc: BaseException) -> tuple[int, str]:
    from fedecho.data.errors import EchoDataError

    if isinstance(exc, SiteRefusal):
        return exc.code, exc.reason
    code = Code.DATA if isinstance(exc, (EchoDataError, OSError)) else Code.INTERNAL
    return code, SiteRefusal(code, "").reason


def handle(kind: str, message: Message, context: Context, run_config: dict,
           mods: list | None = None) -> Message:
    """Answer one message of type ``kind`` (query | train | evaluate); never raises."""
    from flwr.client.mod.utils import make_ffn

    node = dict(context.node_config)
    deployed = "partition-id" not in node  # a SuperNode, not a virtual site of a simulation
    verdict = Verdict()
    entry: dict[str, Any] = {"run": int(message.metadata.run_id), "message": message.metadata.message_id,
                             "type": message.metadata.message_type, "phase": None, "round": None}
    where = _state_root(node) if deployed else None
    received = False
    try:
        phase, round_, config = _header(message)
        entry.update(phase=phase.name, round=round_)
        if deployed:
            from fedecho.deploy.gate import admit

            admitted = admit(dict(context.run_config), node, phase, round_, verdict, config)
        else:
            admitted = _simulated(context, {**run_config, **dict(context.run_config)})
            where = admitted.state_dir
        _audit(where, "received", entry, verdict, message)
        received = True
        reply = make_ffn(lambda m, c: _work(kind, m, admitted), list(mods or []))(message, context)
    except Exception as exc:  # every failure becomes a coded reply; its detail stays here
        code, reason = _classify(exc)
        detail = exc.detail if isinstance(exc, SiteRefusal) else "".join(traceback.format_exception(exc))
        log.error("site: %s %s refused/failed (%s): %s", entry["type"], entry["phase"], reason, detail)
        if where is not None:
            from fedecho.deploy.audit import site_log

            try:
                site_log(where, f"run {entry['run']} {entry['type']} {entry['phase']} round {entry['round']}: "
                                f"{reason}\n{detail}")
            except OSError:
                log.exception("site: cannot write the site log in %s", where)
        if not received:
            _audit(where, "received", entry, verdict, message)
        reply = Message(Error(code=code, reason=reason), reply_to=message)
    _audit(where, "sent", entry, verdict, reply)
    return reply


def _audit(where: Path | None, event: str, entry: dict, verdict: Verdict, message: Message) -> None:
    if where is None:
        return
    from fedecho.deploy.audit import append, content_summary

    try:
        append(where, {"event": event, **entry, "signature": verdict.signature, "policy": verdict.policy,
                       **content_summary(message)})
    except OSError:
        log.exception("site: cannot write the audit log in %s", where)
