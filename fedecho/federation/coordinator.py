"""The coordinator's side of a run: phases in order, each with a guarded Flower strategy, the frozen
encoder handed to sites at the start of each adapt phase, a checkpoint after every round, resume,
a final per-task evaluation, TensorBoard + JSON history and the report."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid

from fedecho.config.run import RunConfig, to_dict
from fedecho.federation import progress
from fedecho.federation.arrays import numpy_dict, to_arrayrecord, torch_dict
from fedecho.federation.contract import ARRAYS, CONFIG, ConfigKey, declare
from fedecho.federation.guarded import GuardedStrategy, site_name
from fedecho.federation.history import RoundRecord, RunHistory
from fedecho.federation.phases import Phase, plan_phases
from fedecho.federation.state import RunCheckpoint
from fedecho.federation.strategies import build_strategy, load_strategy_state, strategy_state
from fedecho.federation.weights import WeightPolicy

__all__ = ["Coordinator"]

log = logging.getLogger(__name__)


class Coordinator:
    def __init__(self, cfg: RunConfig, grid: Grid, *, resume: bool = False) -> None:
        self.cfg = cfg
        self.grid = grid
        self.run_dir = Path(cfg.federation.run_dir).resolve()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.phases = plan_phases(cfg)
        existing = RunCheckpoint.load(self.run_dir)
        if existing is not None and not resume:
            raise ValueError(f"{self.run_dir} already holds a run; resume it or choose another federation.run_dir")
        self.checkpoint = existing or RunCheckpoint(self.run_dir, config=to_dict(cfg))
        from fedecho.report.tensorboard import ScalarWriter

        self.history = RunHistory.load(self.run_dir / "history.json", ScalarWriter(self.run_dir / "tb"))
        # Rounds recorded after the last checkpoint are repeated on resume: forget them.
        done = set(self.checkpoint.finished)
        self.history.records = [r for r in self.history.records
                                if r.phase.split(":")[0] == "setup" or r.phase in done
                                or (r.phase == self.checkpoint.phase and r.round <= self.checkpoint.round)]
        (self.run_dir / "config.json").write_text(json.dumps(to_dict(cfg), indent=1, default=str))
        self.final: dict[str, dict[str, np.ndarray]] = {}

    # --- learners as the coordinator sees them (declarations and initial values) ---------------
    def _encoder_state(self) -> dict[str, torch.Tensor] | None:
        """The encoder the adapt phases freeze: the pretrain phase's result, else cfg.init, else None."""
        if "pretrain" in self.checkpoint.finished:
            from fedecho.engine.build import build_pretrain_learner

            learner = build_pretrain_learner(self.cfg)
            learner.load_shared_state_dict(torch_dict(to_arrayrecord(self.checkpoint.phase_arrays("pretrain"))))
            return {k: v.detach().clone() for k, v in learner.method.backbone.state_dict().items()}
        if self.cfg.init:
            from fedecho.engine.build import encoder_state_from_checkpoint

            return encoder_state_from_checkpoint(self.cfg.init)
        return None

    def _initial(self, phase: Phase) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor] | None]:
        """(declared tensors with their initial values, the encoder to hand out or None)."""
        from fedecho.engine.build import build_pretrain_learner, build_task_learner, load_encoder, plain_encoder_state

        if phase.kind == "pretrain":
            learner = build_pretrain_learner(self.cfg)
            if self.cfg.init:
                state = self._encoder_state()
                load_encoder(learner.method.backbone, state)
            return learner.shared_state_dict(), None
        encoder = self._encoder_state()
        learner = build_task_learner(self.cfg, phase.task, encoder_state=encoder)
        if encoder is None:  # hand out the coordinator's seeded initial encoder
            encoder = plain_encoder_state(learner.state_dict(), "backbone.")
        return learner.shared_state_dict(), encoder

    # --- running ----------------------------------------------------------------------------------
    def run(self) -> RunHistory:
        start = time.perf_counter()
        for phase in self.phases:
            if phase.name in self.checkpoint.finished:
                log.info("phase %s already finished (resume): skipped", phase.name)
                continue
            if phase.kind == "evaluate":
                self._evaluate_phase(phase)
            else:
                self._train_phase(phase)
        log.info("run finished in %.1f s; history in %s", time.perf_counter() - start, self.history.path)
        table = progress.final_table(self.history.records)
        if table:
            progress.emit("\nfinal evaluation (federated: the sites' test patients; central: the pooled test split)")
            for line in table:
                progress.emit(line)
        return self.history

    def _train_phase(self, phase: Phase) -> None:
        initial, encoder = self._initial(phase)
        declaration = declare({k: v.numpy() for k, v in initial.items()})
        done = self.checkpoint.round if self.checkpoint.phase == phase.name else 0
        strategy = build_strategy(self.cfg.federation.strategy, self.cfg.federation.privacy,
                                  num_sites=self.cfg.federation.num_sites)
        arrays = initial
        if done:
            arrays = torch_dict(to_arrayrecord(self.checkpoint.arrays()))
            load_strategy_state(strategy, self.checkpoint.strategy_state())
            log.info("resuming %s after round %d of %d", phase.name, done, phase.rounds)
        if done >= phase.rounds:
            self._finish_phase(phase, {k: v.numpy() for k, v in arrays.items()})
            return
        progress.emit(progress.phase_line(phase.name, rounds=phase.rounds, sites=self.cfg.federation.num_sites,
                                          strategy=self.cfg.federation.strategy.name, resumed_after=done))
        phase_config = phase.config(self.cfg.train.seed)
        guarded = GuardedStrategy(strategy, phase_name=phase.name, phase_config=phase_config,
                                  declaration=declaration, min_sites=self.cfg.federation.strategy.min_sites,
                                  max_update_norm=self.cfg.federation.strategy.max_update_norm, round_offset=done,
                                  connect_timeout=self.cfg.federation.strategy.round_timeout,
                                  weights=WeightPolicy.from_config(self.cfg.federation))
        if encoder is not None:
            self._hand_out_encoder(phase, encoder)

        def after_round(server_round: int, round_arrays: ArrayRecord) -> MetricRecord | None:
            if server_round == 0:
                return None
            record = guarded.finish_round()
            absolute = guarded.absolute(server_round)
            if record is not None:  # history first: a crash in between repeats the round on resume
                self.history.add(record)
                self._print_round(record)
            self.checkpoint.save_round(phase.name, absolute, numpy_dict(round_arrays), strategy_state(strategy))
            return None

        result = guarded.start(
            self.grid, to_arrayrecord(arrays), num_rounds=phase.rounds - done,
            timeout=self.cfg.federation.strategy.round_timeout,
            train_config=ConfigRecord(), evaluate_config=ConfigRecord(), evaluate_fn=after_round,
        )
        self._finish_phase(phase, numpy_dict(result.arrays))

    def _finish_phase(self, phase: Phase, arrays: dict[str, np.ndarray]) -> None:
        self.checkpoint.finish_phase(phase.name, arrays)
        self.final[phase.name] = arrays

    def _hand_out_encoder(self, phase: Phase, encoder: dict[str, torch.Tensor]) -> None:
        """Send the frozen encoder of ``phase`` to every connected site (a query message)."""
        nodes = list(self.grid.get_node_ids())
        content = RecordDict({ARRAYS: to_arrayrecord(encoder),
                              CONFIG: ConfigRecord({**phase.config(self.cfg.train.seed), ConfigKey.SETUP: 1})})
        messages = [Message(content=content, message_type=MessageType.QUERY, dst_node_id=n) for n in nodes]
        replies = list(self.grid.send_and_receive(messages, timeout=self.cfg.federation.strategy.round_timeout))
        ok = [r for r in replies if not r.has_error()]
        for reply in replies:
            if reply.has_error():
                log.warning("%s: %s did not take the encoder: %s", phase.name, site_name(reply), reply.error.reason)
        size = to_arrayrecord(encoder).count_bytes()
        self.history.add(RoundRecord(phase=f"setup:{phase.task}", round=0, bytes_sent=size * len(messages),
                                     sites_train={site_name(r): {} for r in ok}))
        if len(ok) < self.cfg.federation.strategy.min_sites:
            raise RuntimeError(f"{phase.name}: only {len(ok)} sites took the encoder; min-sites is "
                               f"{self.cfg.federation.strategy.min_sites}")

    def _evaluate_phase(self, phase: Phase) -> None:
        """Final federated evaluation of one task on every site's test patients (+ central)."""
        adapt = f"adapt:{phase.task}"
        arrays = self.final.get(adapt) or self.checkpoint.phase_arrays(adapt)
        strategy = build_strategy(self.cfg.federation.strategy, num_sites=self.cfg.federation.num_sites)
        guarded = GuardedStrategy(strategy, phase_name=phase.name,
                                  phase_config={**phase.config(self.cfg.train.seed), ConfigKey.SPLIT: "test"},
                                  declaration=declare(arrays), min_sites=self.cfg.federation.strategy.min_sites,
                                  connect_timeout=self.cfg.federation.strategy.round_timeout,
                                  weights=WeightPolicy.from_config(self.cfg.federation))
        guarded.current = RoundRecord(phase=phase.name, round=1)
        guarded._started = time.perf_counter()
        record = to_arrayrecord(arrays)
        messages = guarded.configure_evaluate(1, record, ConfigRecord(), self.grid)
        replies = self.grid.send_and_receive(messages, timeout=self.cfg.federation.strategy.round_timeout)
        guarded.aggregate_evaluate(1, replies)
        result = guarded.finish_round()
        if self.cfg.federation.central_eval:
            result.central = self._central_evaluation(phase, arrays)
        self.history.add(result)
        self._print_round(result)
        self.checkpoint.finish_phase(phase.name, arrays)

    def _central_evaluation(self, phase: Phase, arrays: dict[str, np.ndarray]) -> dict[str, float]:
        """The global model on the pooled test split (simulation: the coordinator can read the data).

        The same evaluation pass writes ``RUN_DIR/predictions/<task>.npz`` (see
        fedecho.engine.predictions): each test sample's site is the virtual site its patient
        belongs to. A prediction file that cannot be written is logged; the metrics stand.
        """
        from fedecho.engine.build import build_task_learner
        from fedecho.engine.data import load_site
        from fedecho.engine.loaders import task_loaders
        from fedecho.engine.predictions import partition_site_names, prediction_arrays, run_predictions
        from fedecho.engine.trainer import Trainer

        try:
            site = load_site(self.cfg.data)
        except (ValueError, FileNotFoundError) as err:
            log.info("no central evaluation: the coordinator cannot read the data (%s)", err)
            return {}
        learner = build_task_learner(self.cfg, phase.task, encoder_state=self._encoder_state() or
                                     self._initial(Phase(f"adapt:{phase.task}", "adapt", phase.task))[1])
        learner.load_shared_state_dict(torch_dict(to_arrayrecord(arrays)))
        loaders = task_loaders(self.cfg, site, learner.task, splits=("test",))
        if "test" not in loaders:
            return {}
        trainer = Trainer(learner, self.cfg.train, total_steps=1)
        run = run_predictions(trainer, loaders["test"])
        scores = learner.metrics(run.outputs, run.batch)  # == trainer.evaluate(loaders["test"])
        try:
            from fedecho.report.predictions import save_predictions

            sites = partition_site_names(self.cfg.data, self.cfg.federation.num_sites)
            path = save_predictions(self.run_dir / "predictions" / f"{phase.task}.npz",
                                    **prediction_arrays(learner.task, run, site_names=sites, seed=self.cfg.train.seed))
            log.info("%s: predictions of %d test samples in %s", phase.name, len(run.outputs), path)
        except (ValueError, TypeError) as err:
            log.warning("%s: no prediction file (%s: %s)", phase.name, type(err).__name__, err)
        return {k: float(v) for k, v in scores.items() if isinstance(v, (int, float))}

    def _print_round(self, record: RoundRecord) -> None:
        """One progress line on the terminal (the full record is in history.json and TensorBoard)."""
        rounds = next((p.rounds for p in self.phases if p.name == record.phase and p.kind != "evaluate"), None)
        progress.emit(progress.round_line(record, rounds=rounds, sites=self.cfg.federation.num_sites))

    def write_report(self) -> Path | None:
        """The run report (fedecho.report), if the report module is installed."""
        try:
            from fedecho.report import write_report
        except ImportError:
            return None
        path = write_report(self.run_dir)
        progress.emit(f"report: {path}\nTensorBoard: tensorboard --logdir {self.run_dir / 'tb'}")
        return path
