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
