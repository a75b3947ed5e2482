"""Two edge workers share one group's updates through an MQTT v5 shared subscription; the root's model is
the same as with one worker (the combined aggregate is exact)."""

import re

import numpy as np
import yaml

from fedhelp import FED, fedmq, stop, wait_online, write_federation
from fedmq.broker.process import MosquittoProcess
from fedmq.coordinator import checkpoint
from fedmq.shared.topicmap import load_topic_map

GROUPS = {"home1": ["a1", "a2", "a3", "a4", "a5", "a6"], "home2": ["b1", "b2"]}


def run(tmp_path, workers):
    with MosquittoProcess(str(tmp_path / "broker")) as broker:  # a fresh broker: no retained state from another run
        return _federation(tmp_path, broker.port, workers)


def _federation(tmp_path, port, workers):
    paths = write_federation(str(tmp_path), port, GROUPS, rounds=3, edge=["home1"])
    with open(paths["topic_map"]) as fh:
        fed = yaml.safe_load(fh)
    fed["tree"]["groups"]["home1"]["workers"] = workers
    with open(paths["topic_map"], "w") as fh:
        yaml.safe_dump(fed, fh)
    procs = [fedmq(["coordinator", "edge", paths["topic_map"], "--group", "home1", "--worker", str(w)],
                   str(tmp_path / f"worker{w}.log")) for w in range(workers)]
    procs += [fedmq(["node", "run", paths[n]], str(tmp_path / f"{n}.log")) for ns in GROUPS.values() for n in ns]
    wait_online(port, {n: (g,) for g, ns in GROUPS.items() for n in ns}, timeout=60)  # all in from round 1
    coord = fedmq(["coordinator", "run", paths["topic_map"]], str(tmp_path / "coord.log"))
    try:
        assert coord.wait(90) == 0, (tmp_path / "coord.log").read_text()[-3000:]
    finally:
        stop([coord, *procs])
    tm = load_topic_map(paths["topic_map"])
    weights, state = checkpoint.load(tm.checkpoint_dir, FED, tm.model)
    assert [r["updates"] for r in state.history] == [8, 8, 8]
    per_worker = [[int(k) for k in re.findall(r"closing \(all in\) with (\d+) of 6 nodes",
                                                (tmp_path / f"worker{w}.log").read_text())] for w in range(workers)]
    return weights, per_worker


def test_two_workers_split_a_group_and_the_aggregate_is_exact(tmp_path):
    split, per_worker = run(tmp_path / "two", 2)
    whole, _ = run(tmp_path / "one", 1)
    assert all(len(w) == 3 for w in per_worker), per_worker  # both workers closed every round ("all in")
    assert [a + b for a, b in zip(*per_worker)] == [6, 6, 6]  # each update aggregated once, by one worker
    assert sum(per_worker[0]) > 0 and sum(per_worker[1]) > 0  # the broker really shared them
    for name in whole:
        np.testing.assert_allclose(split[name], whole[name], rtol=0, atol=1e-6)
