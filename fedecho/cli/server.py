"""``fedecho-server``: the coordinator's commands.

  init    create a federation: certificate authority, SuperLink certificate, one bundle per site
  start   run the SuperLink (TLS, SuperNode authentication, persistent state) in the foreground
  run     submit an experiment to the running SuperLink and follow it to the end
  resume  continue a run whose coordinator died, from its last completed round
"""

from __future__ import annotations

import argparse
import os
import sys

__all__ = ["build_parser", "main"]

_DEFAULT_DIR = os.environ.get("FEDECHO_FEDERATION", "federation")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fedecho-server", description=__doc__.splitlines()[0],
                                     epilog="\n".join(__doc__.splitlines()[2:]),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    init = sub.add_parser("init", help="create a federation folder: CA, SuperLink certificate, site bundles")
    init.add_argument("--sites", required=True, help="comma-separated site names, e.g. A,B,C (order = site index)")
    init.add_argument("--out", default=_DEFAULT_DIR, help=f"federation folder (default {_DEFAULT_DIR})")
    init.add_argument("--host", action="append", default=[],
                      help="host name or IP the sites use to reach the SuperLink (repeatable; localhost and "
                           "127.0.0.1 are always included)")
    init.add_argument("--port", type=int, default=None, help="SuperLink port (default 9093)")
    init.add_argument("--force", action="store_true", help="replace an existing federation in --out")

    start = sub.add_parser("start", help="run the SuperLink in the foreground (Ctrl-C stops it)")
    start.add_argument("--dir", default=_DEFAULT_DIR, help="federation folder made by init")
    start.add_argument("--host", default="0.0.0.0", help="address to listen on (default all interfaces)")
    start.add_argument("--port", type=int, default=None, help="port (default: the federation's, 9093)")

    run = sub.add_parser("run", help="submit an experiment and follow it; Hydra overrides follow the name")
    run.add_argument("experiment", help="config name in conf/ (e.g. federated, demo)")
    run.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. federation.adapt.rounds=2")
    run.add_argument("--dir", default=_DEFAULT_DIR, help="federation folder (its SuperLink must be running)")
    run.add_argument("--run-dir", default=None, help="run directory (default <dir>/runs/<experiment>-<time>)")
    run.add_argument("--timeout", type=float, default=None, help="give up (and stop the run) after this many s")

    resume = sub.add_parser("resume", help="continue the run in RUN_DIR from its last completed round")
    resume.add_argument("run_dir")
    resume.add_argument("--timeout", type=float, default=None)
    return parser


def _init(args: argparse.Namespace) -> int:
    from fedecho.deploy.federation import DEFAULT_PORT, init_federation

    sites = [s.strip() for s in args.sites.split(",") if s.strip()]
    federation = init_federation(args.out, sites, args.host, port=args.port or DEFAULT_PORT, force=args.force)
    print(f"federation in {federation.root}: sites {', '.join(sites)}; SuperLink certificate for "
          f"{', '.join(['localhost', '127.0.0.1', *args.host])}")
    for site in sites:
        print(f"  hand {federation.bundle(site)} to site {site} (keep {federation.root / 'ca'} here)")
    print(f"next: fedecho-server start --dir {federation.root}")
    return 0


def _start(args: argparse.Namespace) -> int:
    from fedecho.deploy.federation import Federation
    from fedecho.deploy.process import (
        ManagedProcess,
        flower_env,
        run_foreground,
        wait_for_port,
    )
    from fedecho.deploy.superlink import (
        register_sites,
        superlink_command,
        write_connection,
    )

    federation = Federation.load(args.dir)
    if args.port and args.port != federation.port:
        federation.port = args.port
        federation.save()
    local = "127.0.0.1" if args.host in ("0.0.0.0", "::", "localhost", "127.0.0.1") else args.host
    command = superlink_command(federation, host=args.host, port=federation.port)
    log_path = federation.root / "state" / "superlink.log"
    process = ManagedProcess("flower-superlink", command, env=flower_env(federation.flwr_home), log_path=log_path)
    try:
        wait_for_port(local, federation.port, timeout=120, process=process)
        write_connection(federation, f"{local}:{federation.port}")
        status = register_sites(federation)
    except BaseException:
        process.stop()
        raise
    listed = ", ".join(f"{site} ({state})" for site, state in status.items())
    print(f"SuperLink ready on {args.host}:{federation.port} (TLS, SuperNode authentication, state in "
          f"{federation.database}); sites: {listed}", flush=True)
    print(f"SuperLink log: {log_path}\nsubmit a run: fedecho-server run federated --dir {federation.root}",
          flush=True)
    return run_foreground(process)


def _run(args: argparse.Namespace) -> int:
    from fedecho.deploy.federation import Federation
    from fedecho.deploy.submit import submit_run

    federation = Federation.load(args.dir)
    if not (federation.flwr_home / "config.toml").is_file():
        raise FileNotFoundError(f"no SuperLink connection in {federation.flwr_home}: start it first with "
                                f"`fedecho-server start --dir {federation.root}`")
    outcome = submit_run(federation, args.experiment, list(args.overrides), run_dir=args.run_dir,
                         timeout=args.timeout)
    return _report(outcome)


def _resume(args: argparse.Namespace) -> int:
    from fedecho.deploy.submit import resume_run

    return _report(resume_run(args.run_dir, timeout=args.timeout))


def _report(outcome) -> int:
    if outcome.ok:
        print(f"run {outcome.run_id} finished in {outcome.seconds:.0f} s; run directory {outcome.run_dir}")
        return 0
    print(f"run {outcome.run_id} ended {outcome.status} {outcome.details} after {outcome.seconds:.0f} s; log in "
          f"{outcome.run_dir / 'coordinator.log'}; continue it with: fedecho-server resume {outcome.run_dir}",
          file=sys.stderr)
    return 1


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # overrides may come before or after the options of `run`
        unknown = [e for e in extra if e.startswith("-") or "=" not in e]
        if args.command != "run" or unknown:
            parser.error(f"unrecognized arguments: {' '.join(unknown or extra)}")
        args.overrides = [*args.overrides, *extra]
    handlers = {"init": _init, "start": _start, "run": _run, "resume": _resume}
    try:
        return int(handlers[args.command](args) or 0)
    except (ValueError, FileNotFoundError, RuntimeError, TimeoutError) as err:
        print(f"fedecho-server {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"fedecho-server {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
