"""Offline gateway bundles: ``fedmq node bundle NODE.yaml --platform P --python X.Y --out FILE.tar.gz``.

A bundle holds the wheels of fedmq-shared, fedmq-node and their dependencies for one platform and Python
version, the node's configuration with its credentials (and its data file when present), a systemd unit
and an ``install.sh`` that installs everything into /opt/fedmq with no network and starts the service.

Where PyPI has no wheels for a platform (numpy and PyYAML on 32-bit ARM), the bundle relies on the
distribution's packages (python3-numpy, python3-yaml): the virtual environment sees the system's site
packages and install.sh says what to install if they are missing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass, field
from importlib import metadata
from importlib.resources import files
from typing import Callable, Dict, List, Optional, Tuple
from urllib.parse import unquote, urlparse

import yaml

PLATFORMS = ("x86_64", "aarch64", "armv7l")
GLIBC_TAGS = ("2014", "2_17", "2_24", "2_26", "2_27", "2_28", "2_31", "2_34")  # armv7l TFLite needs 2_34
SYSTEM_PACKAGES = {"armv7l": {"numpy": "python3-numpy", "yaml": "python3-yaml"}}
BASE = ["paho-mqtt>=2.1,<3", "PyYAML>=6", "numpy>=1.23"]
# The packages each node extra brings; one fetched without dependencies is installed on its own.
EXTRA_PACKAGES = {
    "tflite": ("tflite-runtime", "ai-edge-litert"),
    "sklearn": ("scikit-learn",),
    "secure": ("cryptography",),
}


class BundleError(RuntimeError):
    """A bundle that cannot be built; the message says why and what to do."""


@dataclass
class Plan:
    """What goes into a bundle for one platform: pip requirements (with dependencies), requirements
    fetched without dependencies, and modules the system must provide."""

    platform: str
    python: str
    extras: List[str]
    with_deps: List[str] = field(default_factory=list)
    without_deps: List[str] = field(default_factory=list)
    system: Dict[str, str] = field(default_factory=dict)


def plan(platform: str, python: str, extras: List[str]) -> Plan:
    """The requirement sets for ``platform`` (one of PLATFORMS) and the node extras wanted."""
    if platform not in PLATFORMS:
        raise BundleError(f"unknown platform {platform!r}; use one of {', '.join(PLATFORMS)}")
    p = Plan(platform, python, sorted(set(extras)))
    system = SYSTEM_PACKAGES.get(platform, {})
    p.system = dict(system)
    p.with_deps = [
        r
        for r in BASE
        if not (r.startswith("numpy") and "numpy" in system) and not (r.startswith("PyYAML") and "yaml" in system)
    ]
    for extra in p.extras:
        if extra == "tflite":
            if platform == "armv7l":  # LiteRT has no 32-bit ARM wheels; tflite-runtime needs numpy<2 (Debian's)
                p.without_deps.append("tflite-runtime>=2.14")
            else:
                p.with_deps.append("ai-edge-litert>=1.2")
        elif extra == "sklearn":
            if platform == "armv7l":
                raise BundleError(
                    "scikit-learn has no wheels for armv7l (nor has scipy); bundle the numpy or "
                    "tflite trainer for 32-bit ARM"
                )
            p.with_deps.append("scikit-learn>=1.2")
        elif extra == "secure":
            if platform == "armv7l":  # cryptography has armv7l wheels, its dependency cffi has none
                p.without_deps.append("cryptography>=41")
                p.system["cffi"] = "python3-cffi"
            else:
                p.with_deps.append("cryptography>=41")
        else:
            raise BundleError(f"unknown extra {extra!r}; use tflite, sklearn or secure")
    return p


def pip_platform_args(platform: str, python: str) -> List[str]:
    """pip options that select binary wheels for ``platform`` and CPython ``python`` (e.g. 3.11)."""
    nodot = python.replace(".", "")
    args = [
        "--only-binary=:all:",
        "--python-version",
        python,
        "--implementation",
        "cp",
        "--abi",
        f"cp{nodot}",
        "--abi",
        "abi3",
        "--abi",
        "none",
    ]
    for tag in GLIBC_TAGS:
        args += ["--platform", f"manylinux{tag}_{platform}" if tag == "2014" else f"manylinux_{tag}_{platform}"]
    return args + ["--platform", f"linux_{platform}", "--platform", "any"]


def source_dir(dist: str) -> str:
    """The source tree an installed fedmq distribution came from (installs from a checkout record it)."""
    try:
        info = metadata.distribution(dist).read_text("direct_url.json")
    except metadata.PackageNotFoundError:
        info = None
    url = json.loads(info).get("url", "") if info else ""
    path = unquote(urlparse(url).path) if url.startswith("file://") else ""
    if not path or not os.path.isfile(os.path.join(path, "pyproject.toml")):
        raise BundleError(
            f"cannot find the source of {dist}: build bundles from a fedmq checkout "
            "installed with ./install.sh (or pip install ./shared ./node)"
        )
    return path


def _pip(args: List[str], what: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pip", "--disable-pip-version-check", *args], capture_output=True, text=True
    )
    if done.returncode != 0:
        lines = [ln for ln in (done.stderr + done.stdout).splitlines() if not ln.startswith("WARNING: Location")]
        raise BundleError(f"{what} failed:\n" + "\n".join(lines[-15:]))


def fetch_wheels(p: Plan, wheels: str, log: Callable[[str], None] = print) -> None:
    """Build fedmq's own wheels and download every dependency's wheel for the target."""
    log("building the fedmq-shared and fedmq-node wheels...")
    _pip(
        ["wheel", "-q", "--no-deps", "-w", wheels, source_dir("fedmq-shared"), source_dir("fedmq-node")],
        "building fedmq's wheels",
    )
    target = pip_platform_args(p.platform, p.python)
    if p.with_deps:
        log(f"downloading wheels for {p.platform}, Python {p.python}: {', '.join(p.with_deps)}...")
        _pip(["download", "-q", "-d", wheels, *target, *p.with_deps], f"downloading wheels for {p.platform}")
    if p.without_deps:
        log(f"downloading {', '.join(p.without_deps)} without its dependencies...")
        _pip(
            ["download", "-q", "--no-deps", "-d", wheels, *target, *p.without_deps],
            f"downloading wheels for {p.platform}",
        )


def _copy_config(config_file: str, out_dir: str, include_data: bool) -> Tuple[str, List[str]]:
    """Copy the node config, every file it names (credentials, keys, data) into ``out_dir``, with paths
    rewritten relative to the copied config. Returns the config's new path and the files copied."""
    with open(config_file, encoding="utf-8") as fh:
        cfg = yaml.safe_load(fh)
    base = os.path.dirname(os.path.abspath(config_file))
    copied: List[str] = []

    def take(section: Optional[dict], key: str) -> None:
        if not isinstance(section, dict) or not isinstance(section.get(key), str):
            return
        src = section[key] if os.path.isabs(section[key]) else os.path.join(base, section[key])
        if not os.path.isfile(src):
            raise BundleError(f"{config_file}: {key} {section[key]!r} does not exist")
        name = os.path.basename(src)
        shutil.copy2(src, os.path.join(out_dir, name))
        section[key] = name
        copied.append(name)

    broker = cfg.get("broker") or {}
    take(broker.get("tls"), "ca_file")
    take(broker.get("tls"), "cert_file")
    take(broker.get("tls"), "key_file")
    take(broker, "password_file")
    take(cfg.get("security"), "keys")
    take(cfg.get("security"), "signing_key")
    data = cfg.get("data") or {}
    path = data.get("path")
    if (
        include_data
        and isinstance(path, str)
        and os.path.isfile(path if os.path.isabs(path) else os.path.join(base, path))
    ):
        take(data, "path")
    cfg["cache_dir"] = "cache"
    out = os.path.join(out_dir, "node.yaml")
    with open(out, "w", encoding="utf-8") as fh:
        yaml.safe_dump(cfg, fh, sort_keys=False)
    return out, copied


HARDENING = (files("fedmq.node") / "hardening.conf").read_text(encoding="utf-8")  # the sandbox of every fedmq unit
UNIT = """[Unit]
Description=fedmq node {node_id} (federation {federation})
Wants=network-online.target
After=network-online.target

[Service]
ExecStart=@PREFIX@/venv/bin/fedmq node run @PREFIX@/config/node.yaml
User=fedmq
Group=fedmq
Restart=on-failure
RestartSec=5
RestartPreventExitStatus=2
TimeoutStopSec=20
# the node's store of stream readings lives beside its configuration; the sandbox is the drop-in
# /etc/systemd/system/fedmq-.service.d/hardening.conf that install.sh puts next to this unit
ReadWritePaths=@PREFIX@/config

[Install]
WantedBy=multi-user.target
"""

INSTALL = r"""#!/bin/sh
# Install this fedmq node bundle with no network: a virtual environment in $PREFIX (default /opt/fedmq)
# from the wheels in this directory, the configuration, and (with systemd) the fedmq-node service.
# FEDMQ_PREFIX=DIR installs elsewhere; FEDMQ_NO_SYSTEMD=1 skips the service; FEDMQ_PYTHON picks the interpreter.
set -eu
HERE=$(cd "$(dirname "$0")" && pwd)
PREFIX="${FEDMQ_PREFIX:-/opt/fedmq}"
PY="${FEDMQ_PYTHON:-python3}"
WANT_PY="@PYTHON@"
WANT_ARCH="@PLATFORM@"
have_py=$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])') || { echo "fedmq: $PY not found" >&2; exit 1; }
if [ "$have_py" != "$WANT_PY" ]; then
  echo "fedmq: this bundle is for Python $WANT_PY, but $PY is $have_py; build one with --python $have_py" >&2; exit 1
fi
if [ "$(uname -m)" != "$WANT_ARCH" ] && [ -z "${FEDMQ_SKIP_ARCH_CHECK:-}" ]; then
  echo "fedmq: this bundle is for $WANT_ARCH, this machine is $(uname -m)" >&2; exit 1
fi
SYSTEM_MODULES="@SYSTEM_MODULES@"
VENV_OPTS=""
if [ -n "$SYSTEM_MODULES" ]; then
  VENV_OPTS="--system-site-packages"
  for m in $SYSTEM_MODULES; do
    "$PY" -c "import $m" 2>/dev/null || {
      echo "fedmq: PyPI has no $WANT_ARCH wheels for '$m'; install the distribution's package first: apt-get install @SYSTEM_PACKAGES@" >&2; exit 1; }
  done
fi
echo "fedmq: installing into $PREFIX (no network)"
mkdir -p "$PREFIX"
"$PY" -m venv $VENV_OPTS "$PREFIX/venv"
PIP_NO_INDEX=1 "$PREFIX/venv/bin/python" -m pip install -q --disable-pip-version-check --no-index --find-links "$HERE/wheels" "fedmq-node@EXTRAS@"
for req in @NO_DEPS@; do
  PIP_NO_INDEX=1 "$PREFIX/venv/bin/python" -m pip install -q --disable-pip-version-check --no-index --no-deps --find-links "$HERE/wheels" "$req"
done
mkdir -p "$PREFIX/config"
cp -R "$HERE/config/." "$PREFIX/config/"
chmod 600 "$PREFIX/config/"*.key "$PREFIX/config/"*.sign "$PREFIX/config/"*password* 2>/dev/null || true
"$PREFIX/venv/bin/fedmq" node check "$PREFIX/config/node.yaml" >/dev/null || echo "fedmq: warning: 'fedmq node check' reports a problem (missing data?)" >&2
if [ -z "${FEDMQ_NO_SYSTEMD:-}" ] && command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
  id fedmq >/dev/null 2>&1 || useradd --system --home-dir "$PREFIX" --shell /usr/sbin/nologin fedmq
  chown -R fedmq:fedmq "$PREFIX/config"
  sed "s#@PREFIX@#$PREFIX#g" "$HERE/fedmq-node.service" > /etc/systemd/system/fedmq-node.service
  mkdir -p /etc/systemd/system/fedmq-.service.d
  cp "$HERE/hardening.conf" /etc/systemd/system/fedmq-.service.d/hardening.conf
  systemctl daemon-reload
  systemctl enable --now fedmq-node.service
  echo "fedmq: service fedmq-node enabled and started (journalctl -u fedmq-node -f)"
else
  echo "fedmq: installed; start the node with: $PREFIX/venv/bin/fedmq node run $PREFIX/config/node.yaml"
fi
"""


def build(
    config_file: str, platform: str, python: str, out: str, extras: List[str], include_data: bool = True,
    log: Callable[[str], None] = print,
) -> Plan:
    """Write the bundle ``out`` (.tar.gz); returns the plan it followed."""
    from fedmq.node.config import load_node_config

    cfg = load_node_config(config_file)  # a bad config fails here, with file, line and fix
    p = plan(platform, python, extras)
    name = f"fedmq-node-{cfg.node_id}"
    with tempfile.TemporaryDirectory(prefix="fedmq-bundle-") as tmp:
        root = os.path.join(tmp, name)
        for d in ("wheels", "config"):
            os.makedirs(os.path.join(root, d))
        fetch_wheels(p, os.path.join(root, "wheels"), log)
        _, copied = _copy_config(config_file, os.path.join(root, "config"), include_data)
        with open(os.path.join(root, "fedmq-node.service"), "w", encoding="utf-8") as fh:
            fh.write(UNIT.format(node_id=cfg.node_id, federation=cfg.federation))
        with open(os.path.join(root, "hardening.conf"), "w", encoding="utf-8") as fh:
            fh.write(HARDENING)
        resolved = [e for e in p.extras if not any(r.split(">")[0] in EXTRA_PACKAGES[e] for r in p.without_deps)]
        script = (
            INSTALL.replace("@PYTHON@", python)
            .replace("@PLATFORM@", platform)
            .replace("@SYSTEM_MODULES@", " ".join(sorted(p.system)))
            .replace("@SYSTEM_PACKAGES@", " ".join(sorted(p.system.values())))
            .replace("@EXTRAS@", f"[{','.join(resolved)}]" if resolved else "")
            .replace("@NO_DEPS@", " ".join(f"'{r}'" for r in p.without_deps))
        )
        path = os.path.join(root, "install.sh")
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(script)
        os.chmod(path, 0o755)
        with open(os.path.join(root, "MANIFEST.json"), "w", encoding="utf-8") as fh:
            json.dump(
                {
                    "node_id": cfg.node_id,
                    "federation": cfg.federation,
                    "platform": platform,
                    "python": python,
                    "extras": p.extras,
                    "system_packages": sorted(p.system.values()),
                    "wheels": sorted(os.listdir(os.path.join(root, "wheels"))),
                    "config_files": copied,
                },
                fh,
                indent=1,
            )
        with tarfile.open(out, "w:gz") as tar:
            tar.add(root, arcname=name)
    if p.system:
        log(
            f"note: {platform} has no PyPI wheels for {', '.join(sorted(p.system))}: the gateway needs "
            f"apt-get install {' '.join(sorted(p.system.values()))} (install.sh checks and says so)"
        )
    return p
