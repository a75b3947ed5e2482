"""Release metadata: one version everywhere, a changelog entry and a license for it, the protocol revision
that --version prints is the newest one docs/protocol.md describes."""

import os
import re
import subprocess
import sys

import tomllib

from fedmq.shared import PROTOCOL_REVISION, __version__

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DISTRIBUTIONS = ("shared", "broker", "node", "coordinator")


def pyproject(d):
    with open(os.path.join(ROOT, d, "pyproject.toml"), "rb") as fh:
        return tomllib.load(fh)["project"]


def test_one_version_everywhere():
    for d in DISTRIBUTIONS:
        project = pyproject(d)
        assert project["version"] == __version__, d
        pins = [r for r in project["dependencies"] if r.startswith("fedmq-")]
        assert all(r.endswith(f"=={__version__}") for r in pins), (d, pins)
        assert project["license"] == "Apache-2.0" and project["classifiers"] and project["readme"] == "README.md"
        assert os.path.samefile(os.path.join(ROOT, d, "LICENSE"), os.path.join(ROOT, "LICENSE"))
        assert len(open(os.path.join(ROOT, d, "README.md"), encoding="utf-8").read().splitlines()) > 5, d
    assert f"## {__version__} (protocol {PROTOCOL_REVISION})" in open(os.path.join(ROOT, "CHANGELOG.md")).read()
    assert "Apache License" in open(os.path.join(ROOT, "LICENSE")).read()


def test_set_version_rewrites_every_place(tmp_path, monkeypatch):
    sys.path.insert(0, os.path.join(ROOT, "deploy", "tools"))
    import set_version

    for path in set_version.places():
        target = tmp_path / path.relative_to(set_version.ROOT)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(path.read_text())
    monkeypatch.setattr(set_version, "ROOT", tmp_path)
    monkeypatch.setattr(set_version, "VERSION_FILE", tmp_path / set_version.VERSION_FILE.relative_to(ROOT))
    set_version.set_version("9.8.7")
    text = "".join(p.read_text() for p in set_version.places())
    assert __version__ not in text and text.count("9.8.7") == 4 + 5 + 1  # versions, pins, __version__


def test_version_names_the_newest_protocol_revision():
    out = subprocess.run([os.path.join(os.path.dirname(sys.executable), "fedmq"), "--version"], capture_output=True,
                         text=True, check=True).stdout
    assert out.strip() == f"fedmq {__version__} (protocol {PROTOCOL_REVISION})"
    revisions = re.findall(r"(?m)^\| (1\.\d+) \|", open(os.path.join(ROOT, "docs", "protocol.md")).read())
    assert revisions == sorted(revisions, key=lambda r: int(r.split(".")[1])) and revisions[-1] == PROTOCOL_REVISION
