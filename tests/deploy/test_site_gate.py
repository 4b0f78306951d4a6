"""The site's gate, policy, audit log and coded errors, in-process: the project's ClientApp is
called with real Flower Messages and a deployed node's Context (node config with ``bundle-dir``),
a site folder built here (site.toml + the coordinator's run_signing.pub) and tiny synthetic
CAMUS data."""

from __future__ import annotations

import json
import shlex
import time
import tomllib
from pathlib import Path

import pytest
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, Metadata, RecordDict

from client.app import build_app
from fedecho.deploy import gate
from fedecho.deploy.audit import content_summary, format_table, read_audit
from fedecho.deploy.policy import DEFAULT_POLICY_TOML, SitePolicy, load_policy
from fedecho.deploy.signing import RunGrant, generate_signing_keys, load_private_key, signed_run_config
from fedecho.federation.contract import ARRAYS, CONFIG, ConfigKey
from fedecho.federation.phases import plan_phases

TINY = ["model.image_size=32", "task.image_size=[32,32]", "model.overrides={layers:[1,1,1,1]}",
        "task.classes=[A4C,A2C]", "train.batch_size=8", "train.threads=1", "federation.adapt.rounds=2"]


def _write_site(root: Path, policy: str = "") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "site.toml").write_text(f'[site]\nname = "A"\nindex = 0\nsuperlink = "127.0.0.1:9093"\n\n{policy}')
    return root


@pytest.fixture(scope="module")
def coordinator_key(tmp_path_factory):
    private, public = generate_signing_keys(tmp_path_factory.mktemp("coordinator"))
    return load_private_key(private), public


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    from fedecho.data.synthetic import synthesize

    root = tmp_path_factory.mktemp("site_data") / "camus"
    synthesize("camus", root, patients=6, seed=1, style="site_a", image_size=32)
    return root


@pytest.fixture
def site(tmp_path, coordinator_key, data_root):
    """A site folder (policy from the test), its node config, and the signer of the coordinator."""
    _, public = coordinator_key
    folder = _write_site(tmp_path / "site")
    (folder / "run_signing.pub").write_bytes(public.read_bytes())
    node = {"bundle-dir": str(folder), "data-root": str(data_root), "data-format": "camus",
            "state-dir": str(tmp_path / "state"), "device": "cpu"}
    return folder, node


def _grant(overrides: list[str], run_dir: Path, **fields) -> RunGrant:
    return RunGrant(experiment=fields.pop("experiment", "federated"),
                    overrides=shlex.join([*overrides, f"federation.run_dir={run_dir}"]),
                    app_id=fields.pop("app_id", gate.APP_ID),
                    app_version=fields.pop("app_version", gate.installed_app()[1]),
                    **fields)


def _message(phase, kind: str, arrays: dict, round_: int = 0, **config) -> Message:
    values = {**phase.config(0), ConfigKey.ROUND: round_, **config}
    content = RecordDict({ARRAYS: ArrayRecord({k: v for k, v in arrays.items()}) if arrays else ArrayRecord(),
                          CONFIG: ConfigRecord(values)})
    metadata = Metadata(run_id=7, message_id=f"{kind}-{round_}", src_node_id=0, dst_node_id=1, reply_to_message_id="",
                        group_id=str(round_), created_at=time.time(), ttl=3600.0, message_type=kind)
    return Message(content=content, metadata=metadata)


def _call(node: dict, run_config: dict, message: Message) -> Message:
    context = Context(run_id=7, node_id=1, node_config=dict(node), state=RecordDict(), run_config=dict(run_config))
    return build_app()(message, context)


def _initial(cfg, task: str = "view"):
    """What the coordinator sends (as fedecho.federation.coordinator does): shared tensors, encoder."""
    from fedecho.engine.build import build_task_learner
    from fedecho.federation.arrays import to_arrayrecord

    learner = build_task_learner(cfg, task)
    encoder = {k.removeprefix("backbone.").replace(".base_layer.", "."): v for k, v in learner.state_dict().items()
               if k.startswith("backbone.") and "lora_" not in k}
    return to_arrayrecord(learner.shared_state_dict()), to_arrayrecord(encoder)


def _adapt_phase(overrides: list[str]):
    cfg = gate._compose("federated", tuple(overrides))
    return cfg, {p.name: p for p in plan_phases(cfg)}


@pytest.fixture
def no_data(monkeypatch):
    """Any attempt to read the site's data fails the test (the gate must refuse first)."""
    import fedecho.engine.data
    import fedecho.federation.site

    def forbidden(*args, **kwargs):
        raise AssertionError("site data was touched")

    monkeypatch.setattr(fedecho.engine.data, "load_site", forbidden)
    monkeypatch.setattr(fedecho.federation.site, "get_runtime", forbidden)


# --- policy file ----------------------------------------------------------------------------------
def test_policy_parses_every_rule_and_the_template():
    policy = SitePolicy.from_table(tomllib.loads(
        '[policy]\nexperiments = ["federated"]\ntasks = ["view"]\nphases = ["adapt", "evaluate"]\nmax-rounds = 5\n'
        'dp-required = true\nmax-epsilon = 8.0\nmin-noise-multiplier = 0.8\n'
        '[policy.data]\non-error = "raise"\nsplit-fractions = [0.6, 0.2, 0.2]\nsplit-seed = 3\n'
        'label-fraction = 0.5\nid-fallback = false\n')["policy"])
    assert policy.experiments == ("federated",) and policy.tasks == ("view",) and policy.max_rounds == 5
    assert policy.needs_dp and policy.max_epsilon == 8.0 and policy.min_noise_multiplier == 0.8
    assert policy.data.settings() == {"on_error": "raise", "split_fractions": (0.6, 0.2, 0.2), "split_seed": 3,
                                      "label_fraction": 0.5, "id_fallback": False}
    template = SitePolicy.from_table(tomllib.loads(DEFAULT_POLICY_TOML)["policy"])
    assert template.experiments == ("federated",) and not template.needs_dp


@pytest.mark.parametrize("text, words", [
    ('[policy]\nmax-round = 5\n', ["unknown key", "max-round", "max-rounds"]),
    ('[policy]\nmax-rounds = "5"\n', ["max-rounds", "integer"]),
    ('[policy]\nphases = ["train"]\n', ["phases", "train", "pretrain, adapt, evaluate"]),
    ('[policy]\ndp-required = 1\n', ["dp-required", "true or false"]),
    ('[policy.data]\non-error = "ignore"\n', ["on-error", "raise"]),
    ('[policy.data]\nsplit-fractions = [0.5, 0.5, 0.5]\n', ["split-fractions", "summing to 1"]),
    ('[policy.data]\nlabel-fraction = 0\n', ["label-fraction", "out of range"]),
    ('[policy\n', ["not valid TOML"]),
    ('[data]\non-error = "raise"\n', ["['on-error'] in [data] are not read", "[policy.data]"]),
])
def test_bad_policy_is_an_error_naming_the_file_and_key(tmp_path, text, words):
    _write_site(tmp_path, text)
    with pytest.raises(ValueError) as err:
        load_policy(tmp_path)
    assert str(tmp_path / "site.toml") in str(err.value)
    for word in words:
        assert word in str(err.value)


# --- rules ------------------------------------------------------------------------------------------
def test_every_path_typed_setting_is_found_and_refused():
    assert gate.path_keys() == {"data.root", "data.cache_dir", "model.weights", "init", "train.out_dir",
                                "federation.run_dir"}
    overrides = ["data.root=/data", "model.weights=w.pt", "++init=ckpt.pt", "train.out_dir=out", "hydra.run.dir=x",
                 "hydra.searchpath=[file:///etc]", "task.label_key=../x", "data=camus", "train.lr=0.1",
                 "federation.run_dir=/coordinator/runs/r1", "task.classes=[A4C,A2C]"]
    assert gate.path_overrides(overrides) == ["data.root", "model.weights", "init", "train.out_dir", "hydra.run.dir",
                                              "hydra.searchpath", "task.label_key"]


def test_policy_violations_name_each_rule():
    import dataclasses

    cfg = gate._compose("federated", tuple(TINY))
    fed = cfg.federation
    dp = dataclasses.replace(fed.privacy, mode="sample", target_epsilon=20.0, noise_multiplier=0.5)
    wide = dataclasses.replace(cfg, federation=dataclasses.replace(
        fed, tasks=("view", "lv_seg"), pretrain=dataclasses.replace(fed.pretrain, rounds=3),
        adapt=dataclasses.replace(fed.adapt, rounds=10)))
    strict = SitePolicy(experiments=("demo",), tasks=("view",), phases=("adapt", "evaluate"), max_rounds=5,
                        max_epsilon=8.0, min_noise_multiplier=1.0)
    found = gate.policy_violations(strict, "federated", wide)
    assert found == ["experiment 'federated' is not in experiments=['demo']",
                     "tasks ['lv_seg'] are not in tasks=['view']",
                     "phases ['pretrain'] are not in phases=['adapt', 'evaluate']",
                     "max-rounds=5 < 10 requested (federation.adapt.rounds)",
                     "DP-SGD required (dp-required / max-epsilon / min-noise-multiplier) but "
                     "federation.privacy.mode=none"]
    private = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, norm="group"),
                                  federation=dataclasses.replace(fed, privacy=dp))
    assert gate.policy_violations(SitePolicy(max_epsilon=8.0, min_noise_multiplier=1.0), "federated", private) == [
        "max-epsilon=8 < 20.0 requested (federation.privacy.target_epsilon)",
        "min-noise-multiplier=1 > 0.5 requested (federation.privacy.noise_multiplier)"]
    assert gate.policy_violations(SitePolicy(max_rounds=2, tasks=("view",)), "federated", cfg) == []


# --- refusals: nothing is read, the reply is coded, the site log and audit log have it -----------
def _refusal(site, run_config, code, tmp_path, message=None, rule=""):
    folder, node = site
    cfg, phases = _adapt_phase(TINY)
    reply = _call(node, run_config, message or _message(phases["adapt:view"], "query", {}))
    assert reply.has_error() and reply.error.code == code, reply.error
    assert reply.error.reason == f"site error {code}: {gate.REASONS[code]}" + (f": {rule}" if rule else "")
    state = Path(node["state-dir"])
    received, sent = read_audit(state)
    assert received["event"] == "received" and sent["event"] == "sent"
    assert sent["error"] == {"code": code, "reason": reply.error.reason} and sent["tensors"] == []
    assert str(tmp_path) not in reply.error.reason
    return received, (state / "site.log").read_text()


def test_unsigned_wrong_key_and_tampered_runs_are_refused_before_any_data(site, coordinator_key, tmp_path, no_data):
    key, _ = coordinator_key
    signed = signed_run_config(key, _grant(TINY, tmp_path / "run"))
    received, log = _refusal(site, {"experiment": "federated", "overrides": shlex.join(TINY)}, gate.Code.SIGNATURE,
                             tmp_path)
    assert received["signature"] == "invalid" and "not signed" in log

    other, _ = generate_signing_keys(tmp_path / "impostor")
    forged = signed_run_config(load_private_key(other), _grant(TINY, tmp_path / "run"))
    Path(site[1]["state-dir"], "audit.jsonl").unlink()
    _, log = _refusal(site, forged, gate.Code.SIGNATURE, tmp_path)
    assert "does not verify" in log

    Path(site[1]["state-dir"], "audit.jsonl").unlink()
    tampered = {**signed, "overrides": signed["overrides"] + " train.lr=10"}
    _, log = _refusal(site, tampered, gate.Code.SIGNATURE, tmp_path)
    assert "differs from the signed grant" in log

    Path(site[1]["state-dir"], "audit.jsonl").unlink()
    _, log = _refusal(site, {**signed, "train.lr": 10.0}, gate.Code.SIGNATURE, tmp_path)
    assert "unsigned keys ['train.lr']" in log

    Path(site[1]["state-dir"], "audit.jsonl").unlink()
    no_bundle = {k: v for k, v in site[1].items() if k != "bundle-dir"}
    _, log = _refusal((site[0], no_bundle), signed, gate.Code.SIGNATURE, tmp_path)
    assert "no bundle-dir" in log


def test_foreign_app_and_message_outside_the_plan_are_refused(site, coordinator_key, tmp_path, no_data):
    key, _ = coordinator_key
    foreign = signed_run_config(key, _grant(TINY, tmp_path / "run", app_id="mallory/app"))
    _, log = _refusal(site, foreign, gate.Code.FOREIGN_APP, tmp_path)
    assert "mallory/app" in log
    Path(site[1]["state-dir"], "audit.jsonl").unlink()
    signed = signed_run_config(key, _grant(TINY, tmp_path / "run"))
    _, phases = _adapt_phase(TINY)
    import dataclasses

    greedy = dataclasses.replace(phases["adapt:view"], local_epochs=50)  # not what the grant says
    _refusal(site, signed, gate.Code.MESSAGE, tmp_path, message=_message(greedy, "train", {}, round_=1))
    for bad in ({"round_": 3}, {ConfigKey.PROXIMAL_MU: 5.0}, {"split": "train"}):  # 2 rounds, fedavg, val/test
        Path(site[1]["state-dir"], "audit.jsonl").unlink()
        _refusal(site, signed, gate.Code.MESSAGE, tmp_path, message=_message(phases["adapt:view"], "train", {},
                                                                             **{"round_": 1, **bad}))


def test_policy_refusals_name_the_rule_and_never_the_path(site, coordinator_key, tmp_path, no_data):
    key, _ = coordinator_key
    folder, node = site
    _write_site(folder, "[policy]\nmax-rounds = 1\n")
    rule = "site policy: max-rounds=1 < 2 requested (federation.adapt.rounds)"
    received, log = _refusal(site, signed_run_config(key, _grant(TINY, tmp_path / "run")), gate.Code.POLICY,
                             tmp_path, rule=rule)
    assert received["signature"] == "valid" and received["policy"] == f"refused: {rule[len('site policy: '):]}"
    assert rule in log

    Path(node["state-dir"], "audit.jsonl").unlink()
    _write_site(folder, "")
    secret = "/srv/hospital/patient0042/weights.pt"
    rule = "the run sets model.weights: paths on a site are the site's own"
    _, log = _refusal(site, signed_run_config(key, _grant([*TINY, f"model.weights={secret}"], tmp_path / "run")),
                      gate.Code.POLICY, tmp_path, rule=rule)
    assert secret not in rule and "model.weights" in log

    Path(node["state-dir"], "audit.jsonl").unlink()
    rule = "the run sets experiment: paths on a site are the site's own"
    _refusal(site, signed_run_config(key, _grant(TINY, tmp_path / "run", experiment="../../etc/conf")),
             gate.Code.POLICY, tmp_path, rule=rule)


# --- an allowed run: the site's settings win; the audit log is exactly the wire -------------------
def test_allowed_run_uses_site_settings_and_audits_exactly_what_was_sent(site, coordinator_key, tmp_path):
    from fedecho.federation import site as site_module

    key, _ = coordinator_key
    folder, node = site
    _write_site(folder, '[policy]\nmax-rounds = 2\ntasks = ["view"]\n[policy.data]\non-error = "raise"\n'
                        'label-fraction = 0.5\n')
    run_config = signed_run_config(key, _grant([*TINY, "data.on_error=skip", "data.label_fraction=1.0"],
                                               tmp_path / "run"))
    cfg, phases = _adapt_phase([*TINY, f"federation.run_dir={tmp_path / 'run'}"])
    shared, encoder = _initial(cfg)
    phase = phases["adapt:view"]
    replies = [_call(node, run_config, _message(phase, "query", encoder, **{ConfigKey.SETUP: 1})),
               _call(node, run_config, _message(phase, "train", shared, round_=1)),
               _call(node, run_config, _message(phase, "evaluate", shared, round_=1))]
    assert not any(r.has_error() for r in replies), [r.error for r in replies if r.has_error()]
    runtime = next(iter(reversed(site_module._CACHE.values())))
    assert runtime.data_cfg.on_error == "raise" and runtime.data_cfg.label_fraction == 0.5  # the site's
    assert runtime.data_cfg.root == node["data-root"] and runtime.cfg.train.device == "cpu"
    assert str(runtime.state_dir).startswith(node["state-dir"]) and runtime.state_dir.name.startswith("run-")
    # the decoded-data cache lives in the site's state folder (shared by its runs), filled by this run
    decoded = Path(node["state-dir"]) / "decoded"
    assert runtime.cfg.data.cache_dir == str(decoded) and any(decoded.rglob("frames.npy"))

    entries = read_audit(node["state-dir"])
    assert [(e["event"], e["type"]) for e in entries] == [(ev, t) for t in ("query", "train", "evaluate")
                                                          for ev in ("received", "sent")]
    assert all(e["signature"] == "valid" and e["policy"] == "allowed" and e["run"] == 7 for e in entries)
    train_sent = entries[3]
    wire = replies[1].content
    assert {t["name"]: (tuple(t["shape"]), t["dtype"], t["bytes"]) for t in train_sent["tensors"]} == {
        name: (tuple(a.numpy().shape), str(a.numpy().dtype), a.numpy().nbytes)
        for name, a in wire.array_records[ARRAYS].items()}
    assert train_sent["metrics"] == dict(wire.metric_records["metrics"])
    assert list(wire.keys()) == ["metrics", "arrays"] and train_sent["round"] == 1
    assert entries[2]["tensors"] and entries[2]["metrics"] == {}  # what the coordinator sent
    assert entries[5]["tensors"] == [] and entries[5]["metrics"]["num-examples"] > 0
    assert json.loads(json.dumps(content_summary(replies[2]))) == {k: entries[5][k] for k in ("tensors", "metrics",
                                                                                               "error")}
    table = format_table(entries)
    assert len(table.splitlines()) == 1 + len(entries) and "train-loss=" in table


def test_audit_command_prints_the_log(tmp_path, capsys):
    from fedecho.cli.client import main
    from fedecho.deploy.audit import append

    state = tmp_path / "site" / "state"
    append(state, {"event": "received", "run": 3, "type": "train", "phase": "adapt:view", "round": 1,
                   "signature": "valid", "policy": "allowed",
                   "tensors": [{"record": "arrays", "name": "head.w", "shape": [2, 4], "dtype": "float32",
                                "bytes": 32}], "metrics": {}, "error": None})
    append(state, {"event": "sent", "run": 4, "type": "train", "phase": "adapt:view", "round": 1,
                   "signature": "valid", "policy": "allowed", "tensors": [],
                   "metrics": {"num-examples": 12.0}, "error": None})
    _write_site(tmp_path / "site")
    assert main(["audit", "--bundle", str(tmp_path / "site"), "--tensors"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:3] == ["time", "event", "run"] and len(out) == 4
    assert "1 tensors 32 B" in out[1] and "head.w (2, 4) float32 32 B" in out[2] and "num-examples=12" in out[3]
    assert main(["audit", "--state-dir", str(state), "--json", "--run", "4"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [json.loads(line)["run"] for line in lines] == [4]
    assert main(["audit", "--state-dir", str(tmp_path / "nowhere")]) == 2
    assert "audit.jsonl not found" in capsys.readouterr().err


def test_corrupt_file_becomes_a_coded_data_error_without_path_or_id(site, coordinator_key, tmp_path, data_root):
    import shutil

    key, _ = coordinator_key
    folder, node = site
    corrupt = tmp_path / "corrupt"
    shutil.copytree(data_root, corrupt)
    bad = sorted(corrupt.glob("database_nifti/patient*/*_4CH_ED.nii.gz"))[0]
    bad.write_bytes(b"not a NIfTI file")
    node["data-root"] = str(corrupt)
    _write_site(folder, '[policy.data]\non-error = "raise"\n')
    run_config = signed_run_config(key, _grant([*TINY, "data.on_error=skip"], tmp_path / "run2"))
    cfg, phases = _adapt_phase([*TINY, f"federation.run_dir={tmp_path / 'run2'}"])
    shared, encoder = _initial(cfg)
    phase = phases["adapt:view"]
    assert not _call(node, run_config, _message(phase, "query", encoder, **{ConfigKey.SETUP: 1})).has_error()
    reply = _call(node, run_config, _message(phase, "train", shared, round_=1))
    assert reply.has_error() and reply.error.code == gate.Code.DATA
    assert reply.error.reason == "site error 4001: data error at the site"
    patient = bad.parent.name
    log = Path(node["state-dir"], "site.log").read_text()
    assert patient in log and str(bad) in log  # the detail stays at the site
    sent = read_audit(node["state-dir"])[-1]
    assert sent["event"] == "sent" and sent["error"]["code"] == 4001 and patient not in json.dumps(sent)


def test_simulated_site_errors_are_coded_too(tmp_path):
    """A virtual site of a simulation has no gate, but its errors leave the same generic way."""
    cfg, phases = _adapt_phase(TINY)
    node = {"partition-id": 0, "num-partitions": 2}
    run_config = {"experiment": "federated",
                  "overrides": shlex.join([*TINY, "data.format=camus", f"data.root={tmp_path / 'missing'}",
                                           f"federation.run_dir={tmp_path / 'sim'}"])}
    _, encoder = _initial(cfg)
    phase = phases["adapt:view"]
    setup = _call(node, run_config, _message(phase, "query", encoder, **{ConfigKey.SETUP: 1}))
    assert not setup.has_error()
    shared, _ = _initial(cfg)
    reply = _call(node, run_config, _message(phase, "train", shared, round_=1))
    assert reply.has_error() and reply.error.code in (gate.Code.DATA, gate.Code.INTERNAL)
    assert "missing" not in reply.error.reason and str(tmp_path) not in reply.error.reason
    state = tmp_path / "sim" / "sites" / "site_0"
    assert "missing" in (state / "site.log").read_text()
    assert [e["event"] for e in read_audit(state)] == ["received", "sent"] * 2


def test_id_fallback_reaches_the_dicom_reader(tmp_path):
    """[policy.data] id-fallback -> data.id_fallback -> the DICOM reader (other formats refuse it)."""
    from fedecho.config.data import DataConfig
    from fedecho.data.base import open_reader

    assert open_reader("dicom", tmp_path, on_error="skip", id_fallback=True).id_fallback is True
    assert open_reader("dicom", tmp_path, on_error="skip").id_fallback is False
    with pytest.raises(ValueError, match="DICOM folders only"):
        open_reader("camus", tmp_path, id_fallback=True)
    with pytest.raises(ValueError, match="data.format=dicom only"):
        DataConfig(format="camus", root=str(tmp_path), id_fallback=True)
    assert DataConfig(format="dicom", root=str(tmp_path), id_fallback=True).id_fallback


def test_a_failing_mod_is_coded_and_audited_like_the_site_work(tmp_path):
    """Mods run inside the site's handling: their exceptions leave as generic coded errors too."""
    def leaky(message, context, call_next):
        raise RuntimeError(f"cannot open {tmp_path}/patient0042_4CH_ED.nii.gz")

    cfg, phases = _adapt_phase(TINY)
    run_config = {"experiment": "federated", "overrides": shlex.join([*TINY, f"federation.run_dir={tmp_path / 'sim'}"])}
    context = Context(run_id=7, node_id=1, node_config={"partition-id": 0, "num-partitions": 2}, state=RecordDict(),
                      run_config={})
    reply = build_app(run_config, mods=[leaky])(_message(phases["adapt:view"], "train", {}, round_=1), context)
    assert reply.has_error() and reply.error.code == gate.Code.INTERNAL
    assert reply.error.reason == "site error 4000: internal error at the site"
    state = tmp_path / "sim" / "sites" / "site_0"
    assert "patient0042" in (state / "site.log").read_text()
    assert "patient0042" not in (state / "audit.jsonl").read_text()
