"""``fedecho-server``: the coordinator's commands.

  init      create a federation: certificate authority, SuperLink certificate, run-signing keys
  add-site  register a site's public key (site.pub from `fedecho-client init`); writes its bundle
  start     run the SuperLink (loopback only) and its TLS gateway (public port, Fleet API only)
  run       submit a signed experiment to the running SuperLink and follow it to the end
  resume    continue a run whose coordinator died, from its last completed round
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

    init = sub.add_parser("init", help="create a federation folder: CA, SuperLink certificate, run-signing keys")
    init.add_argument("--sites", default=None, help=argparse.SUPPRESS)  # the old flow: answered with the new one
    init.add_argument("--out", default=_DEFAULT_DIR, help=f"federation folder (default {_DEFAULT_DIR})")
    init.add_argument("--host", action="append", default=[],
                      help="host name or IP the sites use to reach the SuperLink (repeatable; localhost and "
                           "127.0.0.1 are always included)")
    init.add_argument("--port", type=int, default=None, help="the public port sites dial (default 9093)")
    init.add_argument("--force", action="store_true", help="replace an existing federation in --out")

    add = sub.add_parser("add-site", help="register a site's public key; writes the bundle to hand back")
    add.add_argument("--dir", default=_DEFAULT_DIR, help="federation folder made by init")
    add.add_argument("--name", required=True, help="the site's name (its index is the order of add-site)")
    add.add_argument("--key", required=True, help="the site's public key file (site.pub from fedecho-client init)")

    start = sub.add_parser("start", help="run the SuperLink and its gateway in the foreground (Ctrl-C stops them)")
    start.add_argument("--dir", default=_DEFAULT_DIR, help="federation folder made by init")
    start.add_argument("--host", default="0.0.0.0",
                       help="address the gateway listens on (default all interfaces; the SuperLink itself "
                            "listens on 127.0.0.1 only)")
    start.add_argument("--port", type=int, default=None, help="public port (default: the federation's, 9093)")
    start.add_argument("--max-request-mib", type=int, default=None,
                       help="largest request the public port reads, in MiB (default 64; larger ones get HTTP 413)")
    start.add_argument("--internal-port", type=int, default=None,
                       help="the SuperLink's loopback port (default: a free one, chosen at each start)")

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

    if args.sites is not None:
        raise ValueError("--sites is gone: sites make their own keys. At each site: `fedecho-client init --out "
                         "SITE_DIR --name NAME`; here: `fedecho-server add-site --dir DIR --name NAME --key site.pub`")
    federation = init_federation(args.out, args.host, port=args.port or DEFAULT_PORT, force=args.force)
    print(f"federation in {federation.root}: SuperLink certificate for "
          f"{', '.join(['localhost', '127.0.0.1', *args.host])}; run-signing key {federation.signing_key} "
          f"(keep {federation.root / 'ca'} and {federation.root / 'signing'} here)")
    print(f"next, per site: the site runs `fedecho-client init --out SITE_DIR --name NAME` and sends you "
          f"site.pub; then `fedecho-server add-site --dir {federation.root} --name NAME --key site.pub`")
    return 0


def _add_site(args: argparse.Namespace) -> int:
    import socket

    from fedecho.deploy.federation import Federation
    from fedecho.deploy.sites import add_site
    from fedecho.deploy.superlink import register_sites

    federation = Federation.load(args.dir)
    bundle = add_site(federation, args.name, args.key)
    print(f"site {args.name} has index {federation.sites.index(args.name)}; hand the files in {bundle} to the site "
          f"(public material only: ca.pem, run_signing.pub, site.toml, INSTRUCTIONS.txt)")
    connection = federation.flwr_home / "config.toml"
    address = _connection_address(connection)
    running = False
    if address is not None:
        host, port = address.rsplit(":", 1)
        try:
            socket.create_connection((host, int(port)), timeout=2).close()
            running = True
        except OSError:
            pass
    if running:
        status = register_sites(federation, [args.name])
        print(f"the running SuperLink has its key ({status[args.name]})")
    else:
        print("its key is registered with the SuperLink at the next `fedecho-server start`")
    return 0


def _connection_address(path) -> str | None:
    import tomllib

    if not path.is_file():
        return None
    values = tomllib.loads(path.read_text()).get("superlink", {})
    return values.get(values.get("default", ""), {}).get("address")


def _start(args: argparse.Namespace) -> int:
    import signal
    import threading

    from fedecho.deploy.federation import Federation
    from fedecho.deploy.gateway import gateway_command
    from fedecho.deploy.process import (
        ManagedProcess,
        free_port,
        run_foreground,
        wait_for_port,
    )
    from fedecho.deploy.superlink import (
        LOOPBACK,
        register_sites,
        superlink_command,
        superlink_env,
        write_connection,
    )

    federation = Federation.load(args.dir)
    if args.port and args.port != federation.port:
        federation.port = args.port
        federation.save()
    if not federation.sites:
        print("note: no sites yet (`fedecho-server add-site`); they can be added while the SuperLink runs",
              flush=True)
    internal = args.internal_port or free_port(LOOPBACK)
    state = federation.root / "state"
    bells = state / "bells"  # the gateway and the ServerApp tell each other of messages (fedecho.deploy.gateway)
    superlink = ManagedProcess("flower-superlink", superlink_command(federation, port=internal),
                               env=superlink_env(federation, bells=bells), log_path=state / "superlink.log")
    gateway = None
    try:
        wait_for_port(LOOPBACK, internal, timeout=120, process=superlink)
        write_connection(federation, f"{LOOPBACK}:{internal}")
        status = register_sites(federation)
        tls = federation.tls
        gateway = ManagedProcess("fedecho gateway", gateway_command(
            listen_host=args.host, listen_port=federation.port, upstream=f"{LOOPBACK}:{internal}", cert=tls.cert,
            key=tls.key, ca_cert=tls.ca_cert, log_file=federation.gateway_log, bells=bells,
            **({"max_body_mib": args.max_request_mib} if args.max_request_mib else {})),
            log_path=state / "gateway.out")
        local = LOOPBACK if args.host in ("0.0.0.0", "::", "localhost", LOOPBACK) else args.host
        wait_for_port(local, federation.port, timeout=60, process=gateway)
    except BaseException:
        if gateway is not None:
            gateway.stop()
        superlink.stop()
        raise
    # if the gateway dies, the SuperLink stops too (and the command exits)
    threading.Thread(target=lambda: (gateway.wait(), superlink.signal_group(signal.SIGTERM)), daemon=True).start()
    listed = ", ".join(f"{site} ({how})" for site, how in status.items()) or "none yet"
    print(f"SuperLink ready on {args.host}:{federation.port} (TLS gateway: Fleet API only; Control API on "
          f"{LOOPBACK}:{internal}; SuperNode authentication; state in {federation.database}); sites: {listed}",
          flush=True)
    print(f"logs: {state / 'superlink.log'}, refusals: {federation.gateway_log}\n"
          f"submit a run: fedecho-server run federated --dir {federation.root}", flush=True)
    try:
        return run_foreground(superlink)
    finally:
        gateway.stop()


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
    handlers = {"init": _init, "add-site": _add_site, "start": _start, "run": _run, "resume": _resume}
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
