"""Installed size of each fedmq flavour: each installed with pip into a fresh virtual environment, measured
as the bytes its site-packages gained over an empty environment's, and the packages it added.

Usage: .venv/bin/python bench/install_sizes.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from typing import List, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAVOURS: List[Tuple[str, List[str]]] = [
    ("gateway (numpy trainers)", ["./shared", "./node"]),
    ("gateway with TFLite and signatures", ["./shared", "./node[tflite,secure]"]),
    ("coordinator (lean)", ["./shared", "./broker", "./coordinator"]),
    ("coordinator [dp]", ["./shared", "./broker", "./coordinator[dp]"]),
    ("coordinator [tflite]", ["./shared", "./broker", "./coordinator[tflite]"]),
    ("coordinator [demo]", ["./shared", "./broker", "./coordinator[demo]"]),
    ("coordinator [all]", ["./shared", "./broker", "./coordinator[all]"]),
]


def site_packages(venv: str) -> str:
    """The environment's site-packages directory."""
    out = subprocess.run(
        [os.path.join(venv, "bin", "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return out.strip()


def size(path: str) -> int:
    """Bytes of every file under ``path``."""
    return sum(
        os.path.getsize(os.path.join(r, f))
        for r, _, fs in os.walk(path)
        for f in fs
        if not os.path.islink(os.path.join(r, f))
    )


def packages(venv: str) -> set:
    """Names of the installed distributions."""
    out = subprocess.run(
        [os.path.join(venv, "bin", "python"), "-m", "pip", "list", "--format", "json"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return {p["name"].lower() for p in json.loads(out)}


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="fedmq-sizes-") as tmp:
        empty = os.path.join(tmp, "empty")
        subprocess.run([sys.executable, "-m", "venv", empty], check=True)
        base_size, base_packages = size(site_packages(empty)), packages(empty)
        print(f"{'flavour':<38} {'pip install':<44} {'MB':>7} {'packages':>9}")
        for name, args in FLAVOURS:
            venv = os.path.join(tmp, name.split()[0] + str(len(os.listdir(tmp))))
            subprocess.run([sys.executable, "-m", "venv", venv], check=True)
            subprocess.run(
                [os.path.join(venv, "bin", "pip"), "install", "-q", *args],
                cwd=ROOT,
                check=True,
                stderr=subprocess.DEVNULL,
            )
            added = packages(venv) - base_packages
            mb = (size(site_packages(venv)) - base_size) / 1e6
            print(f"{name:<38} {' '.join(args):<44} {mb:>7.1f} {len(added):>9}", flush=True)


if __name__ == "__main__":
    main()
