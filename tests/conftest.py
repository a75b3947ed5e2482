"""Shared fixtures: a real Mosquitto per test (testcontainers where a Docker engine answers, else a
local mosquitto process on a free loopback port), and helpers to write federations."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

from fedhelp import ROOT, deploy_md_install
from fedmq.broker.process import MosquittoProcess


@dataclass
class Broker:
    """Where a test's broker listens, and (for a local process) the process to restart or kill."""

    host: str
    port: int
    process: "MosquittoProcess | None" = None


def _docker_mosquitto() -> "Iterator[Broker] | None":
    try:
        import docker  # type: ignore[import-untyped]

        docker.from_env().ping()
    except Exception:  # no engine: the docker CLI may exist without a daemon (see platform notes)
        return None
    from testcontainers.mqtt import MosquittoContainer  # type: ignore[import-untyped]

    def gen() -> Iterator[Broker]:
        with MosquittoContainer() as c:
            yield Broker(c.get_container_host_ip(), int(c.get_exposed_port(c.MQTT_PORT)))

    return gen()


@pytest.fixture
def broker(tmp_path) -> Iterator[Broker]:
    """A fresh real broker for one test: testcontainers' Mosquitto where a Docker engine answers
    (unless FEDMQ_TEST_LOCAL_BROKER is set), else a local mosquitto process with fedmq's config."""
    gen = None if os.environ.get("FEDMQ_TEST_LOCAL_BROKER") else _docker_mosquitto()
    if gen is not None:
        yield from gen
        return
    yield from _local(tmp_path)


@pytest.fixture
def local_broker(tmp_path) -> Iterator[Broker]:
    """A local mosquitto process (for tests that restart or kill the broker)."""
    yield from _local(tmp_path)


def _local(tmp_path) -> Iterator[Broker]:
    proc = MosquittoProcess(str(tmp_path / "mosquitto")).start()
    try:
        yield Broker(proc.host, proc.port, proc)
    finally:
        proc.stop()


@pytest.fixture(scope="session")
def coordinator_venv():
    """/opt/fedmq/venv as deploy.md makes it: the system's python3 (any user may run it), the documented
    pip install, in a directory every user can read."""
    base = tempfile.mkdtemp(prefix="fedmq-venv-", dir="/tmp")
    os.chmod(base, 0o755)
    d = Path(base) / "venv"
    python = "/usr/bin/python3" if os.access("/usr/bin/python3", os.X_OK) else sys.executable
    subprocess.run([python, "-m", "venv", str(d)], check=True, timeout=300)
    subprocess.run([str(d / "bin" / "pip"), "install", "-q", *deploy_md_install()], cwd=ROOT, check=True, timeout=900)
    yield d
    shutil.rmtree(base, ignore_errors=True)
