"""Mosquitto as a managed child process on a free loopback port (demo, tests, single-host setups)."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from typing import Optional

from fedmq.broker.config import BrokerConfig, render_config, starter_user

log = logging.getLogger("fedmq.broker")


class MosquittoNotFound(RuntimeError):
    """No mosquitto binary on this machine."""


def find_mosquitto() -> str:
    """Path of the mosquitto binary (it lives in /usr/sbin on Debian, often outside PATH)."""
    found = shutil.which("mosquitto") or next(
        (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if os.access(p, os.X_OK)), None)
    if not found:
        raise MosquittoNotFound("mosquitto is not installed: run ./install.sh, or 'apt-get install mosquitto'")
    return found


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (Mosquitto reads port 0 as a socket path, so pick one here)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


class MosquittoProcess:
    """Start, stop, kill and restart one Mosquitto with a rendered config in its own directory."""

    def __init__(self, workdir: Optional[str] = None, *, port: Optional[int] = None, bind: str = "127.0.0.1",
                 persistence: bool = True, max_packet_bytes: Optional[int] = None,
                 security_dir: Optional[str] = None, auth: str = "mtls", enrol: bool = False,
                 audit: bool = False) -> None:
        self.workdir = workdir or tempfile.mkdtemp(prefix="fedmq-mosquitto-")
        os.makedirs(self.workdir, exist_ok=True)
        self.config = BrokerConfig(port=port or 0, bind=bind,
                                   persistence_dir=self.workdir if persistence else None,
                                   log_file=os.path.join(self.workdir, "mosquitto.log"),
                                   security_dir=security_dir, auth=auth,
                                   pid_file=os.path.join(self.workdir, "mosquitto.pid"), audit=audit,
                                   user=starter_user())
        self._enrol = enrol
        if max_packet_bytes:
            self.config.max_packet_bytes = max_packet_bytes
        self._fixed_port = port is not None
        self.proc: Optional[subprocess.Popen] = None

    @property
    def host(self) -> str:
        """Address clients connect to."""
        return self.config.bind

    @property
    def port(self) -> int:
        """Port clients connect to."""
        return self.config.port

    @property
    def conf_path(self) -> str:
        """Path of the rendered mosquitto.conf."""
        return os.path.join(self.workdir, "mosquitto.conf")

    def start(self, timeout: float = 5.0, attempts: int = 5) -> "MosquittoProcess":
        """Render the config and start Mosquitto; retry on another port if the bind fails."""
        binary = find_mosquitto()
        for _ in range(attempts):
            if not self._fixed_port:
                self.config.port = free_port(self.config.bind)
                if self._enrol:
                    self.config.enrol_port = free_port(self.config.bind)
            with open(self.conf_path, "w", encoding="utf-8") as fh:
                fh.write(render_config(self.config))
            self.proc = subprocess.Popen([binary, "-c", self.conf_path], stdout=subprocess.DEVNULL,
                                         stderr=subprocess.PIPE, start_new_session=True)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and self.proc.poll() is None:
                if _accepts(self.host, self.port):
                    log.info("mosquitto pid %d listening on %s:%d", self.proc.pid, self.host, self.port)
                    return self
                time.sleep(0.02)
            err = self._tail()
            self.kill()
            if self._fixed_port or "in use" not in err:
                raise RuntimeError(f"mosquitto did not start on {self.host}:{self.port}: {err.strip()}")
        raise RuntimeError(f"mosquitto could not bind a free port after {attempts} attempts")

    def _tail(self) -> str:
        text = ""
        try:
            with open(self.config.log_file or "", encoding="utf-8", errors="replace") as fh:
                text = fh.read()[-2000:]
        except OSError:
            pass
        return text

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM (Mosquitto saves persistence), then SIGKILL after ``grace`` seconds."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(grace)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        """SIGKILL, no goodbye."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def restart(self, *, hard: bool = False) -> None:
        """Stop (or kill when ``hard``) and start again on the same port with the same persistence."""
        self.kill() if hard else self.stop()
        self._fixed_port = True
        self.start()

    def __enter__(self) -> "MosquittoProcess":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
