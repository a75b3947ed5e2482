"""Static checks of deploy/: the compose file, the Dockerfiles and the systemd units (no Docker engine or
systemd here): files they name exist, the fedmq commands they run parse, the topic map they ship validates."""

import configparser
import os
import re
import shlex
import shutil
import subprocess

import pytest
import yaml

from fedhelp import dockerfile_steps
from fedmq.node.bundle import HARDENING, UNIT
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
    run = " ".join(a for i, a in instructions if i == "RUN")
    assert "--uid 1883" in run  # the eclipse-mosquitto image's uid: one provisioning owner suits both containers
    if command == "coordinator":  # a new named volume takes the ownership of the image's directory
        assert "chown fedmq:fedmq /checkpoints" in run
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
    parses(["coordinator", *services["coordinator"]["command"]])
    for name, service in services.items():
        for volume in service["volumes"]:
            source, target = volume.split(":")[:2]
            if source.startswith("."):
                assert os.path.isdir(os.path.join(DEPLOY, "compose", source)), (name, volume)
            else:
                assert source in compose["volumes"], (name, volume)  # a named volume is declared
    mounted = {v.split(":")[1]: v.split(":")[0] for v in services["coordinator"]["volumes"]}
    assert mounted["/config"] == "./config" and "/checkpoints" in mounted and mounted["/security"] == "./security"
    tm = load_topic_map(os.path.join(DEPLOY, "compose", "config", "federation.yaml"))
    assert tm.broker.host == "mosquitto" and tm.checkpoint_dir == "/checkpoints"
    # a finished federation (exit 0) stays stopped, a configuration error (exit 2) is not retried forever;
    # the coordinator starts once Mosquitto answers
    assert services["coordinator"]["restart"] == "on-failure:3"
    assert services["coordinator"]["depends_on"] == {"mosquitto": {"condition": "service_healthy"}}
    port = str(tm.broker.port)
    assert port != "1883" and port in " ".join(services["mosquitto"]["healthcheck"]["test"])
    # the federation's port is published, the home broker's 1883 is not; so are the metrics
    assert f"{port}:{port}" in services["mosquitto"]["ports"]
    assert not any(p.split(":")[0] == "1883" for s in services.values() for p in s.get("ports", []))
    assert tm.monitoring.address is not None
    metrics_port = tm.monitoring.address.rsplit(":", 1)[1]
    assert f"{metrics_port}:{metrics_port}" in services["coordinator"]["ports"]
    # the build context (the repository root) leaves the virtual environment and git out
    ignored = open(os.path.join(ROOT, ".dockerignore"), encoding="utf-8").read().split()
    assert ".venv" in ignored and ".git" in ignored


def test_compose_tls_paths_are_the_containers(tmp_path):
    """The TLS variant: the commented lines of the compose topic map, and Mosquitto's config rendered as the
    compose file says, name files where the containers mount them."""
    compose = yaml.safe_load(open(os.path.join(DEPLOY, "compose", "docker-compose.yml"), encoding="utf-8"))
    text = open(os.path.join(DEPLOY, "compose", "config", "federation.yaml"), encoding="utf-8").read()
    tls_text = text.replace("\n  # tls:", "\n  tls:").replace("\n  #       key", "\n          key")
    tls_text = tls_text.replace("\n# security:", "\nsecurity:").replace("\n#            dir", "\n           dir")
    tm_file = tmp_path / "federation.yaml"
    tm_file.write_text(tls_text)
    tm = load_topic_map(str(tm_file))
    assert tm.broker.tls is not None and tm.security.signatures, tls_text
    for path in (tm.broker.tls.ca_file, tm.broker.tls.cert_file, tm.broker.tls.key_file, tm.security.keys,
                 tm.security.signing_key):
        assert path.startswith("/security/"), path
    sec = tmp_path / "security"
    command = compose_comment_command(compose_text(), "broker render")
    argv = [
        a.replace("deploy/compose/security", str(sec))
        .replace("deploy/compose/config/federation.yaml", str(tm_file))
        .replace("deploy/compose/mosquitto/mosquitto.conf", str(tmp_path / "mosquitto.conf"))
        for a in command
    ]
    from fedmq.broker.provision import provision

    provision(tm, str(sec))
    assert build_parser().parse_args(argv).func(build_parser().parse_args(argv)) == 0
    conf = (tmp_path / "mosquitto.conf").read_text()
    mounts = {v.split(":")[1] for v in compose["services"]["mosquitto"]["volumes"]}
    assert "user root" not in conf and "/security" in mounts and "/mosquitto/data" in mounts
    files = [
        ln.split()[1]
        for ln in conf.splitlines()
        if ln.split()[:1] and ln.split()[0] in ("cafile", "certfile", "keyfile", "crlfile", "acl_file", "password_file")
    ]
    assert files and all(f.startswith("/security/") for f in files), files
    assert "persistence_location /mosquitto/data/" in conf
    # enrolment in containers: the coordinator writes the security directory, reads Mosquitto's pid file
    # from a volume it mounts and shares Mosquitto's process namespace to signal it
    coordinator = compose["services"]["coordinator"]
    pid_file = next(ln.split()[1] for ln in conf.splitlines() if ln.startswith("pid_file "))
    assert tm.security.broker_pid_file == pid_file and tm.security.dir == "/security"
    volumes = {v.split(":")[1]: v for v in coordinator["volumes"]}
    assert not volumes["/security"].endswith(":ro")
    assert any(pid_file.startswith(target + "/") and source.split(":")[0] in compose["volumes"]
               for target, source in volumes.items())
    assert coordinator["pid"] == "service:mosquitto"
    enrol = next(ln.split()[1] for ln in conf.splitlines() if ln.startswith("listener ") and
                 ln.split()[1] != str(tm.broker.port))
    assert f"{enrol}:{enrol}" in compose["services"]["mosquitto"]["ports"]


def compose_text():
    return open(os.path.join(DEPLOY, "compose", "docker-compose.yml"), encoding="utf-8").read()


def compose_comment_command(text, what):
    """The fedmq command in the compose file's header comment that contains ``what``, continuation lines joined."""
    lines = [ln.lstrip("# ").rstrip() for ln in text.splitlines() if ln.startswith("#")]
    joined, cmd = " ".join(ln[:-1] if ln.endswith("\\") else ln + "\n" for ln in lines), None
    for line in joined.splitlines():
        if what in line and "fedmq" in line:
            cmd = line.split("(leave out")[0]
            break
    assert cmd, what
    argv = shlex.split(cmd)
    return argv[argv.index(next(a for a in argv if a.endswith("fedmq"))) + 1 :]


def unit(text):
    parser = configparser.ConfigParser(strict=True, interpolation=None)
    parser.optionxform = str
    parser.read_string(text)
    assert {"Unit", "Service", "Install"} <= set(parser.sections())
    return parser


UNITS = [
    ("fedmq-coordinator.service", None),
    ("fedmq-edge@.service", "site-a/building-1"),
    ("fedmq-mosquitto.service", None),
]


@pytest.mark.parametrize("name,instance", UNITS)
def test_systemd_units(name, instance):
    u = unit(open(os.path.join(DEPLOY, "systemd", name), encoding="utf-8").read())
    service = u["Service"]
    argv = shlex.split(
        service["ExecStart"].replace("%I", instance or "").replace("${STATE_DIRECTORY}", "/var/lib/fedmq")
    )
    if name == "fedmq-mosquitto.service":
        assert argv == ["/usr/sbin/mosquitto", "-c", "/etc/fedmq/mosquitto.conf"]
    else:
        assert argv[0] == "/opt/fedmq/venv/bin/fedmq"
        parses(argv[1:])
    # a finished federation exits 0 and a configuration error 2: neither is restarted in a loop
    assert service["User"] == "fedmq" and service["Restart"] == "on-failure"
    assert u["Install"]["WantedBy"] == "multi-user.target"


@pytest.mark.skipif(not shutil.which("systemd-escape"), reason="systemd-escape is not installed")
def test_the_edge_units_instance_name_turns_back_into_the_group_path():
    for group in ("site-a/building-1", "b1", "north/floor_2"):
        escaped = subprocess.run(
            ["systemd-escape", "--path", group], capture_output=True, text=True, check=True
        ).stdout.strip()
        back = subprocess.run(
            ["systemd-escape", "--unescape", "--path", escaped], capture_output=True, text=True, check=True
        ).stdout.strip()
        assert back.strip("/") == group  # what %I gives the unit
    header = open(os.path.join(DEPLOY, "systemd", "fedmq-edge@.service"), encoding="utf-8").read()
    assert "fedmq-edge@site\\x2da-building\\x2d1.service" in header


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze is not installed")
@pytest.mark.parametrize("name", ["fedmq-coordinator.service", "fedmq-edge@site.service", "fedmq-mosquitto.service"])
def test_units_are_hardened(tmp_path, name):
    """systemd-analyze security rates every unit, with the shared drop-in, at most 2.0 (OK)."""
    root = tmp_path / "etc" / "systemd" / "system"
    shutil.copytree(os.path.join(DEPLOY, "systemd"), root)
    out = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", f"--root={tmp_path}", name], capture_output=True, text=True
    ).stdout
    level = float(re.search(r"Overall exposure level for \S+: ([0-9.]+)", out).group(1))
    assert level <= 2.0, out


def test_bundle_unit(tmp_path):
    text = UNIT.format(node_id="gw1", federation="f").replace("@PREFIX@", "/opt/fedmq")
    u = unit(text)
    parses(shlex.split(u["Service"]["ExecStart"])[1:])
    assert u["Service"]["Restart"] == "on-failure"
    assert HARDENING == open(os.path.join(DEPLOY, "systemd", "fedmq-.service.d", "hardening.conf")).read()
    if shutil.which("systemd-analyze"):  # the bundle installs the unit and the shared drop-in
        root = tmp_path / "etc" / "systemd" / "system"
        (root / "fedmq-.service.d").mkdir(parents=True)
        (root / "fedmq-node.service").write_text(text)
        (root / "fedmq-.service.d" / "hardening.conf").write_text(HARDENING)
        out = subprocess.run(
            ["systemd-analyze", "security", "--offline=true", f"--root={tmp_path}", "fedmq-node.service"],
            capture_output=True,
            text=True,
        ).stdout
        assert float(re.search(r"Overall exposure level for \S+: ([0-9.]+)", out).group(1)) <= 2.0, out
