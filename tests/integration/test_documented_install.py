"""The install commands of docs/deploy.md and the Dockerfiles, run as written in fresh virtual environments:
the coordinator installs lean (no demo, DP or TFLite-builder packages), and a feature whose extra is
missing says which extra to install."""

import os
import re
import shlex
import subprocess

import pytest

from fedhelp import deploy_md_install, dockerfile_steps

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
def dockerfile_install(name: str, extras: str = "") -> list:
    """The arguments of a Dockerfile's pip install with /src/X mapped to the repository's X; every X was
    copied into the image."""
    steps = dockerfile_steps(os.path.join(ROOT, "deploy", "docker", name))
    copied = {dst.rstrip("/") for i, arg in steps if i == "COPY" for _, dst in [arg.split()]}
    run = [arg for i, arg in steps if i == "RUN" and "pip install" in arg]
    assert len(run) == 1
    cmd = run[0].split("pip install", 1)[1].split("&&")[0].replace("${EXTRAS:+[$EXTRAS]}", extras)
    args = [a for a in shlex.split(cmd) if not a.startswith("--")]
    for a in args:
        src = re.sub(r"\[.*\]$", "", a)
        assert src in copied, f"{name} installs {src} without copying it into the image"
    return [os.path.relpath(os.path.join(ROOT, a[len("/src/"):]), ROOT) for a in args]


def test_the_dockerfile_installs_what_deploy_md_installs():
    assert sorted(dockerfile_install("coordinator.Dockerfile")) == sorted(
        os.path.normpath(a) for a in deploy_md_install()
    )
    assert sorted(dockerfile_install("node.Dockerfile")) == ["node", "shared"]


@pytest.mark.slow
def test_documented_coordinator_install_is_lean_and_names_missing_extras(coordinator_venv, tmp_path):
    fedmq = str(coordinator_venv / "bin" / "fedmq")
    freeze = subprocess.run(
        [str(coordinator_venv / "bin" / "pip"), "freeze"], capture_output=True, text=True, check=True
    ).stdout.lower()
    for heavy in ("scikit-learn", "matplotlib", "dp-accounting", "tflite=="):
        assert heavy not in freeze, heavy
    out = subprocess.run([fedmq, "--help"], capture_output=True, text=True, check=True)
    assert "coordinator" in out.stdout and "broker" in out.stdout and not out.stderr
    example = os.path.join(ROOT, "deploy", "examples", "smart-home.yaml")
    assert subprocess.run([fedmq, "validate", example], capture_output=True, timeout=60).returncode == 0
    demo = subprocess.run([fedmq, "demo", "--rounds", "1"], capture_output=True, text=True, timeout=60)
    assert demo.returncode == 2 and "pip install 'fedmq-coordinator[demo]'" in demo.stderr
    assert "Traceback" not in demo.stderr
    tflite = os.path.join(ROOT, "deploy", "examples", "tflite-sensors.yaml")
    build = subprocess.run(
        [fedmq, "coordinator", "build-model", tflite, "--out", str(tmp_path / "m.tflite")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert build.returncode == 2 and "pip install 'fedmq-coordinator[tflite]'" in build.stderr
    # the coordinator host is where models are exported: fedmq model export is there, tflite names its extra
    from fedmq.coordinator import checkpoint
    from fedmq.shared.models import initial_weights
    from fedmq.shared.topicmap import ModelSpec

    spec = ModelSpec("softmax_regression", 4, (0, 1))
    checkpoint.save(str(tmp_path / "ckpt"), "f", spec, initial_weights(spec), checkpoint.RoundState(1, 1))
    out = subprocess.run([fedmq, "model", "export", str(tmp_path / "ckpt"), "-o", str(tmp_path / "m.npz")],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and (tmp_path / "m.npz").exists(), out.stderr
    out = subprocess.run([fedmq, "model", "export", str(tmp_path / "ckpt"), "--format", "tflite", "-o",
                          str(tmp_path / "m.tflite")], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "pip install 'fedmq-coordinator[tflite]'" in out.stderr, out.stderr
