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
import signal
import subprocess
import tempfile
import threading
import time

import paho.mqtt.client as mqtt
import pytest

from fedhelp import checkpoint_state, fedmq, port_open, rewrite_yaml, stop, wait_for, write_federation
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
    """``argv`` run as ``user`` in a process group of its own (runuser forks: signal the group, not runuser)."""
    with open(log, "wb") as fh:
        return subprocess.Popen(["runuser", "-u", user, "--", *argv], stdout=fh, stderr=subprocess.STDOUT, cwd=cwd,
                                start_new_session=True)


def kill_group(proc, sig=signal.SIGKILL):
    """Signal a process started by ``as_user`` and what runuser started, then reap it."""
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass
    proc.wait(15)


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


class Deployment:
    """docs/deploy.md followed in a scratch directory: /etc/fedmq (root's), /var/lib/fedmq (the service
    user's, as StateDirectory= makes it), provisioned and rendered with deploy.md's own commands; the
    federation's Mosquitto and the coordinator start with the shipped units' command lines, as the user."""

    def __init__(self, base, user, venv, rounds):
        self.base, self.user, self.procs = base, user, []
        self.etc, self.state = os.path.join(base, "etc"), os.path.join(base, "state")
        os.makedirs(self.etc)
        os.makedirs(os.path.join(self.state, "run"))  # and RuntimeDirectory=
        self.uid, gid = pwd.getpwnam(user).pw_uid, pwd.getpwnam(user).pw_gid
        for d in (self.state, os.path.join(self.state, "run")):
            os.chown(d, self.uid, gid)
            os.chmod(d, 0o750)
        self.port = free_port()
        self.paths = write_federation(self.etc, self.port, {"home1": ["a1", "a2"]}, rounds=rounds, deadline_s=10)
        rewrite_yaml(self.paths["topic_map"], lambda fed: fed.update(checkpoint={"dir": "checkpoints"}))
        self.sec = os.path.join(self.etc, "security")
        self.paths_map = {"/etc/fedmq/federation.yaml": self.paths["topic_map"], "/etc/fedmq": self.etc,
                          "/var/lib/fedmq": self.state, "/run/fedmq": os.path.join(self.state, "run"),
                          "/opt/fedmq/venv/bin/fedmq": str(venv / "bin" / "fedmq"), "${STATE_DIRECTORY}": self.state,
                          "<the host's LAN name or IP>": "localhost", "--owner fedmq": f"--owner {user}",
                          "<host>": "localhost", "<the topic map's port>": str(self.port)}
        subprocess.run(self.command("broker provision"), check=True, capture_output=True, timeout=60)
        for pid in ("coordinator", "a1", "a2"):
            sections = client_config(self.sec, pid)

            def change(cfg, sections=sections, pid=pid):
                cfg["broker"].update(sections["broker"])
                cfg["security"] = {**sections["security"], **({"signatures": True} if pid == "coordinator" else {})}

            rewrite_yaml(self.paths["topic_map" if pid == "coordinator" else pid], change)
        subprocess.run(self.command("broker render /etc/fedmq/federation.yaml --security"), check=True,
                       capture_output=True, timeout=60)
        self.checkpoints = os.path.join(self.state, "checkpoints")

    def command(self, what):
        """deploy.md's command that contains ``what``, in this deployment's directories."""
        return deploy_md_command(what, self.paths_map)

    def start_mosquitto(self, log="fedmq-mosquitto.log"):
        unit = unit_service("fedmq-mosquitto.service")
        subprocess.run(["runuser", "-u", self.user, "--", *mapped(unit["ExecStartPre"], self.paths_map)], check=True)
        proc = as_user(self.user, mapped(unit["ExecStart"], self.paths_map), os.path.join(self.base, log))
        self.procs.append(proc)
        wait_for(lambda: port_open(self.port), 10, "the federation's Mosquitto")
        return proc

    def start_coordinator(self, log):
        proc = as_user(self.user, mapped(unit_service("fedmq-coordinator.service")["ExecStart"], self.paths_map),
                       os.path.join(self.base, log), cwd=self.state)
        self.procs.append(proc)
        return proc

    def start_nodes(self):
        self.nodes = [fedmq(["node", "run", self.paths[n]], os.path.join(self.base, f"{n}.log")) for n in ("a1", "a2")]

    def log(self, name):
        return open(os.path.join(self.base, name), encoding="utf-8", errors="replace").read()

    def close(self):
        for proc in self.procs:
            if proc.poll() is None:
                kill_group(proc, signal.SIGTERM)
        stop(getattr(self, "nodes", []))


def test_coordinator_and_its_mosquitto_as_a_service_user_beside_the_homes_mosquitto(coordinator_venv, service_user,
                                                                                    base):
    # The home: its Mosquitto, its configuration, an anonymous client on its own topics.
    home = os.path.join(base, "home")
    os.makedirs(home)
    home_port = free_port()
    home_conf = os.path.join(home, "mosquitto.conf")
    with open(home_conf, "w") as fh:
        fh.write(f"listener {home_port} 127.0.0.1\nallow_anonymous true\npersistence false\nlog_dest stderr\n")
    home_broker = subprocess.Popen([find_mosquitto(), "-c", home_conf], stderr=subprocess.DEVNULL)
    client = dep = None
    try:
        wait_for(lambda: port_open(home_port), 10, "the home's Mosquitto")
        client = HomeClient(home_port)
        client.round_trip(home_port, b'{"temperature": 21.5}')

        # fedmq beside it: provisioned for the service user, its own broker on its own port.
        dep = Deployment(base, service_user, coordinator_venv, rounds=2)
        assert subprocess.run(dep.command("fedmq validate"), capture_output=True, timeout=60).returncode == 0
        assert all(os.stat(os.path.join(r, f)).st_uid == dep.uid for r, _, fs in os.walk(dep.sec) for f in fs)
        assert "user root" not in open(os.path.join(dep.etc, "mosquitto.conf")).read()
        dep.start_mosquitto()
        dep.start_nodes()
        coordinator = dep.start_coordinator("coordinator.log")
        client.round_trip(home_port, b'{"temperature": 21.7}')  # while the federation runs
        assert coordinator.wait(120) == 0, dep.log("coordinator.log")
        text = dep.log("coordinator.log")
        assert "Traceback" not in text and "round   2" in text
        assert os.path.isdir(dep.checkpoints) and os.stat(dep.checkpoints).st_uid == dep.uid
        assert not os.path.exists(os.path.join(dep.etc, "checkpoints"))

        # The monitor reads the round summaries as deploy.md shows.
        metrics = subprocess.run([*dep.command("mosquitto_sub"), "-C", "1", "-W", "10"], capture_output=True,
                                 text=True, timeout=30)
        assert metrics.returncode == 0 and '"round"' in metrics.stdout, metrics.stderr

        # Started again (a supervisor's restart), it finds every round done and exits 0 at once.
        assert dep.start_coordinator("again.log").wait(60) == 0
        assert "already done" in dep.log("again.log")

        # The home's broker and its client never noticed.
        client.round_trip(home_port, b'{"temperature": 21.9}')
        assert open(home_conf).read().startswith(f"listener {home_port}")
    finally:
        if client is not None:
            client.close()
        if dep is not None:
            dep.close()
        home_broker.terminate()
        home_broker.wait(10)


def test_the_service_survives_sigkill_and_refuses_a_second_coordinator(coordinator_venv, service_user, base):
    """The attack and the faults of the service layout: another local user cannot read the service's keys; a
    second coordinator on the same state directory is refused (exit 2, which the unit does not restart); the
    coordinator and its Mosquitto, both SIGKILLed mid-run and started again as the user, finish every round
    from the checkpoint and the persistence file they own."""
    rounds = 30
    dep = Deployment(base, service_user, coordinator_venv, rounds=rounds)
    try:
        for secret in ("clients/coordinator.sign", "clients/coordinator.key", "ca.key", "passwords"):
            peek = subprocess.run(["runuser", "-u", "nobody", "--", "cat", os.path.join(dep.sec, secret)],
                                  capture_output=True)
            assert peek.returncode != 0 and not peek.stdout, secret
        broker = dep.start_mosquitto()
        dep.start_nodes()
        first = dep.start_coordinator("first.log")
        wait_for(lambda: (checkpoint_state(dep.checkpoints) or {}).get("rounds_done", 0) >= 2, 120,
                 "two rounds checkpointed")
        second = dep.start_coordinator("second.log")
        assert second.wait(60) == 2, dep.log("second.log")
        assert "in use by another coordinator" in dep.log("second.log")
        assert first.poll() is None, dep.log("first.log")  # still running: the kill below lands mid-federation
        kill_group(first)
        kill_group(broker)
        done = checkpoint_state(dep.checkpoints)["rounds_done"]
        assert done < rounds
        dep.start_mosquitto("fedmq-mosquitto-2.log")
        again = dep.start_coordinator("again.log")
        assert again.wait(180) == 0, dep.log("again.log")
        assert f"resuming from checkpoint {dep.checkpoints}: {done} rounds done" in dep.log("again.log")
        assert checkpoint_state(dep.checkpoints)["rounds_done"] == rounds
        assert "Traceback" not in dep.log("again.log") + dep.log("fedmq-mosquitto-2.log")
    finally:
        dep.close()
