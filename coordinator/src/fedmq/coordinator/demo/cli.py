"""``fedmq demo``: run a whole federation here and report on it (the work is in demo/run.py, imported
only when the command runs, so other commands stay light)."""

from __future__ import annotations

import argparse

from fedmq.shared.extras import require

MODELS = ("mlp", "mlp_classifier", "sgd_classifier", "softmax_regression", "tflite-logreg", "tflite-mlp")
TRAINERS = ("auto", "numpy", "sklearn", "tflite")


def register(sub: "argparse._SubParsersAction") -> None:
    """Add ``fedmq demo``."""
    p = sub.add_parser("demo", help="run a whole federation on this machine",
                       description="Start a private Mosquitto, a coordinator and N nodes (homes of nodes, digits data "
                                   "split non-IID), run R rounds of hierarchical FedAvg, and report. With --scenario "
                                   "smart-home or appliances, simulated homes stream sensor data and gateways "
                                   "learn from it.")
    p.add_argument("--scenario", default="digits", choices=("digits", "smart-home", "appliances"),
                   help="digits (default: handwritten digits split over nodes in homes) or smart-home: simulated homes "
                        "publish sensor streams (zigbee2mqtt, Tasmota, statestream), a gateway per home learns "
                        "occupancy and the temperature an hour ahead from its own home's topics, and the report "
                        "compares, per home, the federated model with a central and a local-only one; or "
                        "appliances: two smart plugs per home report power and power factor, each running 2 to 4 "
                        "of 10 kinds of appliance, and each plug's gateway learns which one runs")
    p.add_argument("--homes", type=int, help="smart-home, appliances: number of simulated homes (default 6; "
                                             "appliances: 3, two plugs each)")
    p.add_argument("--days", type=float, help="smart-home, appliances: days of sensor history (default 7; "
                                              "appliances: 4)")
    p.add_argument("--nodes", type=int, default=10, help="number of node processes (default 10)")
    p.add_argument("--groups", type=int, default=2, help="number of homes the nodes are spread over (default 2)")
    p.add_argument("--rounds", type=int, default=20, help="number of rounds (default 20)")
    p.add_argument(
        "--alpha", type=float, default=0.5, help="Dirichlet concentration of the non-IID split (default 0.5)"
    )
    p.add_argument(
        "--model",
        default=None,
        choices=MODELS,
        help="model (default softmax_regression, mlp for --scenario appliances; tflite-logreg and tflite-mlp "
        "train .tflite files built by the coordinator, on TFLite nodes)",
    )
    p.add_argument(
        "--trainer",
        default="auto",
        choices=TRAINERS,
        help="node trainer (default auto: TFLite for tflite-*, scikit-learn for its kinds, else numpy)",
    )
    p.add_argument(
        "--dataset",
        default="digits",
        choices=("digits", "synthetic"),
        help="digits (scikit-learn's, split non-IID over the nodes) or synthetic: the FedProx paper's "
        "Synthetic(1,1), one device per node, trained as in the paper (lr 0.01, 20 epochs, batch 10)",
    )
    p.add_argument(
        "--data",
        metavar="FILE",
        help="your own data instead of digits: a CSV file with a header row (the label column named by "
        "--label-column, every other column a numeric feature) or an NPZ file (arrays x and y); "
        "split 80/20 into training and held-out sets, the training part non-IID over the nodes, "
        "with federated feature scaling",
    )
    p.add_argument("--label-column", default="label", help="the label column of a --data CSV (default label)")
    p.add_argument(
        "--compression",
        default="raw",
        choices=("raw", "float16", "int8", "topk"),
        help="update codec (default raw float32; int8 and topk send deltas with error feedback)",
    )
    p.add_argument(
        "--topk-fraction",
        type=float,
        default=0.01,
        help="share of the model's entries a topk update keeps (default 0.01)",
    )
    p.add_argument(
        "--topk-index",
        metavar="ef|gap8|int32",
        help="how a topk update locates its entries (topic map topk_index; default ef, Elias-Fano)",
    )
    p.add_argument(
        "--topk-values",
        metavar="int4|int8|float32",
        help="how a topk update carries its values (topic map topk_values; default int4)",
    )
    p.add_argument(
        "--max-payload",
        type=int,
        help="largest MQTT payload in bytes; bigger messages travel in chunks (e.g. 131072, AWS IoT Core)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the split and the model (default 0)")
    p.add_argument("--deadline", type=float, default=15.0, help="round deadline in seconds (default 15)")
    p.add_argument(
        "--secure",
        action="store_true",
        help="provision a CA and credentials, run Mosquitto with mutual TLS, a least-privilege ACL and no "
        "anonymous access, and sign every update, partial and model (Ed25519)",
    )
    p.add_argument(
        "--strategy",
        metavar="YAML",
        help="the topic map's strategy section as inline YAML, e.g. '{mode: async, async: {buffer_size: 5}}' "
        "or '{proximal_mu: 1, partial_work: true}' (docs/strategies.md)",
    )
    p.add_argument(
        "--fraction", type=float, default=1.0, help="share of the online nodes selected per round (default 1)"
    )
    p.add_argument("--quorum", type=float, default=0.6, help="share of the selected nodes a round needs (default 0.6)")
    p.add_argument(
        "--stragglers",
        type=float,
        default=0.0,
        metavar="P",
        help="simulate stragglers: each node, each round, with probability P has time for only part of "
        "its local epochs (it sends that partial work if strategy.partial_work, else nothing)",
    )
    p.add_argument(
        "--slow", metavar="N:SECONDS", help="simulate N slow nodes that each take SECONDS longer to train (e.g. 3:2.0)"
    )
    p.add_argument(
        "--attack",
        metavar="N:SCALE[:SAMPLES]",
        help="simulate N attacking nodes (the last ones) that send the start model plus SCALE x their honest "
        "change and claim SAMPLES samples, e.g. 2:-10:10000 (sign flip x10, inflated counts)",
    )
    p.add_argument(
        "--trusted-split",
        type=float,
        default=0.0,
        metavar="F",
        help="give the coordinator only the share F of the held-out set (its evaluation set, which "
        "strategy.aggregator: fltrust trusts) and report the final accuracy on the rest, which the federation "
        "never saw (e.g. 0.5)",
    )
    p.add_argument(
        "--dashboard",
        default="127.0.0.1:8765",
        metavar="HOST:PORT",
        help="serve the live dashboard here (default 127.0.0.1:8765, a free port if taken; off: none)",
    )
    p.add_argument(
        "--metrics",
        default="127.0.0.1:9464",
        metavar="HOST:PORT",
        help="the coordinator's Prometheus endpoint (default 127.0.0.1:9464, a free port if taken; off: none)",
    )
    p.add_argument("--report", help="write the JSON report here")
    p.add_argument("--plot", help="write the PNG plot here (default: next to --report, or in the work directory)")
    p.add_argument("--workdir", help="keep configs, data and logs here (default: a temporary directory, removed)")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    for module in ("sklearn", "matplotlib"):
        require(module, "fedmq-coordinator", "demo", "fedmq demo")
    from fedmq.coordinator.demo.run import run

    return run(args)
