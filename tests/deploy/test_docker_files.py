"""No Docker engine runs here: parse docker/compose.yaml and the Dockerfiles and check that every
command they name exists (console scripts declared in pyproject, subcommands that parse, files
copied from the repository) and that the services hang together."""

from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path

import pytest
import yaml

from fedecho.cli import client as client_cli
from fedecho.cli import server as server_cli

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
SHELL_WORDS = {"sh", "test", "true", "cp"}


def _scripts() -> dict[str, str]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]


def _check_invocation(words: list[str]) -> None:
    """``words`` = program + arguments; the program must exist and its arguments must parse."""
    program, args = words[0], words[1:]
    if program in SHELL_WORDS:
        return
    assert program in _scripts(), f"{program} is not a console script of the project"
    if program == "fedecho-server":
        parser = server_cli.build_parser()
        parsed, extra = parser.parse_known_args(args)
        assert all("=" in e and not e.startswith("-") for e in extra) and (not extra or parsed.command == "run"), extra
    elif program == "fedecho-client":
        client_cli.build_parser().parse_args(args)
    elif program == "fedecho":
        from fedecho.cli.main import build_parser

        build_parser().parse_args(args)


def _shell_commands(script: str) -> list[list[str]]:
    """Simple commands of a POSIX ``sh -c`` script made of &&, ||, ; and parentheses."""
    commands = []
    for part in re.split(r"&&|\|\||;", script):
        words = shlex.split(part.replace("(", " ").replace(")", " "))
        if words:
            commands.append(words)
    return commands


def _dockerfile(name: str) -> dict:
    text = (DOCKER / name).read_text()
    lines = re.sub(r"\\\n", " ", text).splitlines()
    instructions = [line.strip().split(None, 1) for line in lines if line.strip() and not line.strip().startswith("#")]
    out: dict[str, list[str]] = {}
    for instruction, *rest in instructions:
        out.setdefault(instruction.upper(), []).append(rest[0] if rest else "")
    return out


def _json_list(value: str) -> list[str]:
    import json

    return json.loads(value)


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


@pytest.mark.parametrize("name, program", [("Dockerfile.server", "fedecho-server"),
                                           ("Dockerfile.client", "fedecho-client")])
def test_dockerfiles_copy_real_paths_install_the_project_and_run_its_commands(name, program):
    dockerfile = _dockerfile(name)
    assert dockerfile["ARG"][0].startswith("BASE_IMAGE=python:3.11-slim")
    assert dockerfile["FROM"] == ["${BASE_IMAGE}"]
    for copy in dockerfile["COPY"]:
        *sources, _ = copy.split()
        for source in sources:
            assert (REPO / source).exists(), f"{name} copies {source}, which is not in the repository"
    # the project's install step: pip install -e . (as `make install`), nothing fetched at run time
    assert any("pip install -e ." in run for run in dockerfile["RUN"])
    env = " ".join(dockerfile["ENV"])
    assert "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1" in env and "FLWR_TELEMETRY_ENABLED=0" in env
    entrypoint = _json_list(dockerfile["ENTRYPOINT"][0])
    assert entrypoint == [program]
    _check_invocation(entrypoint + _json_list(dockerfile["CMD"][0]))


def test_compose_services_name_existing_commands(compose):
    services = compose["services"]
    assert {"init", "coordinator", "site-a", "site-b", "site-c"} <= set(services)
    images = {}
    for name, service in services.items():
        build = service.get("build")
        if build:
            assert (DOCKER / build["context"] / build["dockerfile"]).is_file(), name
            images[service["image"]] = build["dockerfile"]
    for name, service in services.items():
        dockerfile = images[service["image"]]
        entrypoint = service.get("entrypoint") or _json_list(_dockerfile(Path(dockerfile).name)["ENTRYPOINT"][0])
        command = service["command"]
        if entrypoint == ["sh", "-c"]:
            scripts = command if isinstance(command, list) else [command]
            commands = [c for script in scripts for c in _shell_commands(script)]
            assert commands, name
            for words in commands:
                _check_invocation(words)
        else:
            _check_invocation(entrypoint + command)


def test_compose_wires_sites_to_the_coordinator_and_their_own_bundles(compose):
    services = compose["services"]
    init = " ".join(services["init"]["command"])
    assert "fedecho-server init --out /federation --host coordinator" in init
    for site in ("site-a", "site-b", "site-c"):
        # the site's key pair is made in the site folder; the coordinator gets the public key only
        assert f"fedecho-client init --out /sites/{site} --name {site}" in init
        assert f"add-site --dir /federation --name {site} --key /sites/{site}/site.pub" in init
        copied = next(c for c in _shell_commands(init) if c[0] == "cp" and c[-1] == f"/sites/{site}/")
        assert {Path(p).name for p in copied[1:-1]} == {"ca.pem", "run_signing.pub", "site.toml"}
        args = client_cli.build_parser().parse_args(services[site]["command"])
        assert args.bundle == f"/sites/{site}" and args.superlink == "coordinator:9093"
        assert args.data == f"/data/{site}" and f"--out /data/{site}" in init
        assert services[site]["depends_on"]["coordinator"]["condition"] == "service_healthy"
        assert not any(v.startswith("federation:") for v in services[site]["volumes"])
    coordinator = server_cli.build_parser().parse_args(services["coordinator"]["command"])
    assert (coordinator.dir, coordinator.port) == ("/federation", 9093)
    assert services["coordinator"]["depends_on"]["init"]["condition"] == "service_completed_successfully"
    assert not any(v.startswith("sites:") for v in services["coordinator"]["volumes"])  # no site key, ever
    assert set(compose["volumes"]) == {"federation", "sites", "data", "state"}
