"""docs/security.md's "From nothing to a secured federation", run as written (free ports instead of 8883 and
8884): the topic map, provisioning, the broker, tokens, validation and fedmq status as the monitor."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys

from fedhelp import ROOT, wait_for
from fedmq.broker.process import free_port


def _section() -> str:
    text = open(os.path.join(ROOT, "docs", "security.md"), encoding="utf-8").read()
    return text.split("## From nothing to a secured federation", 1)[1].split("\n## ", 1)[0]


def test_the_quick_start_works_as_written(tmp_path):
    section = _section()
    yaml_text = re.search(r"```yaml\n(.*?)```", section, re.S).group(1)
    commands = [c.split("  #", 1)[0].strip() for c in re.search(r"```sh\n(.*?)```", section, re.S).group(1)
                .splitlines() if c.strip()]
    port, enrol = free_port(), free_port()
    (tmp_path / "fed.yaml").write_text(yaml_text.replace("8883", str(port)))
    fedmq = [sys.executable, "-m", "fedmq.shared.cli"]
    broker = None
    try:
        for command in commands:
            words = shlex.split(command.replace("8884", str(enrol)).rstrip("&").strip())
            assert words[0] == "fedmq", command
            if command.endswith("&"):
                broker = subprocess.Popen(fedmq + words[1:], cwd=tmp_path, stdout=subprocess.PIPE,
                                          stderr=subprocess.STDOUT, text=True)
                wait_for(lambda: (tmp_path / "pki" / "mosquitto.pid").exists(), 20, "the broker's pid file")
                continue
            r = subprocess.run(fedmq + words[1:], cwd=tmp_path, capture_output=True, text=True, timeout=60)
            assert r.returncode == 0, (command, r.stdout, r.stderr)
        assert "federation home" in r.stdout and "gw1" in r.stdout  # fedmq status reached the broker
    finally:
        if broker is not None:
            broker.terminate()
            out = broker.communicate(timeout=20)[0]
            assert "Unable to" not in out and "Error" not in out, out
