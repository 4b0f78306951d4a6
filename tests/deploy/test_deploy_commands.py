"""Command lines and configuration of a deployment, checked against Flower's own parsers: the
SuperLink (loopback only) and SuperNode commands, the node config the ClientApp reads, the CLI
connection, the signed run config a submission sends (and what the coordinator composes from
it), the gateway's allow-list, the CLIs' arguments (init, add-site, client init)."""

from __future__ import annotations

import re
import shlex
import sys
import tomllib
from pathlib import Path

import pytest

from fedecho.cli import client as client_cli
from fedecho.cli import server as server_cli
from fedecho.deploy.federation import init_federation, load_bundle
from fedecho.deploy.gateway import FLEET_PATHS, is_allowed
from fedecho.deploy.signing import load_public_key, verify_run_config
from fedecho.deploy.sites import add_site, init_site
from fedecho.deploy.submit import _toml, app_identity, deployment_overrides, project_dir, signed_config
from fedecho.deploy.superlink import superlink_command, superlink_env, write_connection
from fedecho.deploy.supernode import node_config, supernode_command


@pytest.fixture
def fed(tmp_path):
    federation = init_federation(tmp_path / "fed", port=9200)
    for name in ("A", "B"):
        folder = tmp_path / f"site-{name}"
        init_site(folder, name)
        add_site(federation, name, folder / "site.pub")
        for path in federation.bundle(name).iterdir():
            (folder / path.name).write_bytes(path.read_bytes())
    return federation


def _flag(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


def test_superlink_command_is_secure_persistent_offline_and_loopback_only(fed, monkeypatch):
    command = superlink_command(fed, port=9300)
    assert command[1:6] == ["-m", "fedecho.deploy.superlink", "--log-stream-interval", "2.0", "--"]  # flower-superlink
    assert _flag(command, "--ssl-ca-certfile") == str(fed.root / "superlink" / "ca.pem")
    assert _flag(command, "--ssl-certfile") == str(fed.root / "superlink" / "server.pem")
    assert _flag(command, "--ssl-keyfile") == str(fed.root / "superlink" / "server.key")
    assert _flag(command, "--database") == str(fed.root / "state" / "superlink.db")
    # Control, Fleet and Runtime APIs share this one port: it is the loopback interface's only
    assert (_flag(command, "--host"), _flag(command, "--port")) == ("127.0.0.1", "9300")
    assert "--enable-supernode-auth" in command and "--disable-runtime-dependency-installation" in command
    assert "--insecure" not in command
    # Flower's legacy gRPC Control/Fleet servers (other ports, other interfaces) stay off
    monkeypatch.setenv("FLWR_INTERNAL_GRPC_CONTROL_API", "1")
    monkeypatch.setenv("FLWR_INTERNAL_GRPC_FLEET_API", "1")
    env = superlink_env(fed)
    assert "FLWR_INTERNAL_GRPC_CONTROL_API" not in env and "FLWR_INTERNAL_GRPC_FLEET_API" not in env
    assert env["FLWR_HOME"] == str(fed.flwr_home)
    (fed.root / "superlink" / "server.key").unlink()
    with pytest.raises(FileNotFoundError, match="server.key"):
        superlink_command(fed, port=9300)


def test_gateway_forwards_only_the_fleet_calls_of_an_authenticated_supernode():
    from flwr.supernode import fleet_http_client

    source = Path(fleet_http_client.__file__).read_text()
    flower_paths = set(re.findall(r'path="(/v1/fleet/[a-z-]+)"', source))
    # every call Flower's SuperNode makes is forwarded, except self-registration (coordinator's job)
    assert flower_paths - FLEET_PATHS == {"/v1/fleet/register-node", "/v1/fleet/unregister-node"}
    assert FLEET_PATHS <= flower_paths
    for path in FLEET_PATHS:
        assert is_allowed("POST", path) and not is_allowed("GET", path)
    assert is_allowed("GET", "/health") and is_allowed("HEAD", "/health") and not is_allowed("POST", "/health")
    for path in ("/v1/control/start-run", "/v1/control/register-node", "/v1/control/list-runs",
                 "/v1/runtime/pull-messages", "/v1/fleet/register-node", "/v1/fleet/unregister-node",
                 "/v1/fleet/../control/start-run", "/v1/fleet/pull-messages/", "/v1/fleet/", "/docs",
                 "/openapi.json", "/V1/FLEET/PULL-MESSAGES", ""):
        assert not is_allowed("POST", path), path


def test_superlink_wrapper_sets_the_log_stream_wait_of_this_flower_and_passes_the_arguments(monkeypatch):
    from flwr.superlink import cli
    from flwr.superlink import main as superlink_main
    from flwr.superlink.servicer.control import control_handlers

    from fedecho.deploy import superlink

    seen = {}
    flower_stack = superlink_main._get_middleware
    monkeypatch.setattr(superlink_main, "_get_middleware", flower_stack)  # the wrapper replaces it: put it back

    def fake_main():
        seen.update(interval=control_handlers.LOG_STREAM_INTERVAL, argv=list(sys.argv),
                    narrowed=superlink_main._get_middleware is not flower_stack)
        return 0

    assert control_handlers.LOG_STREAM_INTERVAL == 0.5  # Flower's own: the wait the wrapper lengthens
    monkeypatch.setattr(cli, "flower_superlink", fake_main)
    monkeypatch.setattr(control_handlers, "LOG_STREAM_INTERVAL", control_handlers.LOG_STREAM_INTERVAL)
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    with pytest.raises(SystemExit) as exit_:
        superlink.main(["--log-stream-interval", "3", "--", "--host", "127.0.0.1", "--port", "9300"])
    assert exit_.value.code == 0
    assert seen == {"interval": 3.0, "argv": ["flower-superlink", "--host", "127.0.0.1", "--port", "9300"],
                    "narrowed": True}  # fedecho.deploy.superlink.scope_middleware builds the app's middleware
    with pytest.raises(SystemExit):
        superlink.main(["--log-stream-interval", "0", "--"])


def test_supernode_command_and_node_config_as_flower_parses_them(fed, tmp_path):
    from flwr.common.config import parse_config_args

    bundle = load_bundle(fed.root.parent / "site-B")
    data = tmp_path / "my data"  # a space in the path survives
    command = supernode_command(bundle, superlink="coord.example:9200", data_root=data, data_format="camus",
                                state_dir=tmp_path / "state", port=9500, device="cuda", max_retries=3)
    assert command[1:8] == ["-m", "fedecho.deploy.supernode", "--idle-poll", "0.25", "--node-id-file",
                            str((tmp_path / "state" / "supernode.node-id").resolve()), "--"]  # flower-supernode, prompt
    worker_mode = supernode_command(bundle, superlink="coord.example:9200", data_root=data, data_format="camus",
                                    state_dir=tmp_path / "state", secret_file=tmp_path / "state" / "worker.secret")
    assert worker_mode[7:10] == ["--task-bell", str((tmp_path / "state" / "task.bell").resolve()), "--"]
    assert _flag(command, "--root-certificates") == str(bundle.path / "ca.pem")
    assert Path(_flag(command, "--root-certificates")).is_absolute()
    assert _flag(command, "--auth-supernode-private-key") == str(bundle.path / "site.key")
    assert (_flag(command, "--superlink"), _flag(command, "--port"), _flag(command, "--max-retries")) == (
        "coord.example:9200", "9500", "3")
    assert "--insecure" not in command
    parsed = parse_config_args([_flag(command, "--node-config")])
    assert parsed == {"bundle-dir": str(bundle.path), "site": "B", "site-index": 1, "data-format": "camus", "data-root": str(data),
                      "state-dir": str(tmp_path / "state"), "device": "cuda"}
    with pytest.raises(ValueError, match="HOST:PORT"):
        supernode_command(bundle, superlink="coord.example", data_root=data, data_format="camus", state_dir=data)
    with pytest.raises(ValueError, match="quotes"):
        node_config(bundle, data_root='/data/"x"', data_format="camus", state_dir=data)


def test_connection_is_what_the_flower_cli_reads(fed):
    from flwr.cli.flower_config import parse_superlink_connection

    path = write_connection(fed, "127.0.0.1:9200")
    values = tomllib.loads(path.read_text())
    assert values["superlink"]["default"] == "fedecho"
    connection = parse_superlink_connection(values["superlink"]["fedecho"], "fedecho")
    assert connection.address == "127.0.0.1:9200"
    assert connection.root_certificates == str(fed.root / "superlink" / "ca.pem")
    assert connection.insecure is False


def test_submitted_run_config_is_signed_and_composes_the_deployment_run(fed, tmp_path):
    from flwr.common.config import parse_config_args

    from fedecho.config.compose import run_config_from_flower

    run_dir = tmp_path / "runs" / "r1"
    user = ["federation.adapt.rounds=2", "model.overrides={layers:[1,1,1,1]}", "train.lr=0.01"]
    overrides = deployment_overrides(fed, user, run_dir)
    assert overrides[:2] == ["federation.num_sites=2", "federation.central_eval=false"]
    assert overrides[-1] == f"federation.run_dir={run_dir}"
    config_file = tmp_path / "submit.toml"
    config_file.write_text(_toml(signed_config(fed, "federated", overrides, True)))
    values = parse_config_args([str(config_file)])  # as `flwr run --run-config FILE` reads it
    assert values["resume"] is True and shlex.split(values["overrides"]) == overrides
    # the site's copy of the public key verifies what the coordinator sent; the deployment's own
    # overrides (num_sites, central_eval, run_dir) and the app's identity are inside the signature
    grant = verify_run_config(load_public_key(fed.root.parent / "site-A" / "run_signing.pub"), values)
    assert shlex.split(grant.overrides) == overrides and grant.resume is True
    assert (grant.app_id, grant.app_version) == app_identity() == ("fedecho/fedecho", "0.1.0")
    cfg, resume = run_config_from_flower(values)  # the grant keys never reach Hydra
    assert resume is True
    assert cfg.federation.num_sites == 2 and cfg.federation.central_eval is False
    assert cfg.federation.adapt.rounds == 2 and cfg.train.lr == 0.01
    assert Path(cfg.federation.run_dir) == run_dir and Path(cfg.federation.run_dir).is_absolute()
    # the user's choice wins over the deployment default
    cfg, _ = run_config_from_flower(tomllib.loads(_toml(signed_config(fed, "federated", deployment_overrides(
        fed, ["federation.central_eval=true"], run_dir), False))))
    assert cfg.federation.central_eval is True
    with pytest.raises(ValueError, match="--run-dir"):
        deployment_overrides(fed, ["federation.run_dir=elsewhere"], run_dir)


def test_project_dir_is_the_flower_app():
    root = project_dir()
    assert (root / "server" / "app.py").is_file() and (root / "client" / "app.py").is_file()
    assert "[tool.flwr.app]" in (root / "pyproject.toml").read_text()


def test_server_cli_parses_overrides_around_options():
    parser = server_cli.build_parser()
    args, extra = parser.parse_known_args(["run", "federated", "--dir", "F", "a.b=1", "c=[1,2]", "--run-dir", "R"])
    assert (args.experiment, args.dir, args.run_dir, [*args.overrides, *extra]) == ("federated", "F", "R",
                                                                                     ["a.b=1", "c=[1,2]"])
    with pytest.raises(SystemExit):
        server_cli.main(["start", "--dir", "F", "stray=1"])
    with pytest.raises(SystemExit):
        server_cli.main(["run", "federated", "--no-such-flag"])


def test_server_cli_init_add_site_and_errors(tmp_path, capsys):
    assert server_cli.main(["init", "--out", str(tmp_path / "fed"), "--host", "10.1.2.3"]) == 0
    out = capsys.readouterr().out
    assert "10.1.2.3" in out and "fedecho-client init" in out and "add-site" in out
    assert server_cli.main(["init", "--out", str(tmp_path / "fed")]) == 2
    assert "already holds a federation" in capsys.readouterr().err
    assert server_cli.main(["init", "--sites", "A,B", "--out", str(tmp_path / "old")]) == 2
    assert "fedecho-client init" in capsys.readouterr().err and not (tmp_path / "old").exists()
    # the site makes its keys; the coordinator registers the public one and gets a bundle
    assert client_cli.main(["init", "--out", str(tmp_path / "site"), "--name", "A"]) == 0
    assert "site.pub" in capsys.readouterr().out
    assert client_cli.main(["init", "--out", str(tmp_path / "site"), "--name", "A"]) == 2
    assert "never replaced" in capsys.readouterr().err
    assert server_cli.main(["add-site", "--dir", str(tmp_path / "fed"), "--name", "A", "--key",
                            str(tmp_path / "site" / "site.pub")]) == 0
    out = capsys.readouterr().out
    assert "index 0" in out and "next `fedecho-server start`" in out
    assert (tmp_path / "fed" / "bundles" / "A" / "site.toml").is_file()
    assert server_cli.main(["add-site", "--dir", str(tmp_path / "fed"), "--name", "B", "--key",
                            str(tmp_path / "site" / "site.key")]) == 2
    assert "PRIVATE key" in capsys.readouterr().err
    # run before start: no connection yet
    assert server_cli.main(["run", "federated", "--dir", str(tmp_path / "fed")]) == 2
    assert "fedecho-server start" in capsys.readouterr().err
    assert server_cli.main(["resume", str(tmp_path / "nothing")]) == 2
    assert "submission.json" in capsys.readouterr().err
    # a connection, but no SuperLink behind it: a clear error, and the run directory stays usable
    from fedecho.deploy.federation import Federation
    from fedecho.deploy.process import free_port

    write_connection(Federation.load(tmp_path / "fed"), f"127.0.0.1:{free_port()}")
    run_dir = tmp_path / "run"
    assert server_cli.main(["run", "federated", "--dir", str(tmp_path / "fed"), "--run-dir", str(run_dir)]) == 2
    assert "did not accept the run" in capsys.readouterr().err
    assert not (run_dir / "submission.json").exists()


def test_client_start_refuses_without_usable_data(fed, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    site = fed.root.parent / "site-A"
    status = client_cli.main(["start", "--bundle", str(site), "--superlink", "127.0.0.1:1",
                              "--data", str(empty), "--format", "camus"])
    assert status == 2
    err = capsys.readouterr().err
    assert "refusing to join: no usable camus data" in err
    assert not (site / "state").exists()  # nothing was started
    # missing settings are named
    assert client_cli.main(["start", "--bundle", str(site), "--data", str(empty)]) == 2
    assert "--format" in capsys.readouterr().err


def test_client_check_exit_codes(tmp_path, capsys):
    from fedecho.data.synthetic import synthesize

    synthesize("camus", tmp_path / "camus", patients=3, seed=0, image_size=32)
    assert client_cli.main(["check", "--data", str(tmp_path / "camus"), "--format", "camus", "--shallow"]) == 0
    assert "patients 3" in capsys.readouterr().out
    (tmp_path / "none").mkdir()
    assert client_cli.main(["check", "--data", str(tmp_path / "none"), "--format", "camus"]) == 2
