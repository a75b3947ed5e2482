"""Topic map validation: every error names file, line, key path and a fix."""

import subprocess
import sys
import textwrap

import pytest

from fedhelp import GOOD_TOPIC_MAP as GOOD
from fedmq.shared.topicmap import TopicMapError, load_topic_map, parse_topic_map


def issues(text):
    with pytest.raises(TopicMapError) as exc:
        parse_topic_map(textwrap.dedent(text), "fed.yaml")
    return exc.value.issues


def test_good_map_parses():
    tm = parse_topic_map(GOOD)
    groups = tm.groups()
    assert set(groups) == {(), ("kitchen",), ("site-a",), ("site-a", "building-1")}
    assert tm.group_of("k2").path == ("kitchen",)
    assert tm.group_of("b1-sensor-7").path == ("site-a", "building-1")
    assert tm.group_of("stranger") is None
    assert groups[("site-a", "building-1")].edge


def one(text, path, line, words):
    found = issues(text)
    match = [i for i in found if i.path == path]
    assert match, f"no issue at {path}: {found}"
    i = match[0]
    assert i.line == line and i.file == "fed.yaml" and i.fix, i
    assert words in i.message, i


def test_yaml_syntax_error_names_line():
    found = issues("federation: x\nmodel: [unclosed\ntree: {}\n")
    assert found[0].line in (2, 3) and "YAML" in found[0].message and found[0].fix


def test_unknown_key_with_suggestion():
    found = issues(GOOD.replace("rounds: 3", "roundz: 3"))
    assert found[0].path == "rounds.roundz" and found[0].line == 7 and "rounds" in found[0].fix


def test_wrong_type():
    one(GOOD.replace("rounds: 3", "rounds: many"), "rounds.rounds", 7, "must be an integer")


def test_duplicate_key_group():
    found = issues(GOOD.replace("    site-a:\n", "    kitchen:\n      nodes: [k9]\n    site-a:\n"))
    assert "duplicate key 'kitchen'" in found[0].message and found[0].line == 14


def test_duplicate_node_across_groups():
    one(GOOD.replace("nodes: [k1, k2]", "nodes: [k1, hub]"), "tree.groups.kitchen.nodes[1]", 13, "already named")


@pytest.mark.parametrize("bad", ["'a+b'", "'a#'", "'a/b'", "''", "_private"])
def test_invalid_topic_levels(bad):
    found = issues(GOOD.replace("kitchen:", f"{bad}:"))
    assert any("group name" in i.message and i.line == 12 for i in found), found


def test_invalid_node_id_and_federation():
    one(GOOD.replace("nodes: [k1, k2]", "nodes: [k1, 'k+2']"), "tree.groups.kitchen.nodes[1]", 13, "must not contain")
    one(GOOD.replace("federation: home", "federation: 'ho#me'"), "federation", 1, "must not contain")


def test_non_utf8_file(tmp_path):
    p = tmp_path / "fed.yaml"
    p.write_bytes(GOOD.encode().replace(b"hub", b"h\xffb"))
    with pytest.raises(TopicMapError) as exc:
        load_topic_map(str(p))
    assert exc.value.issues[0].line == 10 and "UTF-8" in exc.value.issues[0].message


def test_quorum_above_group_size():
    text = GOOD.replace('          admit: ["b1-*"]\n', "          nodes: [b1]\n").replace("quorum: 2", "quorum: 9")
    one(text, "rounds.quorum", 8, "above the 4 nodes")


def test_impossible_policies():
    one(GOOD.replace("quorum: 2", "quorum: 1.5"), "rounds.quorum", 8, "fractional quorum")
    one(GOOD.replace("quorum: 2", "min_nodes: 3\n  max_nodes: 2"), "rounds.max_nodes", 9, "below min_nodes")
    one(GOOD.replace("kind: softmax_regression", "kind: mlp"), "model.hidden", 3, "needs hidden")
    one(GOOD.replace("classes: [0, 1]", "classes: [0, 0]"), "model.classes", 5, "duplicate")


def test_many_errors_reported_together():
    text = GOOD.replace("rounds: 3", "rounds: -1").replace("features: 4", "features: x")
    assert len(issues(text)) >= 2


def test_validate_cli_exit_code_2_no_traceback(tmp_path):
    p = tmp_path / "fed.yaml"
    p.write_text(GOOD.replace("rounds: 3", "rounds: three"))
    r = subprocess.run([sys.executable, "-m", "fedmq.shared.cli", "validate", str(p)], capture_output=True, text=True)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert f"{p}:7: rounds.rounds: must be an integer" in r.stderr and "fix:" in r.stderr


def test_validate_cli_prints_tree(tmp_path):
    p = tmp_path / "fed.yaml"
    p.write_text(GOOD)
    r = subprocess.run([sys.executable, "-m", "fedmq.shared.cli", "validate", str(p)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "building-1  [edge process; admits: b1-*]" in r.stdout and "kitchen  [nodes: k1, k2]" in r.stdout


def test_section_of_the_wrong_kind_found_by_fuzzing():
    found = issues(GOOD + "limits: []\n")
    assert found[0].path == "limits" and "must be a mapping, not a list" in found[0].message


def test_guard_rails_are_configurable():
    tm = parse_topic_map(GOOD + "limits: {max_samples: 500, max_update_norm: 3.5, max_messages_per_node_s: 2,"
                                " message_burst: 4, max_tracked_nodes: 10}\n")
    assert (tm.limits.max_samples, tm.limits.max_update_norm, tm.limits.message_burst) == (500, 3.5, 4)
    one(GOOD + "limits: {max_update_norm: -1}\n", "limits.max_update_norm", 19, "at least 0")


def test_compression_and_transport_sections():
    tm = parse_topic_map(GOOD + "compression: {update: topk, topk_fraction: 0.02, model: float16}\n"
                                "transport: {max_payload_bytes: 131072, chunk_timeout_s: 30}\n")
    c = tm.compression.update
    got = (c.name, c.delta, c.fraction, c.error_feedback, tm.compression.model)
    assert got == ("topk", True, 0.02, True, "float16")
    assert (tm.transport.max_payload_bytes, tm.transport.chunk_timeout_s) == (131072, 30.0)
    raw = parse_topic_map(GOOD)
    assert (raw.compression.update.name, raw.compression.update.delta, raw.transport.max_payload_bytes) == (
        "raw",
        False,
        None,
    )
    one(GOOD + "compression: {update: topk, delta: false}\n", "compression", 19, "needs delta")
    one(GOOD + "compression: {update: zstd}\n", "compression.update", 19, "must be one of")
    one(GOOD + "compression: {model: int8}\n", "compression.model", 19, "must be one of")
    one(GOOD + "transport: {max_payload_bytes: 100}\n", "transport.max_payload_bytes", 19, "at least 1024")
    one(GOOD + "compression: {updte: int8}\n", "compression.updte", 19, "unknown key")
