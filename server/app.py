"""FedEcho ServerApp: read the run config, run the phases (fedecho.federation.Coordinator)."""

from __future__ import annotations

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp


def build_app(run_config: dict | None = None) -> ServerApp:
    """The ServerApp; ``run_config`` stands in for Flower's run config where none is passed
    (``flwr.simulation.run_simulation`` leaves it empty)."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        import logging

        from fedecho.config.compose import run_config_from_flower
        from fedecho.deploy.grid import prompt
        from fedecho.federation.coordinator import Coordinator

        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        # Flower logs through its own handler (not twice); httpx would log every request to the
        # SuperLink (deployment: several per second).
        logging.getLogger("flwr").propagate = False
        logging.getLogger("httpx").setLevel(logging.WARNING)
        cfg, resume = run_config_from_flower({**(run_config or {}), **dict(context.run_config)})
        coordinator = Coordinator(cfg, prompt(grid), resume=resume)  # replies as they arrive
        coordinator.run()
        coordinator.write_report()

    return app


app = build_app()
