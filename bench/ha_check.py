"""Check fedmq's Home Assistant discovery against a real Home Assistant core.

Installs Home Assistant (PyPI ``homeassistant``, which needs Python 3.13) into its own virtual environment
unless it is there already, starts a private Mosquitto and Home Assistant with its MQTT integration on it,
runs a real federation of two simulated homes whose gateways serve their occupancy prediction, and checks
through Home Assistant's REST API that:

* each gateway is a device with the prediction (binary_sensor, device_class occupancy) and the diagnostic
  entities, with the states the nodes publish (model version = the federation's last round);
* a node stopped with SIGTERM makes its entities unavailable, and started again with no coordinator running
  it serves again from its saved copy of the model;
* a SIGKILLed node's entities become unavailable through its MQTT last will;
* a gateway whose ``device_id`` changed moves its entities to the new device (the old configs removed), and
  Home Assistant logs no duplicate unique id and no template warning.

    .venv/bin/python bench/ha_check.py [--venv DIR] [--python PYTHON3.13] [--workdir DIR]

Exit code 0 when every check passes; each check prints one line with the time it took.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Callable, Dict, List, Optional

import yaml

from fedmq.broker.process import MosquittoProcess
from fedmq.coordinator.sim.homes import Simulation
from fedmq.coordinator.sim.publish import Publisher
from fedmq.coordinator.sim.scenario import TASKS, node_config, width
from fedmq.shared.mqtt import MqttLink
from fedmq.shared.topicmap.model import BrokerSettings

HA_VERSION = "2025.4.4"  # the newest that runs on Python 3.13.0
PERIOD_S = 300.0
ROUNDS = 3
FEDERATION = "ha-check"


def free_port() -> int:
    """A free TCP port on the loopback interface."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ensure_venv(venv: str, python: str) -> str:
    """Home Assistant's ``hass`` in ``venv``, installed (with the MQTT integration's paho-mqtt pin and the
    frontend it pins) when missing."""
    hass = os.path.join(venv, "bin", "hass")
    if os.path.exists(hass):
        return hass
    print(f"installing Home Assistant {HA_VERSION} into {venv} (a few minutes)...", flush=True)
    subprocess.run([python, "-m", "venv", venv], check=True)
    pip = [os.path.join(venv, "bin", "pip"), "install", "-q"]
    subprocess.run([*pip, f"homeassistant=={HA_VERSION}", "paho-mqtt==2.1.0"], check=True)
    site = subprocess.run([os.path.join(venv, "bin", "python"), "-c", "import homeassistant, os; "
                           "print(os.path.dirname(homeassistant.__file__))"], check=True, capture_output=True,
                          text=True).stdout.strip()
    with open(os.path.join(site, "package_constraints.txt"), encoding="utf-8") as fh:
        frontend = next(line.strip() for line in fh if line.startswith("home-assistant-frontend"))
    subprocess.run([*pip, frontend], check=True)
    return hass


class HomeAssistant:
    """A Home Assistant core process with a configuration of its own, driven through its REST API."""

    def __init__(self, hass: str, workdir: str) -> None:
        self.config_dir = os.path.join(workdir, "ha")
        os.makedirs(self.config_dir, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        with open(os.path.join(self.config_dir, "configuration.yaml"), "w", encoding="utf-8") as fh:
            yaml.safe_dump({"homeassistant": {"name": "fedmq check", "time_zone": "UTC", "unit_system": "metric"},
                            "http": {"server_host": "127.0.0.1", "server_port": self.port}, "api": None}, fh)
        self.log = open(os.path.join(workdir, "ha.log"), "wb")
        self.proc = subprocess.Popen([hass, "-c", self.config_dir, "--skip-pip"], stdout=self.log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        self.token = ""

    def request(self, method: str, path: str, body: Optional[Dict[str, Any]] = None, form: bool = False) -> Any:
        """One REST call; the decoded JSON answer."""
        data = None
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        if body is not None:
            data = (urllib.parse.urlencode(body) if form else json.dumps(body)).encode()
            headers["Content-Type"] = "application/x-www-form-urlencoded" if form else "application/json"
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        with urllib.request.urlopen(req, timeout=30) as resp:
            text = resp.read().decode()
        return json.loads(text) if text else None

    def onboard(self) -> None:
        """Create the owner and take a token (the onboarding API, as the first browser visit does)."""
        wait_for(lambda: self._answers(), 120, "Home Assistant answers HTTP")
        client = self.url + "/"
        code = self.request("POST", "/api/onboarding/users", {"client_id": client, "name": "fedmq",
                                                                "username": "fedmq", "password": "fedmq-check-1",
                                                                "language": "en"})["auth_code"]
        self.token = self.request("POST", "/auth/token", {"grant_type": "authorization_code", "code": code,
                                                          "client_id": client}, form=True)["access_token"]

    def _answers(self) -> bool:
        try:
            urllib.request.urlopen(self.url + "/api/onboarding", timeout=2).read()
            return True
        except (urllib.error.URLError, ConnectionError, OSError):
            return False

    def add_mqtt(self, host: str, port: int) -> None:
        """Set up the MQTT integration on the test broker (the config-entry flow the UI runs)."""
        flow = self.request("POST", "/api/config/config_entries/flow", {"handler": "mqtt"})
        while flow.get("type") == "form":
            answer = {"broker": host, "port": port} if flow.get("step_id") == "broker" else {}
            flow = self.request("POST", f"/api/config/config_entries/flow/{flow['flow_id']}", answer)
        if flow.get("type") != "create_entry":
            raise RuntimeError(f"the MQTT config flow ended with {flow}")

    def state(self, entity_id: str) -> Optional[Dict[str, Any]]:
        """An entity's state object, or None when Home Assistant has no such entity."""
        try:
            return self.request("GET", f"/api/states/{entity_id}")
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            raise

    def template(self, text: str) -> str:
        """Render a template (how the device registry is read over REST)."""
        req = urllib.request.Request(self.url + "/api/template", data=json.dumps({"template": text}).encode(),
                                     method="POST", headers={"Authorization": f"Bearer {self.token}",
                                                             "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.read().decode()

    def stop(self) -> None:
        """Stop Home Assistant."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()


def wait_for(check: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll ``check`` until it returns something true; RuntimeError naming ``what`` after ``timeout``."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = check()
        if value:
            return value
        time.sleep(0.25)
    raise RuntimeError(f"timed out after {timeout:g} s waiting until {what}")


class Federation:
    """Two simulated homes' gateways (serving) and a coordinator, as real processes on a private Mosquitto."""

    def __init__(self, workdir: str, broker: BrokerSettings) -> None:
        self.workdir = workdir
        self.broker = broker
        self.sim = Simulation(2, 0, PERIOD_S, history_s=4 * 86400)
        self.homes = [h.name for h in self.sim.homes]
        self.configs: Dict[str, str] = {}
        self.nodes: Dict[str, subprocess.Popen] = {}
        for home in self.sim.homes:
            cfg = node_config(home, FEDERATION, broker, PERIOD_S,
                              store=os.path.join(workdir, f"{home.name}.sqlite"),
                              extra={"cache_dir": os.path.join(workdir, f"cache-{home.name}"), "trainer": "numpy",
                                     "serve": {"topic": f"fedmq/{home.name}/occupancy", "period_s": 1,
                                               "homeassistant": {"device_id": f"{home.name}_gateway",
                                                                 "device_name": f"{home.name} gateway",
                                                                 "name": "Occupancy", "device_class": "occupancy"}}})
            cfg["data"]["broker"]["keepalive_s"] = 5  # the last will fires within 7.5 s of a SIGKILL
            self.configs[home.name] = os.path.join(workdir, f"{home.name}.yaml")
            with open(self.configs[home.name], "w", encoding="utf-8") as fh:
                yaml.safe_dump(cfg, fh)
        self.topic_map = os.path.join(workdir, "federation.yaml")
        with open(self.topic_map, "w", encoding="utf-8") as fh:
            yaml.safe_dump(
                {
                    "federation": FEDERATION,
                    "broker": {"host": broker.host, "port": broker.port},
                    "model": {
                        "kind": "softmax_regression",
                        "features": width(TASKS["occupancy"][0]),
                        "classes": [0, 1],
                    },
                    "rounds": {
                        "rounds": ROUNDS,
                        "min_nodes": 2,
                        "deadline_s": 20,
                        "learning_rate": 0.1,
                        "local_epochs": 2,
                        "wait_for_nodes_s": 60,
                    },
                    "scaling": "federated",
                    "checkpoint": {"dir": os.path.join(workdir, "checkpoints")},
                    "tree": {"groups": {h: {"nodes": [f"{h}-gw"]} for h in self.homes}},
                },
                fh,
            )

    def start_node(self, home: str) -> None:
        """Start (or start again) the gateway of ``home``."""
        log = open(os.path.join(self.workdir, f"{home}.log"), "ab")
        self.nodes[home] = subprocess.Popen(
            [sys.executable, "-m", "fedmq.shared.cli", "-v", "node", "run", self.configs[home]],
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    def move(self, home: str, device_id: str, device_name: str) -> None:
        """Stop the gateway of ``home``, give it another Home Assistant device id, and start it again."""
        self.nodes[home].send_signal(signal.SIGTERM)
        self.nodes[home].wait(30)
        with open(self.configs[home], encoding="utf-8") as fh:
            cfg = yaml.safe_load(fh)
        cfg["serve"]["homeassistant"].update(device_id=device_id, device_name=device_name)
        with open(self.configs[home], "w", encoding="utf-8") as fh:
            yaml.safe_dump(cfg, fh)
        self.start_node(home)

    def publish(self, seconds: float) -> None:
        """The homes' next ``seconds`` of sensor readings (and the clock), as fast as the broker takes them."""
        with Publisher(self.broker) as pub:
            pub.publish(list(self.sim.run(seconds)))

    def wait_until_serving(self) -> None:
        """Until every gateway published its first state (its data subscription is in place by then)."""
        link = MqttLink("fedmq-ha-check-wait", self.broker, persistent=False)
        for home in self.homes:
            link.subscribe(f"fedmq/{home}/occupancy/state")
        link.start()
        seen = set()
        try:
            end = time.monotonic() + 60
            while len(seen) < len(self.homes) and time.monotonic() < end:
                msg = link.get(timeout=0.5)
                if msg is not None:
                    seen.add(msg.topic)
        finally:
            link.stop()
        if len(seen) < len(self.homes):
            raise RuntimeError(f"only {len(seen)} of {len(self.homes)} gateways serve after 60 s")

    def train(self) -> None:
        """Publish the homes' sensor history and run the coordinator to the end."""
        self.wait_until_serving()
        self.publish(4 * 86400)
        with open(os.path.join(self.workdir, "coordinator.log"), "wb") as log:
            subprocess.run(
                [sys.executable, "-m", "fedmq.shared.cli", "coordinator", "run", self.topic_map, "--fresh", "--quiet"],
                stdout=log,
                stderr=subprocess.STDOUT,
                check=True,
                timeout=300,
            )

    def stop(self) -> None:
        """Stop every node left."""
        for proc in self.nodes.values():
            if proc.poll() is None:
                proc.terminate()
                proc.wait(30)


def main(argv: Optional[List[str]] = None) -> int:
    """Run every check; 0 when all pass."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--venv",
        default="/var/tmp/fedmq-ha/venv",
        help="Home Assistant's virtual environment (created when missing; default /var/tmp/fedmq-ha/venv)",
    )
    p.add_argument(
        "--python",
        default=shutil.which("python3.13") or "/root/.pyenv/versions/3.13.0/bin/python",
        help="the Python 3.13 to create it with",
    )
    p.add_argument("--workdir", help="keep configurations and logs here (default: a temporary directory)")
    args = p.parse_args(argv)
    hass = ensure_venv(args.venv, args.python)
    workdir = args.workdir or tempfile.mkdtemp(prefix="fedmq-ha-")
    os.makedirs(workdir, exist_ok=True)
    broker_proc = MosquittoProcess(os.path.join(workdir, "broker")).start()
    ha = HomeAssistant(hass, workdir)
    fed = Federation(workdir, BrokerSettings(host=broker_proc.host, port=broker_proc.port))
    t0 = time.monotonic()

    def check(text: str, fn: Callable[[], Any], timeout: float = 60) -> Any:
        started = time.monotonic()
        value = wait_for(fn, timeout, text)
        print(f"ok  {text} ({time.monotonic() - started:.1f} s)", flush=True)
        return value

    def state_of(entity: str, *accepted: str) -> Callable[[], Any]:
        def get() -> Any:
            st = ha.state(entity)
            return st if st is not None and (not accepted or st["state"] in accepted) else None

        return get

    try:
        ha.onboard()
        ha.add_mqtt(broker_proc.host, broker_proc.port)
        print(f"Home Assistant on {ha.url} with MQTT on {broker_proc.host}:{broker_proc.port}", flush=True)
        for home in fed.homes:
            fed.start_node(home)
        fed.train()
        for home in fed.homes:
            pred = check(
                f"{home}: binary_sensor.{home}_gw_prediction is on or off",
                state_of(f"binary_sensor.{home}_gw_prediction", "on", "off"),
            )
            assert pred["attributes"].get("device_class") == "occupancy", pred
            assert "confidence" in pred["attributes"] and "probabilities" in pred["attributes"], pred
            check(
                f"{home}: sensor.{home}_gw_model_version is {ROUNDS}",
                state_of(f"sensor.{home}_gw_model_version", str(ROUNDS)),
            )
            check(f"{home}: sensor.{home}_gw_data_problem is none", state_of(f"sensor.{home}_gw_data_problem", "none"))
            samples = check(f"{home}: sensor.{home}_gw_samples has a number", state_of(f"sensor.{home}_gw_samples"))
            assert float(samples["state"]) > 0, samples
            accuracy = check(
                f"{home}: sensor.{home}_gw_local_accuracy is a percentage", state_of(f"sensor.{home}_gw_local_accuracy")
            )
            assert 0 <= float(accuracy["state"]) <= 100 and accuracy["attributes"]["unit_of_measurement"] == "%"
            device = ha.template(
                "{{ device_attr('binary_sensor.%s_gw_prediction', 'name') }}|"
                "{{ device_attr('binary_sensor.%s_gw_prediction', 'sw_version') }}|"
                "{{ device_entities(device_id('binary_sensor.%s_gw_prediction')) | length }}" % (home, home, home)
            )
            name, version, entities = device.split("|")
            assert name == f"{home} gateway" and version and int(entities) == 6, device
            print(f"ok  {home}: device {name!r} (fedmq {version}) with {entities} entities", flush=True)
        home = fed.homes[0]
        fed.nodes[home].send_signal(signal.SIGTERM)
        fed.nodes[home].wait(30)
        check(
            f"{home} stopped (SIGTERM): its prediction is unavailable",
            state_of(f"binary_sensor.{home}_gw_prediction", "unavailable"),
        )
        check(
            f"{home} stopped: its diagnostics are unavailable too",
            state_of(f"sensor.{home}_gw_model_version", "unavailable"),
        )
        fed.start_node(home)  # the coordinator has finished: the node serves its saved model
        check(f"{home} started again: online", state_of(f"sensor.{home}_gw_model_version", str(ROUNDS)))
        fed.publish(2 * 3600)  # the home's sensors go on publishing
        check(
            f"{home} started again with no coordinator: it predicts with its saved model",
            state_of(f"binary_sensor.{home}_gw_prediction", "on", "off"),
        )
        fed.nodes[home].kill()
        fed.nodes[home].wait(30)
        check(
            f"{home} SIGKILLed: its prediction is unavailable (MQTT last will)",
            state_of(f"binary_sensor.{home}_gw_prediction", "unavailable"),
            timeout=30,
        )
        other = fed.homes[1]
        check(f"{other} is not affected", state_of(f"binary_sensor.{other}_gw_prediction", "on", "off"), timeout=5)
        fed.move(other, f"{other}_hub", f"{other} hub")  # serve.homeassistant.device_id changed, node restarted
        check(f"{other} moved to device id {other}_hub: the device is renamed",
              lambda: ha.template("{{ device_attr('binary_sensor.%s_gw_prediction', 'name') }}" % other)
              == f"{other} hub")
        fed.publish(2 * 3600)  # its sensors go on publishing
        check(f"{other} moved: it predicts again", state_of(f"binary_sensor.{other}_gw_prediction", "on", "off"))
        log = open(os.path.join(ha.config_dir, "home-assistant.log"), encoding="utf-8", errors="replace").read()
        for trouble in ("does not generate unique IDs", "has no attribute", "is already used"):
            assert trouble not in log, f"Home Assistant's log says {trouble!r}"
        print("ok  Home Assistant logged no duplicate unique id and no template warning", flush=True)
        print(f"PASS: every Home Assistant check ({time.monotonic() - t0:.0f} s)")
        return 0
    except (RuntimeError, AssertionError, subprocess.SubprocessError, urllib.error.URLError) as exc:
        print(f"FAIL: {exc}\n(logs in {workdir})", file=sys.stderr)
        return 1
    finally:
        fed.stop()
        ha.stop()
        broker_proc.stop()
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
