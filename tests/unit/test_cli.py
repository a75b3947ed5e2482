"""The ``fedmq`` command line: options where users put them, and round lines that name the right metric."""

from __future__ import annotations

from fedmq.coordinator.cli import format_round
from fedmq.shared.cli import build_parser

ROUND = {"round": 3, "rounds_total": 20, "updates": 6, "selected": 6, "bytes_up": 10, "bytes_down": 20,
         "seconds": 0.5}


def test_verbose_is_taken_after_a_command_as_before_it():
    parser = build_parser()
    for argv, level in ((["-v", "node", "run", "n.yaml"], 1), (["node", "run", "-v", "n.yaml"], 1),
                        (["-v", "coordinator", "run", "f.yaml", "-vv"], 3), (["demo", "-v"], 1),
                        (["status", "f.yaml", "-v"], 1)):
        args = parser.parse_args(argv)
        assert args.verbose + getattr(args, "verbose_after", 0) == level, argv


def test_a_regressors_round_line_names_its_metric():
    forecast = format_round({**ROUND, "accuracy": None, "loss": 0.25, "accuracy_source": "node_training_data"},
                            regressor=True)
    assert "rmse 0.5000" in forecast and "None" not in forecast
    assert "r2 0.8100" in format_round({**ROUND, "accuracy": 0.81, "loss": 0.2}, regressor=True)
    assert "accuracy 0.9000" in format_round({**ROUND, "accuracy": 0.9, "loss": 0.2})
    assert "accuracy -" in format_round({**ROUND, "accuracy": None, "loss": None})


def test_the_scale_benchmark_asks_for_the_files_it_needs_within_the_hard_limit():
    """bench/scale.py raises the open-file limit to a socket per node plus a margin, and when the hard limit
    is lower says how many nodes fit instead of failing in setrlimit."""
    import importlib.util
    import os
    import resource

    import pytest

    from fedhelp import ROOT

    spec = importlib.util.spec_from_file_location("scale", os.path.join(ROOT, "bench", "scale.py"))
    scale = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(scale)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        if hard != resource.RLIM_INFINITY:
            with pytest.raises(SystemExit, match=r"run at most --nodes \d+"):
                scale.raise_file_limit(hard)
            fits = (hard - scale.FILES_BESIDE_NODES) // 20 * 20
            scale.raise_file_limit(fits)
            assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] >= fits + scale.FILES_BESIDE_NODES
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
