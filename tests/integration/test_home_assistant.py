"""Discovery against a real Home Assistant core (opt-in: it installs Home Assistant, Python 3.13 only).

    FEDMQ_HOMEASSISTANT=1 .venv/bin/pytest tests/integration/test_home_assistant.py

runs ``bench/ha_check.py``, which installs Home Assistant into its own virtual environment when missing
(``FEDMQ_HA_VENV``, default /var/tmp/fedmq-ha/venv) and checks the entities through its REST API.
"""

import os
import subprocess
import sys

import pytest

from fedhelp import ROOT

pytestmark = [pytest.mark.slow, pytest.mark.skipif(os.environ.get("FEDMQ_HOMEASSISTANT") != "1",
                                                   reason="opt-in: set FEDMQ_HOMEASSISTANT=1")]


@pytest.mark.timeout(1800)
def test_entities_in_a_real_home_assistant(tmp_path):
    venv = os.environ.get("FEDMQ_HA_VENV", "/var/tmp/fedmq-ha/venv")
    r = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "ha_check.py"), "--venv", venv, "--workdir",
                        str(tmp_path)], capture_output=True, text=True, timeout=1700)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "PASS" in r.stdout
