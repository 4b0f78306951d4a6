"""The site's gate: what a deployed site checks before any of its code touches data.

For every message to a deployed node (its node config names ``bundle-dir``):

1. the run's grant verifies with the coordinator's ``run_signing.pub`` from the site's own folder,
   and the unsigned run config adds nothing to it (:mod:`fedecho.deploy.signing`);
2. the grant names this site's installed FedEcho (app id and version): the site runs its own code;
3. the grant's overrides name no path on the site (weights or init files, output or state folders,
   data roots): the coordinator's ``federation.run_dir`` alone passes, only to name the site's
   per-run state folder;
4. the configuration composed from the grant alone (never from unsigned values) obeys the site's
   policy (:mod:`fedecho.deploy.policy`), and the message's unsigned instructions (phase, round,
   local epochs/steps, lr, proximal-mu, split) are what the signed run plans;
5. the site's own data settings (node config + ``[policy.data]``) replace the run's.

A failed check raises :class:`SiteRefusal`: a code and a reason without site paths or ids (it is
sent to the coordinator) plus the full detail (kept in the site log).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import re
import shlex
import typing
from dataclasses import dataclass
from pathlib import Path

from fedecho.config.data import DataConfig, PartitionConfig
from fedecho.config.run import RunConfig
from fedecho.deploy.policy import SitePolicy, load_policy, read_site_toml
from fedecho.deploy.signing import (
    GRANT_KEY,
    SIGNATURE_KEY,
    RunGrant,
    SignatureError,
    load_public_key,
    verify_run_config,
)
from fedecho.federation.contract import ConfigKey
from fedecho.federation.phases import Phase, plan_phases

__all__ = ["Admitted", "Code", "SiteRefusal", "Verdict", "admit", "installed_app", "path_keys",
           "path_overrides", "policy_violations"]

APP_ID = "fedecho/fedecho"  # Flower's fab_id of FedEcho: "<publisher>/<project name>"
#: Run-config keys a signed run may carry; anything else set is unsigned and refused.
_SIGNED_KEYS = ("experiment", "overrides", "resume", GRANT_KEY, SIGNATURE_KEY)
#: Path-typed setting that only names the coordinator's run folder (the site derives a folder name).
RUN_DIR_KEY = "federation.run_dir"
_CONFIG_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")  # an experiment is a config name in conf/, not a path
_PATH_FIELD = re.compile(r"(^|_)(root|dir|path|file|weights|init|checkpoint)$")


class Code:
    """Error codes of a site's replies (Flower's own codes are 0-8)."""

    INTERNAL = 4000     # anything unexpected at the site
    DATA = 4001         # the site's data could not be read
    POLICY = 4002       # the run breaks the site's policy (the reason names the rule)
    SIGNATURE = 4003    # unsigned, wrongly signed or tampered run
    FOREIGN_APP = 4004  # the grant names another app than the site's installed FedEcho
    CONFIG = 4005       # the signed configuration does not compose at the site
    MESSAGE = 4006      # malformed message, or one that is not part of the signed run


#: The generic reason of each code; a policy refusal appends its rule (no site paths or ids).
REASONS = {
    Code.INTERNAL: "internal error at the site",
    Code.DATA: "data error at the site",
    Code.POLICY: "site policy refused the run",
    Code.SIGNATURE: "run signature invalid",
    Code.FOREIGN_APP: "run is not for this site's installed FedEcho",
    Code.CONFIG: "run configuration invalid at the site",
    Code.MESSAGE: "message malformed or not part of the signed run",
}


class SiteRefusal(Exception):
    """A refused message: ``code``, the public ``reason`` and the site-only ``detail``."""

    def __init__(self, code: int, detail: str, rule: str = "") -> None:
        self.code, self.rule, self.detail = code, rule, detail
        super().__init__(detail)

    @property
    def reason(self) -> str:
        return f"site error {self.code}: {REASONS[self.code]}" + (f": {self.rule}" if self.rule else "")


@dataclass
class Verdict:
    """What the gate decided so far (written to the audit log, refused or not)."""

    signature: str = "not-checked"  # not-checked (simulation) | valid | invalid
    policy: str = "not-checked"     # not-checked | allowed | refused: <rule>


@dataclass(frozen=True)
class Admitted:
    """A message the gate let through: the site's configuration for it and where its state goes."""

    cfg: RunConfig
    data: DataConfig
    site_index: int
    state_dir: Path
    grant: RunGrant | None = None  # None: a simulated site (no gate)
    num_sites: int = 1


@functools.cache
def installed_app() -> tuple[str, str]:
    """(app id, version) of the FedEcho installed here; a grant must name exactly these."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return APP_ID, version("fedecho")
    except PackageNotFoundError:
        return APP_ID, ""


def path_keys(cls: type = RunConfig, prefix: str = "") -> set[str]:
    """Dotted names of every setting in the schema that names a file or folder (by its field name:
    root, *_dir, path, file, weights, init, checkpoint) — new ones are found without a list to keep."""
    keys: set[str] = set()
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        sub = hints[f.name]
        if dataclasses.is_dataclass(sub):
            keys |= path_keys(sub, f"{prefix}{f.name}.")
        elif _PATH_FIELD.search(f.name) and "str" in str(sub):
            keys.add(f"{prefix}{f.name}")
    return keys


def path_overrides(overrides: list[str]) -> list[str]:
    """The override keys that would make the site use a path the coordinator chose: path-typed
    settings, Hydra's own settings, config-group choices or values that look like a path."""
    named = path_keys()
    bad = []
    for override in overrides:
        key, _, value = override.partition("=")
        key = key.lstrip("+~")
        if key == RUN_DIR_KEY:
            continue
        if (key in named or key.split(".")[0] == "hydra" or "/" in value or "\\" in value
                or value.strip("'\"").startswith(("~", "."))):
            bad.append(key)
    return bad


def policy_violations(policy: SitePolicy, experiment: str, cfg: RunConfig) -> list[str]:
    """Every rule of ``policy`` the run (experiment + composed config) breaks, as refusal texts."""
    out = []
    fed, privacy = cfg.federation, cfg.federation.privacy
    if policy.experiments is not None and experiment not in policy.experiments:
        out.append(f"experiment {experiment!r} is not in experiments={list(policy.experiments)}")
    if policy.tasks is not None:
        extra = [t for t in fed.tasks if t not in policy.tasks] if fed.adapt.rounds > 0 else []
        if extra:
            out.append(f"tasks {extra} are not in tasks={list(policy.tasks)}")
    kinds = {p.kind for p in plan_phases(cfg)}
    refused = [k for k in ("pretrain", "adapt", "evaluate") if k in kinds and k not in policy.phases]
    if refused:
        out.append(f"phases {refused} are not in phases={list(policy.phases)}")
    if policy.max_rounds is not None:
        for name, phase in (("pretrain", fed.pretrain), ("adapt", fed.adapt)):
            if phase.rounds > policy.max_rounds:
                out.append(f"max-rounds={policy.max_rounds} < {phase.rounds} requested (federation.{name}.rounds)")
    if policy.needs_dp and privacy.mode != "sample":
        out.append(f"DP-SGD required (dp-required / max-epsilon / min-noise-multiplier) but "
                   f"federation.privacy.mode={privacy.mode}")
    if policy.needs_dp and privacy.mode == "sample":
        if policy.max_epsilon is not None and (privacy.target_epsilon is None
                                               or privacy.target_epsilon > policy.max_epsilon):
            out.append(f"max-epsilon={policy.max_epsilon:g} < {privacy.target_epsilon or 'unbounded'} requested "
                       f"(federation.privacy.target_epsilon)")
        if policy.min_noise_multiplier is not None and privacy.noise_multiplier < policy.min_noise_multiplier:
            out.append(f"min-noise-multiplier={policy.min_noise_multiplier:g} > {privacy.noise_multiplier:g} "
                       f"requested (federation.privacy.noise_multiplier)")
    return out


@functools.lru_cache(maxsize=8)
def _compose(experiment: str, overrides: tuple[str, ...]) -> RunConfig:
    from fedecho.config.compose import compose_run_config

    return compose_run_config(list(overrides), config_name=experiment)


def run_state_dir(root: str | Path, run_dir: str) -> Path:
    """A site keeps one state folder per run, named after the coordinator's run directory: a new
    run starts fresh, a resumed run (same run directory) finds its optimiser, heads and accountant.
    Only a sanitised name and a hash of the coordinator's path are used, never the path itself."""
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", Path(run_dir).name)[:60].lstrip(".") or "run"
    return Path(root) / f"{name}-{hashlib.sha256(run_dir.encode()).hexdigest()[:8]}"


def _verify(bundle: Path, run_config: dict, verdict: Verdict) -> RunGrant:
    try:
        key = load_public_key(bundle / "run_signing.pub")
    except SignatureError as err:
        verdict.signature = "invalid"
        raise SiteRefusal(Code.SIGNATURE, f"the site cannot verify runs: {err}") from None
    unsigned = sorted(k for k, v in run_config.items() if k not in _SIGNED_KEYS and v not in ("", None))
    try:
        if unsigned:
            raise SignatureError(f"run config sets unsigned keys {unsigned}")
        grant = verify_run_config(key, run_config)
    except SignatureError as err:
        verdict.signature = "invalid"
        raise SiteRefusal(Code.SIGNATURE, f"refused run: {err}") from None
    verdict.signature = "valid"
    if (grant.app_id, grant.app_version) != installed_app():
        raise SiteRefusal(Code.FOREIGN_APP, f"refused run: the grant names app {grant.app_id} {grant.app_version!r}; "
                                            f"this site runs {installed_app()[0]} {installed_app()[1]!r}")
    return grant


def admit(run_config: dict, node_config: dict, phase: Phase, round_: int, verdict: Verdict,
          message_config: dict | None = None) -> Admitted:
    """Check one message to a deployed node (see the module doc); ``verdict`` records each step.
    ``message_config``: the message's config record, whose unsigned values must fit the signed run."""
    if not node_config.get("bundle-dir"):
        verdict.signature = "invalid"
        raise SiteRefusal(Code.SIGNATURE, "the site cannot verify runs: its node config has no bundle-dir (start "
                                          "the site with `fedecho-client start --bundle DIR`)")
    bundle = Path(str(node_config["bundle-dir"]))
    grant = _verify(bundle, run_config, verdict)
    try:
        policy = load_policy(bundle)
    except (OSError, ValueError) as err:
        verdict.policy = "refused: site.toml unreadable"
        raise SiteRefusal(Code.POLICY, f"the site's policy cannot be read: {err}",
                          rule="the site's own policy file is invalid") from None
    overrides = shlex.split(grant.overrides)
    paths = path_overrides(overrides) + ([] if _CONFIG_NAME.match(grant.experiment) else ["experiment"])
    if paths:
        verdict.policy = f"refused: paths {paths}"
        rule = f"the run sets {', '.join(paths)}: paths on a site are the site's own"
        raise SiteRefusal(Code.POLICY, f"refused run: {rule}", rule=rule)
    try:
        cfg = _compose(grant.experiment, tuple(overrides))
    except (ValueError, FileNotFoundError) as err:
        raise SiteRefusal(Code.CONFIG, f"the signed configuration does not compose: {err}") from None
    broken = policy_violations(policy, grant.experiment, cfg)
    if broken:
        rule = "; ".join(broken)
        verdict.policy = f"refused: {rule}"
        raise SiteRefusal(Code.POLICY, f"refused run: site policy: {rule}", rule=f"site policy: {rule}")
    planned = {p.name: p for p in plan_phases(cfg)}
    extra = message_config or {}
    strategy = cfg.federation.strategy
    mu = float(extra.get(ConfigKey.PROXIMAL_MU, 0.0))
    if (planned.get(phase.name) != phase or not 0 <= round_ <= phase.rounds
            or mu not in (0.0, strategy.proximal_mu if strategy.name == "fedprox" else 0.0)
            or str(extra.get(ConfigKey.SPLIT, "val")) not in ("val", "test")):
        verdict.policy = "refused: message not in the signed run"
        raise SiteRefusal(Code.MESSAGE, f"message phase {phase} round {round_} (proximal-mu {mu}, split "
                                        f"{extra.get('split')!r}) is not in the signed run's plan "
                                        f"{list(planned.values())}")
    verdict.policy = "allowed"
    return _site_config(cfg, policy, node_config, grant)


def _site_config(cfg: RunConfig, policy: SitePolicy, node: dict, grant: RunGrant) -> Admitted:
    """The site's configuration: the signed run's, with the site's data and device."""
    if node.get("device"):
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, device=str(node["device"])))
    bundle = Path(str(node["bundle-dir"]))
    root = Path(str(node.get("state-dir") or bundle / "state"))
    # the decoded-data cache is the site's: in its state folder, shared by its runs, never the run's
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, cache_dir=str(root / "decoded")))
    try:
        data = dataclasses.replace(cfg.data, format=str(node["data-format"]), root=str(node["data-root"]),
                                   partition=PartitionConfig(), **policy.data.settings())
    except (KeyError, ValueError) as err:
        raise SiteRefusal(Code.CONFIG, f"the site's data settings are invalid: {err!r}") from None
    index = node.get("site-index")
    if index is None:
        settings = read_site_toml(bundle)
        index = settings.get("site", {}).get("index", settings.get("site-index", 0))
    return Admitted(cfg=cfg, data=data, site_index=int(index),
                    state_dir=run_state_dir(root, str(cfg.federation.run_dir)), grant=grant)
