"""fedmq's Mosquitto config and a home's stock Debian Mosquitto: the config is never written where the home
broker would include it (its conf.d), and the home broker keeps serving its own clients."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import paho.mqtt.client as mqtt

from fedhelp import port_open, wait_for, write_federation
from fedmq.broker.process import find_mosquitto, free_port

STOCK = """# Place your local configuration in {etc}/conf.d/
pid_file {run}/mosquitto.pid

persistence true
persistence_location {lib}/

log_dest file {log}/mosquitto.log

include_dir {etc}/conf.d
"""


def _home(tmp_path):
    """A home broker configured as Debian ships it, with the home's own listener (anonymous) in conf.d."""
    dirs = {k: tmp_path / k for k in ("etc", "run", "lib", "log")}
    for d in dirs.values():
        d.mkdir()
    (dirs["etc"] / "conf.d").mkdir()
    (dirs["etc"] / "mosquitto.conf").write_text(STOCK.format(**dirs))
    port = free_port()
    (dirs["etc"] / "conf.d" / "home.conf").write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\nuser root\n")
    return dirs["etc"], port


def _fedmq(*args, stdout=subprocess.PIPE):
    return subprocess.run([sys.executable, "-m", "fedmq.shared.cli", *args], stdout=stdout, stderr=subprocess.PIPE,
                          text=True, timeout=60)


def _home_client_works(port) -> bool:
    got, ready = [], threading.Event()
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="zigbee2mqtt", protocol=mqtt.MQTTv5)
    c.on_connect = lambda *a: ready.set()
    c.on_message = lambda cl, u, msg: got.append(msg.payload)
    c.connect("127.0.0.1", port)
    c.loop_start()
    try:
        if not ready.wait(10):
            return False
        c.subscribe("zigbee2mqtt/#", qos=1)
        time.sleep(0.3)
        c.publish("zigbee2mqtt/kitchen", b'{"temperature":21.4}', qos=1)
        end = time.monotonic() + 10
        while not got and time.monotonic() < end:
            time.sleep(0.05)
        return got == [b'{"temperature":21.4}']
    finally:
        c.loop_stop()
        c.disconnect()


def test_the_rendered_config_is_never_written_into_the_home_brokers_conf_d(tmp_path):
    etc, port = _home(tmp_path)
    paths = write_federation(str(tmp_path), free_port(), {"home1": ["a1"]})
    target = etc / "conf.d" / "fedmq.conf"
    r = _fedmq("broker", "render", paths["topic_map"], "--out", str(target))
    assert r.returncode == 2 and not target.exists()
    assert "conf.d" in r.stderr and "fedmq-mosquitto.service" in r.stderr and "Traceback" not in r.stderr
    with open(target, "w") as out:  # fedmq broker render FED.yaml > /etc/mosquitto/conf.d/fedmq.conf
        r = _fedmq("broker", "render", paths["topic_map"], stdout=out)
    assert r.returncode == 2 and target.read_text() == "" and "include_dir" in r.stderr
    target.unlink()

    home = subprocess.Popen([find_mosquitto(), "-c", str(etc / "mosquitto.conf")], stderr=subprocess.PIPE)
    try:
        wait_for(lambda: port_open(port) or home.poll() is not None, 20, "the home broker's listener")
        assert home.poll() is None, home.stderr.read() if home.stderr else ""
        assert _home_client_works(port)  # the home's broker and its own client, as before
    finally:
        home.terminate()
        home.wait(10)

    # why: the rendered config, put there anyway, stops the home broker from starting
    elsewhere = tmp_path / "fedmq.conf"
    assert _fedmq("broker", "render", paths["topic_map"], "--out", str(elsewhere),
                  "--persistence-dir", str(tmp_path / "data")).returncode == 0
    target.write_text(elsewhere.read_text())
    broken = subprocess.run([find_mosquitto(), "-c", str(etc / "mosquitto.conf")], capture_output=True, text=True,
                            timeout=20)
    assert broken.returncode != 0 and "Duplicate persistence_location" in broken.stderr + broken.stdout
