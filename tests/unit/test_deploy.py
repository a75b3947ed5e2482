"""Static checks of deploy/: the compose file, the Dockerfiles and the systemd units (no Docker engine or
systemd here): files they name exist, the fedmq commands they run parse, the topic map they ship validates."""

import configparser
import os
import shlex

import pytest
import yaml

from fedhelp import dockerfile_steps
from fedmq.node.bundle import UNIT
from fedmq.shared.cli import build_parser
from fedmq.shared.topicmap import load_topic_map

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEPLOY = os.path.join(ROOT, "deploy")
DOCKER_INSTRUCTIONS = {"FROM", "ARG", "RUN", "COPY", "USER", "WORKDIR", "VOLUME", "ENTRYPOINT", "CMD", "ENV",
                       "EXPOSE", "LABEL"}


def parses(argv):
    """fedmq's own argument parser accepts ``argv`` (a typo in a unit or a Dockerfile fails here)."""
    args = build_parser().parse_args(argv)
    assert getattr(args, "func", None) is not None, argv


def dockerfile(name):
    return dockerfile_steps(os.path.join(DEPLOY, "docker", name))


@pytest.mark.parametrize("name,command", [("coordinator.Dockerfile", "coordinator"), ("node.Dockerfile", "node")])
def test_dockerfiles(name, command):
    instructions = dockerfile(name)
    assert instructions[0][0] == "FROM" and "python:3.11" in instructions[0][1]
    assert {i for i, _ in instructions} <= DOCKER_INSTRUCTIONS
    copies = [arg.split() for i, arg in instructions if i == "COPY"]
    assert copies and all(os.path.isdir(os.path.join(ROOT, src)) for src, _ in copies)
    if command == "node":
        assert "coordinator" not in {src for src, _ in copies}  # a node image carries no coordinator
    assert ("USER", "fedmq") in instructions  # not root
    entry = yaml.safe_load([a for i, a in instructions if i == "ENTRYPOINT"][0])
    cmd = yaml.safe_load([a for i, a in instructions if i == "CMD"][0])
    assert entry == ["fedmq", command]
    parses(entry[1:] + cmd)


def test_compose_file():
    compose = yaml.safe_load(open(os.path.join(DEPLOY, "compose", "docker-compose.yml"), encoding="utf-8"))
    services = compose["services"]
    assert set(services) == {"mosquitto", "coordinator"}
    build = services["coordinator"]["build"]
    context = os.path.normpath(os.path.join(DEPLOY, "compose", build["context"]))
    assert context == ROOT and os.path.isfile(os.path.join(context, build["dockerfile"]))
    assert services["coordinator"]["depends_on"] == ["mosquitto"]
    parses(["coordinator", *services["coordinator"]["command"]])
    for name, service in services.items():
        for volume in service["volumes"]:
            source, target = volume.split(":")[:2]
            if source.startswith("."):
                assert os.path.isdir(os.path.join(DEPLOY, "compose", source)), (name, volume)
            else:
                assert source in compose["volumes"], (name, volume)  # a named volume is declared
    mounted = {v.split(":")[1]: v.split(":")[0] for v in services["coordinator"]["volumes"]}
    assert mounted["/config"] == "./config" and "/checkpoints" in mounted
    tm = load_topic_map(os.path.join(DEPLOY, "compose", "config", "federation.yaml"))
    assert tm.broker.host == "mosquitto" and tm.checkpoint_dir == "/checkpoints"


def unit(text):
    parser = configparser.ConfigParser(strict=True, interpolation=None)
    parser.optionxform = str
    parser.read_string(text)
    assert {"Unit", "Service", "Install"} <= set(parser.sections())
    return parser


@pytest.mark.parametrize("name,instance", [("fedmq-coordinator.service", None), ("fedmq-edge@.service", "site-a/b1")])
def test_systemd_units(name, instance):
    u = unit(open(os.path.join(DEPLOY, "systemd", name), encoding="utf-8").read())
    argv = shlex.split(u["Service"]["ExecStart"].replace("%I", instance or ""))
    assert argv[0] == "/opt/fedmq/venv/bin/fedmq"
    parses(argv[1:])
    assert u["Service"]["User"] == "fedmq" and u["Service"]["Restart"] == "always"
    assert u["Install"]["WantedBy"] == "multi-user.target"


def test_bundle_unit():
    u = unit(UNIT.format(node_id="gw1", federation="f"))
    argv = shlex.split(u["Service"]["ExecStart"].replace("@PREFIX@", "/opt/fedmq"))
    parses(argv[1:])
