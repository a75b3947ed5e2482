"""deploy.md's service layout, for real: the coordinator and the federation's own Mosquitto run as an
unprivileged service user (as fedmq-coordinator.service and fedmq-mosquitto.service do), with the topic map
in a root-owned directory they cannot write, credentials provisioned for that user and state under a state
directory, beside a home's existing Mosquitto whose own clients keep working."""

import configparser
import os
import pwd
import re
import shlex
import shutil
import subprocess
import tempfile
import threading
import time

import paho.mqtt.client as mqtt
import pytest

from fedhelp import fedmq, port_open, rewrite_yaml, stop, wait_for, write_federation
from fedmq.broker.process import find_mosquitto, free_port
from fedmq.broker.provision import client_config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
USER = "fedmq-svc-test"
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0 or not shutil.which("runuser"),
                                 reason="switching to a service user needs root and runuser")]


@pytest.fixture
def service_user():
    try:
        pwd.getpwnam(USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", USER], check=True)
    return USER


@pytest.fixture
def base():
    d = tempfile.mkdtemp(prefix="fedmq-service-", dir="/tmp")  # every user can traverse it, unlike pytest's tmp
    os.chmod(d, 0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def as_user(user, argv, log, cwd=None):
    with open(log, "wb") as fh:
        return subprocess.Popen(["runuser", "-u", user, "--", *argv], stdout=fh, stderr=subprocess.STDOUT, cwd=cwd,
                                start_new_session=True)


def mapped(command, paths_map):
    """A documented command with the deployment's paths mapped into the test's directories, as argv."""
    for path, here in paths_map.items():  # longest first: /etc/fedmq/federation.yaml before /etc/fedmq
        command = command.replace(path, here)
    argv = shlex.split(command)
    return argv[1:] if argv[0] == "sudo" else argv


def deploy_md_command(what, paths_map):
    """The command of docs/deploy.md's shell blocks (or inline code) that contains ``what`` (continuation
    lines joined)."""
    text = open(os.path.join(ROOT, "docs", "deploy.md"), encoding="utf-8").read()
    lines = "\n".join(re.findall(r"```sh\n(.*?)```", text, re.S)).replace("\\\n", " ").splitlines()
    lines = [ln.split("  #")[0] for ln in lines] + re.findall(r"`([^`\n]*" + re.escape(what) + r"[^`\n]*)`", text)
    found = sorted({ln for ln in lines if what in ln})
    assert len(found) == 1, (what, found)
    return mapped(found[0], paths_map)


def unit_service(name):
    """The [Service] section of a shipped systemd unit."""
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str
    parser.read(os.path.join(ROOT, "deploy", "systemd", name))
    return parser["Service"]



class HomeClient:
    """A client of the home's broker (zigbee2mqtt-like: anonymous, its own topics) that counts what it hears."""

    def __init__(self, port):
        self.got = []
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"home-{time.monotonic_ns()}")
        self.c.on_message = lambda cl, u, m: self.got.append(m.payload)
        subscribed = threading.Event()
        self.c.on_connect = lambda cl, u, f, rc, p: cl.subscribe("zigbee2mqtt/#", qos=1)
        self.c.on_subscribe = lambda *a: subscribed.set()
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()
        assert subscribed.wait(10)

    def round_trip(self, port, payload):
        before = len(self.got)
        pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        pub.connect("127.0.0.1", port)
        pub.loop_start()
        pub.publish("zigbee2mqtt/kitchen", payload, qos=1).wait_for_publish(5)
        pub.loop_stop()
        wait_for(lambda: len(self.got) > before, 10, "the home client to hear a reading")

    def close(self):
        self.c.loop_stop()
        self.c.disconnect()


def test_coordinator_and_its_mosquitto_as_a_service_user_beside_the_homes_mosquitto(coordinator_venv, service_user,
                                                                                    base):
    fedmq_bin = str(coordinator_venv / "bin" / "fedmq")
    etc, state, home = (os.path.join(base, d) for d in ("etc", "state", "home"))
    for d in (etc, state, home):
        os.makedirs(d)
    uid, gid = pwd.getpwnam(service_user).pw_uid, pwd.getpwnam(service_user).pw_gid
    os.chown(state, uid, gid)  # what StateDirectory= makes
    os.chmod(state, 0o750)

    # The home: its Mosquitto, its configuration, an anonymous client on its own topics.
    home_port = free_port()
    home_conf = os.path.join(home, "mosquitto.conf")
    with open(home_conf, "w") as fh:
        fh.write(f"listener {home_port} 127.0.0.1\nallow_anonymous true\npersistence false\nlog_dest stderr\n")
    home_broker = subprocess.Popen([find_mosquitto(), "-c", home_conf], stderr=subprocess.DEVNULL)
    procs = []
    client = None
    try:
        wait_for(lambda: port_open(home_port), 10, "the home's Mosquitto")
        client = HomeClient(home_port)
        client.round_trip(home_port, b'{"temperature": 21.5}')

        # fedmq beside it: provisioned for the service user, its own broker on its own port.
        fed_port = free_port()
        paths = write_federation(etc, fed_port, {"home1": ["a1", "a2"]}, rounds=2, deadline_s=10)
        rewrite_yaml(paths["topic_map"], lambda fed: fed.update(checkpoint={"dir": "checkpoints"}))
        sec = os.path.join(etc, "security")
        paths_map = {"/etc/fedmq/federation.yaml": paths["topic_map"], "/etc/fedmq": etc, "/var/lib/fedmq": state,
                     "/run/fedmq": os.path.join(state, "run"), "/opt/fedmq/venv/bin/fedmq": fedmq_bin,
                     "${STATE_DIRECTORY}": state, "<the host's LAN name or IP>": "localhost",
                     "--owner fedmq": f"--owner {service_user}"}
        subprocess.run(deploy_md_command("broker provision", paths_map), check=True, capture_output=True, timeout=60)
        assert subprocess.run(deploy_md_command("fedmq validate", paths_map), capture_output=True,
                              timeout=60).returncode == 0
        for pid, path in (("coordinator", paths["topic_map"]), ("a1", paths["a1"]), ("a2", paths["a2"])):
            sections = client_config(sec, pid)

            def change(cfg, sections=sections, pid=pid):
                cfg["broker"].update(sections["broker"])
                cfg["security"] = {**sections["security"], **({"signatures": True} if pid == "coordinator" else {})}

            rewrite_yaml(path, change)
        assert all(os.stat(os.path.join(r, f)).st_uid == uid for r, _, fs in os.walk(sec) for f in fs)
        subprocess.run(deploy_md_command("broker render /etc/fedmq/federation.yaml --security", paths_map), check=True, capture_output=True, timeout=60)
        conf = os.path.join(etc, "mosquitto.conf")
        assert "user root" not in open(conf).read()
        mosquitto_unit = unit_service("fedmq-mosquitto.service")
        os.makedirs(os.path.join(state, "run"))  # RuntimeDirectory=
        os.chown(os.path.join(state, "run"), uid, gid)
        subprocess.run(["runuser", "-u", service_user, "--", *mapped(mosquitto_unit["ExecStartPre"], paths_map)],
                       check=True)
        procs.append(as_user(service_user, mapped(mosquitto_unit["ExecStart"], paths_map),
                             os.path.join(base, "fedmq-mosquitto.log")))
        wait_for(lambda: port_open(fed_port), 10, "the federation's Mosquitto")

        procs += [fedmq(["node", "run", paths[n]], os.path.join(base, f"{n}.log")) for n in ("a1", "a2")]
        log = os.path.join(base, "coordinator.log")
        run = mapped(unit_service("fedmq-coordinator.service")["ExecStart"], paths_map)
        coordinator = as_user(service_user, run, log, cwd=state)
        procs.append(coordinator)
        client.round_trip(home_port, b'{"temperature": 21.7}')  # while the federation runs
        assert coordinator.wait(120) == 0, open(log).read()
        text = open(log).read()
        assert "Traceback" not in text and "round   2" in text
        checkpoints = os.path.join(state, "checkpoints")
        assert os.path.isdir(checkpoints) and os.stat(checkpoints).st_uid == uid
        assert not os.path.exists(os.path.join(etc, "checkpoints"))

        # The monitor reads the round summaries as deploy.md shows.
        paths_map.update({"<host>": "localhost", "<the topic map's port>": str(fed_port)})
        metrics = subprocess.run([*deploy_md_command("mosquitto_sub", paths_map), "-C", "1", "-W", "10"],
                                 capture_output=True, text=True, timeout=30)
        assert metrics.returncode == 0 and '"round"' in metrics.stdout, metrics.stderr

        # Started again (a supervisor's restart), it finds every round done and exits 0 at once.
        again = as_user(service_user, run, os.path.join(base, "again.log"), cwd=state)
        procs.append(again)
        assert again.wait(60) == 0
        assert "already done" in open(os.path.join(base, "again.log")).read()

        # The home's broker and its client never noticed.
        client.round_trip(home_port, b'{"temperature": 21.9}')
        assert open(home_conf).read().startswith(f"listener {home_port}")
    finally:
        if client is not None:
            client.close()
        stop(procs)
        home_broker.terminate()
        home_broker.wait(10)
