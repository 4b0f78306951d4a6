"""``fedecho-client``: a site operator's commands.

  init    make the site's own key pair (site.key stays here; hand site.pub to the coordinator)
  check   the data preflight: what was found, what is unreadable, label counts (nothing is sent)
  start   join the federation: preflight, then the SuperNode with the site's bundle and the warm
          site worker that runs this site's installed FedEcho for every message (foreground)
  audit   print the site's audit log: every message received and reply sent (what left the site)
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

__all__ = ["build_parser", "main"]

_FORMATS = ("camus", "echonet-dynamic", "echonet-lvh", "tmed2", "dicom")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fedecho-client", description=__doc__.splitlines()[0],
                                     epilog="\n".join(__doc__.splitlines()[2:]),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    init = sub.add_parser("init", help="make the site's key pair in a new site folder")
    init.add_argument("--out", required=True, help="the site folder (site.key, mode 0600, and site.pub)")
    init.add_argument("--name", required=True, help="the site's name, as the coordinator will register it")

    check = sub.add_parser("check", help="check a site's data before joining",
                           description="Exit status: 0 all items readable, 1 some problems (usable data "
                                       "remains), 2 no usable data.")
    check.add_argument("--data", required=True, help="the site's data folder")
    check.add_argument("--format", required=True, choices=_FORMATS)
    check.add_argument("--json", action="store_true", help="print one JSON object")
    check.add_argument("--shallow", action="store_true", help="headers and manifests only; do not decode pixels")
    check.add_argument("--id-fallback", action="store_true",
                       help="DICOM without PatientID/StudyInstanceUID/SOPInstanceUID: derive them as documented")

    start = sub.add_parser("start", help="join the federation (runs until Ctrl-C)")
    start.add_argument("--bundle", required=True, help="the site bundle folder from the coordinator")
    start.add_argument("--superlink", default=None, help="SuperLink HOST:PORT (default: the bundle's site.toml)")
    start.add_argument("--data", default=None, help="the site's data folder (default: site.toml data-root)")
    start.add_argument("--format", default=None, choices=_FORMATS, help="data format (default: site.toml)")
    start.add_argument("--state-dir", default=None,
                       help="where the site keeps its private state (default: site.toml state-dir, else "
                            "<bundle>/state)")
    start.add_argument("--port", type=int, default=None,
                       help="local port of this SuperNode's ClientApp API (default 9094; each SuperNode on "
                            "one machine needs its own)")
    start.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                       help="auto: the GPU when there is one")
    start.add_argument("--max-retries", type=int, default=None,
                       help="give up after this many failed connection attempts (default: retry forever)")

    audit = sub.add_parser("audit", help="print the site's audit log (what left the site)",
                           description="Each message the site received and each reply it sent: run, phase, "
                                       "round, signature check, policy decision, tensors and metrics sent.")
    where = audit.add_mutually_exclusive_group(required=True)
    where.add_argument("--state-dir", help="the site's state folder (fedecho-client start --state-dir)")
    where.add_argument("--bundle", help="the site folder: its site.toml state-dir, else <bundle>/state")
    audit.add_argument("--run", type=int, default=None, help="only this Flower run id")
    audit.add_argument("--tensors", action="store_true", help="one row per tensor sent or received")
    audit.add_argument("--json", action="store_true", help="the raw JSON lines")
    return parser


def _init(args: argparse.Namespace) -> int:
    from fedecho.deploy.sites import init_site

    pair = init_site(args.out, args.name)
    print(f"site {args.name}: private key {pair.private} (mode 0600; it never leaves this machine)\n"
          f"send {pair.public} to the coordinator; it runs `fedecho-server add-site --name {args.name} --key "
          f"site.pub` and sends back a bundle: copy its files into {pair.private.parent}")
    return 0


def _audit(args: argparse.Namespace) -> int:
    import json

    from fedecho.deploy.audit import format_table, read_audit
    from fedecho.deploy.policy import read_site_toml

    state_dir = args.state_dir
    if state_dir is None:
        settings = read_site_toml(args.bundle)
        data = settings.get("data", {}) if isinstance(settings.get("data"), dict) else {}
        state_dir = data.get("state-dir") or settings.get("state-dir") or Path(args.bundle) / "state"
    entries = [e for e in read_audit(state_dir) if args.run is None or e.get("run") == args.run]
    print("\n".join(json.dumps(e) for e in entries) if args.json else format_table(entries, tensors=args.tensors))
    return 0


def _check(args: argparse.Namespace) -> int:
    from fedecho.data.check import check_data

    report = check_data(args.format, args.data, deep=not args.shallow, id_fallback=args.id_fallback)
    print(report.to_json() if args.json else report.format_text())
    if not report.usable:
        return 2
    return 1 if report.errors else 0


def _device(requested: str) -> tuple[str, str]:
    """(device for the ClientApp, a sentence for the log)."""
    import torch

    if torch.cuda.is_available() and requested in ("auto", "cuda"):
        return "cuda", f"training on GPU cuda:0 ({torch.cuda.get_device_name(0)})"
    if requested == "cuda":
        raise ValueError("--device cuda but no CUDA GPU is available here; use --device auto or cpu")
    why = "as requested" if requested == "cpu" else "no CUDA GPU found"
    return "cpu", f"training on CPU ({why})"


def _start(args: argparse.Namespace) -> int:
    from fedecho.data.check import check_data
    from fedecho.deploy.federation import load_bundle
    from fedecho.deploy.process import ManagedProcess, flower_env, wait_for_port
    from fedecho.deploy.supernode import (DEFAULT_CLIENTAPPIO_PORT, NODE_ID_FILE, WORKER_SECRET, SiteAlreadyRunning,
                                          bundle_fields, lock_node_id_file, supernode_command, supervise,
                                          worker_command)
    from fedecho.deploy.worker import write_secret

    bundle = load_bundle(args.bundle)
    folder, site, index = bundle_fields(bundle)
    from fedecho.deploy.policy import load_policy

    load_policy(folder)  # a bad [policy] is an error now, not a refusal of every run later
    settings = bundle.data  # site.toml [data]
    superlink = args.superlink or bundle.superlink
    data = args.data or settings.get("root")
    fmt = args.format or settings.get("format")
    missing = [flag for flag, value in (("--superlink", superlink), ("--data", data), ("--format", fmt)) if not value]
    if missing:
        raise ValueError(f"give {', '.join(missing)} (or set them in {folder / 'site.toml'})")
    if fmt not in _FORMATS:
        raise ValueError(f"data format {fmt!r} is unknown; valid: {', '.join(_FORMATS)}")
    state_dir = Path(args.state_dir or settings.get("state-dir") or folder / "state").resolve()

    report = check_data(fmt, data, deep=False)
    if not report.usable:
        print(report.format_text(), file=sys.stderr)
        print(f"fedecho-client start: refusing to join: no usable {fmt} data at {data} "
              f"(see the problems above; `fedecho-client check --data {data} --format {fmt}` for details)",
              file=sys.stderr)
        return 2
    device, sentence = _device(args.device)
    print(f"site {site} (index {index}): {report.patients} patients, {report.readable_items} "
          f"items in {data} ({len(report.errors)} problems); {sentence}", flush=True)
    state_dir.mkdir(parents=True, exist_ok=True)
    try:  # a second start of this site: refused before it touches the state of the running one
        os.close(lock_node_id_file(state_dir / NODE_ID_FILE))
    except SiteAlreadyRunning as err:
        raise ValueError(str(err)) from None
    port = args.port or DEFAULT_CLIENTAPPIO_PORT
    secret = write_secret(state_dir / WORKER_SECRET)  # a new one per start: only this start's worker claims tasks
    command = supernode_command(bundle, superlink=superlink, data_root=data, data_format=fmt, state_dir=state_dir,
                                port=port, device=device, max_retries=args.max_retries, secret_file=secret)
    print(f"joining {superlink} as site {site}; site state in {state_dir}; Ctrl-C leaves", flush=True)
    supernode = ManagedProcess(f"flower-supernode ({site})", command, env=flower_env())
    try:
        wait_for_port("127.0.0.1", port, timeout=60, process=supernode)
    except (RuntimeError, TimeoutError):
        return supernode.stop() or 1

    def start_worker() -> ManagedProcess:
        worker = ManagedProcess(f"site worker ({site})", worker_command(port=port, secret_file=secret,
                                                                         state_dir=state_dir, parent_pid=os.getpid()),
                                env=flower_env())
        print(f"site worker pid {worker.pid} runs this site's installed FedEcho ClientApp for every message "
              f"(log: {state_dir / 'worker.jsonl'})", flush=True)
        return worker

    return supervise(supernode, start_worker)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handlers = {"init": _init, "check": _check, "start": _start, "audit": _audit}
    try:
        return int(handlers[args.command](args) or 0)
    except (ValueError, FileNotFoundError) as err:
        print(f"fedecho-client {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
