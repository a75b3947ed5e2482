"""The optional tf.Module -> .tflite script (needs TensorFlow; skipped where it is absent)."""

import os
import subprocess
import sys

import pytest

pytest.importorskip("tensorflow")
TOOLS = os.path.join(os.path.dirname(__file__), "..", "..", "deploy", "tools")


def test_example_module_converts_and_passes_the_check(tmp_path):
    out = tmp_path / "m.tflite"
    r = subprocess.run([sys.executable, os.path.join(TOOLS, "tf_module_to_tflite.py"),
                        os.path.join(TOOLS, "example_tf_module.py"), "--out", str(out)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    from fedmq.node.model_check import check_model

    assert check_model(out.read_bytes()).ok
