"""Benchmark ``deploy-round``: a deployed round vs the same round simulated, and where a deployed
round's time goes.

Setting: the deployment tests' tiny run (view classification, ResNet with one block per stage at
32 px, LoRA adapter, batch 8, one torch thread per site, CPU), 3 adapt rounds, two sites of 8
synthetic CAMUS patients each. Deployed: a real SuperLink (TLS, SuperNode authentication) and two
``fedecho-client start`` sites (SuperNode + warm site worker) on 127.0.0.1, the run submitted with
``fedecho-server run``. Simulated: ``fedecho simulate`` of the same overrides with 2 virtual sites
(IID halves of 16 patients made by the same generator), 1 CPU each on Ray. Both sides read their
round times from their ``history.json``; the row is the median deployed / simulated wall time of
rounds 2-3 (round 1 builds the model and loaders on either side). Repetitions alternate sides.

Where a deployed round's time goes (details, medians over rounds 2-3 and both sites), from the
sites' ``worker.jsonl``: ``queue_s`` (the coordinator creates the message -> the SuperNode sees
it and downloads its tensors object by object from the SuperLink -> the SuperNode rings the task
bell and the worker claims it), ``pull_s`` (the worker reads the message and its tensors from its
SuperNode's memory), ``app_s`` (the ClientApp: training or evaluation), ``push_s`` (the reply to
the SuperNode), each summed over the round's train and evaluate messages of the slower site;
``coordinator_s`` is the rest of the round (the reply's way SuperNode -> SuperLink ->
coordinator, validation, aggregation, checkpoint). ``objects_per_message``: the most Flower objects
a train message or its reply travelled as (each is one HTTP call at every hop; the tensors travel
packed, see fedecho.deploy.packing).

CPU seconds per round (details ``cpu_s_per_round_*``, rounds 2-3, in the note for the last run of
each side) by role: the SuperLink, gateway, ServerApp, SuperExec, SuperNodes, site workers and
Flower CLI processes of a deployed run; this process (the simulation's driver and ServerApp) and
Ray's processes of a simulated one (:class:`CpuMeter` snapshots every process under this one each
time the run's ``history.json`` gains a round). On a machine with few cores a deployed round is
CPU-bound, and this is where its CPU goes. The deployed federation idles beside the simulated runs.

Full mode adds two rows:

- the issue's own reference configuration: the README "Deploy" recipe's run
  (``model.image_size=64 task.image_size=[64,64] task.classes=[A4C,A2C]``, the default model:
  ResNet-18 with a LoRA adapter), on the same sites and the same simulated data as the tiny row,
  with one torch thread per site and the CPU on both sides (:data:`REFERENCE`), deployed vs
  simulated, rounds 2-3 as above, ``reps`` runs per side alternating;
- the old path, once: the same sites with Flower's stock per-message ``flwr-clientapp`` process
  (``--isolation subprocess``), the "before" number.

Data: each deployed site reads its own 8 synthetic patients (seeds 1 and 2, scanner styles A and
B); the simulation splits 16 patients of the same generator (mixed styles) into 2 IID virtual
sites of 8: the same amount and kind of data per site, not the same files.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from fedecho.bench.common import BenchOptions, Goal, Row, summarize

__all__ = ["DEPLOY_GOAL", "REFERENCE", "TINY", "round_breakdown", "run"]

DEPLOY_GOAL = Goal("<=", 1.3)
SITES = ("A", "B")
PATIENTS_PER_SITE = 8
TINY = ["model.image_size=32", "task.image_size=[32,32]", "model.overrides={layers:[1,1,1,1]}",
        "task.classes=[A4C,A2C]", "train.batch_size=8", "train.threads=1", "train.device=cpu"]
#: The README "Deploy" recipe's run (issue #11's reference: the default model at 64 px), with one
#: torch thread per site and the CPU on both sides.
REFERENCE = ["model.image_size=64", "task.image_size=[64,64]", "task.classes=[A4C,A2C]", "train.threads=1",
             "train.device=cpu"]
ROUNDS = 3
TIMEOUT_S = 900


def _cli(module: str, *args: Any) -> list[str]:
    return [sys.executable, "-m", f"fedecho.cli.{module}", *map(str, args)]


def _adapt_seconds(run_dir: Path) -> dict[int, float]:
    history = json.loads((run_dir / "history.json").read_text())
    return {int(r["round"]): float(r["seconds"]) for r in history if r["phase"].startswith("adapt")}


def round_breakdown(records_by_site: dict[str, list[dict]], round_seconds: dict[int, float],
                    rounds: tuple[int, ...] = (2, 3)) -> dict[str, float]:
    """Where the deployed rounds' time went (see the module doc), medians over ``rounds``."""
    parts = ("queue_s", "pull_s", "app_s", "push_s")
    per_round: dict[str, list[float]] = {p: [] for p in (*parts, "coordinator_s")}
    for round_ in rounds:
        totals = []
        for records in records_by_site.values():
            mine = [r for r in records if r.get("round") == str(round_) and r.get("type") in ("train", "evaluate")]
            totals.append({"queue_s": sum(r.get("waited_s", 0.0) for r in mine),
                           **{p: sum(r.get(p, 0.0) for r in mine) for p in parts[1:]}})
        slowest = max(totals, key=lambda t: sum(t.values()))
        for part in parts:
            per_round[part].append(slowest[part])
        per_round["coordinator_s"].append(max(0.0, round_seconds[round_] - sum(slowest.values())))
    return {k: round(statistics.median(v), 3) for k, v in per_round.items() if v}


class _Federation:
    """A SuperLink and its sites for the whole benchmark (see the module doc)."""

    def __init__(self, root: Path) -> None:
        from fedecho.data.synthetic import synthesize
        from fedecho.deploy.federation import init_federation
        from fedecho.deploy.sites import add_site, init_site

        self.root = root
        self.fed = init_federation(root / "fed")
        for site in SITES:  # the README's key flow: the site makes its keys, the coordinator registers site.pub
            init_site(self.site_folder(site), site)
            add_site(self.fed, site, self.site_folder(site) / "site.pub")
            for path in self.fed.bundle(site).iterdir():
                (self.site_folder(site) / path.name).write_bytes(path.read_bytes())
        for seed, site in enumerate(SITES):
            synthesize("camus", root / f"data_{site}", patients=PATIENTS_PER_SITE, seed=seed + 1,
                       style=f"site_{site.lower()}", image_size=64)
        synthesize("camus", root / "data_pooled", patients=PATIENTS_PER_SITE * len(SITES), seed=1, style="mixed",
                   image_size=64)
        self.processes: list[Any] = []

    def site_folder(self, site: str) -> Path:
        return self.root / f"site_{site}"

    def start_superlink(self) -> str:
        from fedecho.deploy.process import ManagedProcess, flower_env, free_port

        port = free_port()
        server = ManagedProcess("fedecho-server start", _cli("server", "start", "--dir", self.fed.root, "--host",
                                                             "127.0.0.1", "--port", port),
                                env=flower_env(), log_path=self.root / "superlink.log")
        self.processes.append(server)
        _wait(lambda: "SuperLink ready" in server.tail(100_000), 180, server)
        return f"127.0.0.1:{port}"

    def start_sites(self, superlink: str, *, warm: bool, tag: str) -> list[Any]:
        from fedecho.deploy.federation import load_bundle
        from fedecho.deploy.process import ManagedProcess, flower_env, free_port
        from fedecho.deploy.supernode import supernode_command

        sites = []
        for site in SITES:
            data, state = self.root / f"data_{site}", self.root / f"state_{tag}" / site
            if warm:  # the site operator's command
                command = _cli("client", "start", "--bundle", self.site_folder(site), "--superlink", superlink,
                               "--data", data, "--format", "camus", "--port", free_port(), "--state-dir", state,
                               "--device", "cpu")
            else:  # Flower's stock path: one flwr-clientapp process per message
                state.mkdir(parents=True, exist_ok=True)
                command = supernode_command(load_bundle(self.site_folder(site)), superlink=superlink, data_root=data,
                                            data_format="camus", state_dir=state, port=free_port(), device="cpu",
                                            idle_poll=None)
            process = ManagedProcess(f"site {site} ({tag})", command, env=flower_env(self.root / f"flwr_home_{site}"),
                                     log_path=self.root / f"site_{site}_{tag}.log")
            self.processes.append(process)
            sites.append(process)
        for process in sites:
            _wait(lambda p=process: "SuperNode ID" in p.tail(100_000), 180, process)
        return sites

    def run(self, name: str, overrides: list[str] = TINY) -> Path:  # noqa: B006 - never mutated
        run_dir = self.root / "runs" / name
        result = subprocess.run(_cli("server", "run", "federated", *overrides, f"federation.adapt.rounds={ROUNDS}",
                                     "--dir",
                                     self.fed.root, "--run-dir", run_dir, "--timeout", TIMEOUT_S),
                                capture_output=True, text=True, timeout=TIMEOUT_S + 60, check=False,
                                env={**os.environ, "FLWR_TELEMETRY_ENABLED": "0"})
        if result.returncode != 0:
            raise RuntimeError(f"deployed run {name} failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
        return run_dir

    def stop(self, processes: list[Any] | None = None) -> None:
        for process in reversed(processes if processes is not None else self.processes):
            process.stop()


#: Processes by what they are (first match of a piece of their command line), for :class:`CpuMeter`.
CPU_ROLES = (("fedecho.deploy.superlink", "SuperLink"), ("flower-superlink", "SuperLink"),
             ("fedecho.deploy.gateway", "gateway"), ("flwr-serverapp", "ServerApp"),
             ("flower-superexec", "SuperExec"), ("fedecho.deploy.supernode", "SuperNodes"),
             ("flower-supernode", "SuperNodes"), ("fedecho.deploy.worker", "site workers"),
             ("flwr-clientapp", "site workers"), ("bin/flwr ", "flwr CLI"), ("ray::", "Ray"), ("ray/", "Ray"))


#: The roles of a simulated run's processes (the deployed federation idles beside it in this bench).
SIMULATION_ROLES = frozenset({"bench process (simulation driver)", "Ray"})


def cpu_role(cmdline: str, *, own: bool = False) -> str:
    """What a process is, from its command line (``own``: this process, which runs simulations)."""
    if own:
        return "bench process (simulation driver)"
    return next((role for piece, role in CPU_ROLES if piece in cmdline), "other")


def cpu_per_round(snapshots: dict[int, dict[int, tuple[str, float]]], first: int, last: int) -> dict[str, float]:
    """CPU seconds per round by role over rounds ``first+1 .. last``: ``snapshots[n]`` holds
    {pid: (role, cumulative CPU s)} taken when round ``n`` ended; a process missing from the
    earlier snapshot (started in between) counts from zero, one gone by the later is left out."""
    before, after = snapshots[first], snapshots[last]
    totals: dict[str, float] = {}
    for pid, (role, cpu) in after.items():
        used = cpu - before.get(pid, (role, 0.0))[1]
        totals[role] = totals.get(role, 0.0) + used / (last - first)
    return {role: round(v, 3) for role, v in sorted(totals.items(), key=lambda kv: -kv[1]) if v >= 0.0005}


class CpuMeter:
    """CPU seconds of this process and all its descendants, by role, snapshotted each time the
    run's ``history.json`` gains an adapt round (a thread looks every ``poll_s`` seconds)."""

    def __init__(self, history: Path, poll_s: float = 0.05) -> None:
        import threading

        self.history, self.poll_s = history, poll_s
        self.snapshots: dict[int, dict[int, tuple[str, float]]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="cpu-meter", daemon=True)

    def __enter__(self) -> CpuMeter:
        self.snapshots[0] = self.snapshot()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @staticmethod
    def snapshot() -> dict[int, tuple[str, float]]:
        import psutil

        me = psutil.Process()
        seen: dict[int, tuple[str, float]] = {}
        for process in [me, *me.children(recursive=True)]:
            try:
                times = process.cpu_times()
                seen[process.pid] = (cpu_role(" ".join(process.cmdline()), own=process.pid == me.pid),
                                     times.user + times.system)
            except psutil.Error:  # gone meanwhile
                continue
        return seen

    def _rounds(self) -> int:
        try:
            return sum(1 for r in json.loads(self.history.read_text()) if r["phase"].startswith("adapt"))
        except (OSError, ValueError, KeyError, TypeError):
            return len(self.snapshots) - 1

    def _watch(self) -> None:
        while not self._stop.wait(self.poll_s):
            rounds = self._rounds()
            if rounds not in self.snapshots:
                self.snapshots[rounds] = self.snapshot()

    def per_round(self, first: int = 1, last: int = ROUNDS) -> dict[str, float]:
        """CPU seconds per round by role over rounds ``first+1 .. last`` (rounds 2-3 by default)."""
        if first not in self.snapshots or last not in self.snapshots:
            return {}
        return cpu_per_round(self.snapshots, first, last)


def _wait(predicate, timeout: float, process) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if process.poll() is not None:
            raise RuntimeError(f"{process.name} exited ({process.poll()}):\n{process.tail()}")
        time.sleep(0.5)
    raise TimeoutError(f"{process.name} not ready after {timeout:.0f} s:\n{process.tail()}")


def _simulated(root: Path, name: str, overrides: list[str] = TINY) -> dict[int, float]:  # noqa: B006
    from fedecho.federation.simulation import simulate

    run_dir = root / "sim" / name
    simulate("federated", [*overrides, "data.format=camus", f"data.root={root / 'data_pooled'}",
                           f"federation.num_sites={len(SITES)}", f"federation.adapt.rounds={ROUNDS}",
                           "federation.central_eval=false", f"federation.run_dir={run_dir}"],
             total_cpus=len(SITES))
    return _adapt_seconds(run_dir)


def _later(rounds: dict[int, float]) -> float:
    return statistics.median(rounds[r] for r in rounds if r >= 2)


def _cpu_text(runs: list[dict[str, float]]) -> str:
    last = next((r for r in reversed(runs) if r), None)
    if last is None:
        return "n/a"
    return f"{sum(last.values()):.2f} (" + ", ".join(f"{role} {v:.2f}" for role, v in last.items()) + ")"


def _reference_row(federation: _Federation, root: Path, reps: int) -> Row:
    """The README recipe's configuration (:data:`REFERENCE`), deployed and simulated ``reps`` times
    each, the sides alternating as for the tiny row."""
    deployed, simulated, deployed_rounds, simulated_rounds = [], [], [], []
    for rep in range(reps):
        for side in (("deployed", "simulated") if rep % 2 == 0 else ("simulated", "deployed")):
            if side == "deployed":
                seconds = _adapt_seconds(federation.run(f"reference{rep}", REFERENCE))
                deployed.append(_later(seconds))
                deployed_rounds.append({str(k): round(v, 2) for k, v in seconds.items()})
            else:
                seconds = _simulated(root, f"reference{rep}", REFERENCE)
                simulated.append(_later(seconds))
                simulated_rounds.append({str(k): round(v, 2) for k, v in seconds.items()})
    ratios = [d / s for d, s in zip(deployed, simulated, strict=True)]
    return Row(
        "README recipe (64 px, default model), warm site worker, rounds 2-3", "deployed / simulated round wall time",
        "ratio", summarize(ratios), DEPLOY_GOAL,
        details={"overrides": REFERENCE, "deployed_round_s": summarize(deployed).as_dict(),
                 "simulated_round_s": summarize(simulated).as_dict(),
                 "deployed_rounds_s": deployed_rounds, "simulated_rounds_s": simulated_rounds},
        note=(f"deployed {statistics.median(deployed):.2f} s vs simulated {statistics.median(simulated):.2f} s per "
              f"round (medians of {reps} run(s) per side, sides alternating)"))


def run(options: BenchOptions) -> list[Row]:
    from fedecho.deploy.worker import read_worker_log

    reps = options.repetitions(2, quick=1)
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="fedecho-bench-deploy-") as tmp:
        root = Path(tmp)
        federation = _Federation(root)
        try:
            superlink = federation.start_superlink()
            warm_sites = federation.start_sites(superlink, warm=True, tag="warm")
            deployed, simulated, breakdowns, rounds_seen = [], [], [], []
            cpu_deployed: list[dict[str, float]] = []
            cpu_simulated: list[dict[str, float]] = []
            for rep in range(reps):
                for side in (("deployed", "simulated") if rep % 2 == 0 else ("simulated", "deployed")):
                    if side == "simulated":
                        with CpuMeter(root / "sim" / f"sim{rep}" / "history.json") as meter:
                            simulated.append(_later(_simulated(root, f"sim{rep}")))
                        cpu_simulated.append({k: v for k, v in meter.per_round().items() if k in SIMULATION_ROLES})
                        continue
                    with CpuMeter(root / "runs" / f"warm{rep}" / "history.json") as meter:
                        run_dir = federation.run(f"warm{rep}")
                    cpu_deployed.append({k: v for k, v in meter.per_round().items() if k not in SIMULATION_ROLES})
                    seconds = _adapt_seconds(run_dir)
                    deployed.append(_later(seconds))
                    rounds_seen.append({str(k): round(v, 2) for k, v in seconds.items()})
                    run_id = json.loads((run_dir / "submission.json").read_text())["run_ids"][-1]
                    records = {site: [r for r in read_worker_log(root / "state_warm" / site) if r["run"] == run_id]
                               for site in SITES}
                    objects = [max(r.get("objects_in", 0), r.get("objects_out", 0))
                               for site_records in records.values() for r in site_records if r.get("type") == "train"]
                    breakdowns.append({**round_breakdown(records, seconds),
                                       "objects_per_message": max(objects, default=0)})
            pids = {site: sorted({r["pid"] for r in read_worker_log(root / "state_warm" / site)}) for site in SITES}
            reference = None if options.quick else _reference_row(federation, root, reps)
            federation.stop(warm_sites)
            ratios = [d / s for d, s in zip(deployed, simulated, strict=True)]
            last = breakdowns[-1]
            rows.append(Row(
                "warm site worker, rounds 2-3", "deployed / simulated round wall time", "ratio", summarize(ratios),
                DEPLOY_GOAL,
                details={"deployed_round_s": summarize(deployed).as_dict(),
                         "simulated_round_s": summarize(simulated).as_dict(), "breakdown": last,
                         "deployed_rounds_s": rounds_seen, "worker_pids": pids,
                         "cpu_s_per_round_deployed": cpu_deployed, "cpu_s_per_round_simulated": cpu_simulated},
                note=(f"deployed {statistics.median(deployed):.2f} s vs simulated {statistics.median(simulated):.2f} s "
                      f"per round; a deployed round: queue and tensors to the SuperNode {last['queue_s']} s, "
                      f"read by the worker {last['pull_s']} s, "
                      f"app {last['app_s']} s, reply to the SuperNode {last['push_s']} s, reply to the coordinator "
                      f"+ aggregation {last['coordinator_s']} s "
                      f"(slower site, train + evaluate); at most {last['objects_per_message']} Flower objects per "
                      f"train message or reply; one worker process per site: {pids}; CPU s per round (last run "
                      f"per side, on a machine with {os.cpu_count()} cores): deployed {_cpu_text(cpu_deployed)}, "
                      f"simulated {_cpu_text(cpu_simulated)}")))
            if reference is not None:
                rows.append(reference)
                stock_sites = federation.start_sites(superlink, warm=False, tag="stock")
                stock = _adapt_seconds(federation.run("stock"))
                federation.stop(stock_sites)
                ratio = _later(stock) / statistics.median(simulated)
                rows.append(Row(
                    "before: Flower's flwr-clientapp per message, rounds 2-3", "deployed / simulated round wall time",
                    "ratio", summarize([ratio]), DEPLOY_GOAL,
                    details={"deployed_rounds_s": {str(k): round(v, 2) for k, v in stock.items()},
                             "simulated_round_s": statistics.median(simulated)},
                    note=f"deployed {_later(stock):.2f} s per round with a fresh ClientApp process per message"))
        finally:
            federation.stop()
    return rows
