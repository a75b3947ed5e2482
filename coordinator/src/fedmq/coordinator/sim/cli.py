"""``fedmq sim homes``: publish realistic smart-home sensor streams for N homes."""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fedmq.shared.topicmap.model import BrokerSettings


def register(sub: "argparse._SubParsersAction") -> None:
    """Add ``fedmq sim homes``."""
    p = sub.add_parser("sim", help="simulate data sources (smart homes) on a broker",
                       description="Simulators that stand in for real homes in tests, demos and benchmarks.")
    ssub = p.add_subparsers(dest="sim_command", metavar="SUBCOMMAND")
    h = ssub.add_parser("homes", help="publish N homes' sensor streams (zigbee2mqtt, Tasmota, statestream)",
                        description="Publish the sensor streams of N simulated homes: temperatures driven by the "
                                    "outdoor temperature, heating and occupancy; CO2, light, motion and appliance "
                                    "power from each household's schedule (families, shift workers, homes empty on "
                                    "weekdays...); sensor noise, dropped and duplicated messages, sensors offline "
                                    "for a while. Home i publishes in zigbee2mqtt, Tasmota or Home Assistant "
                                    "statestream format in turn. Simulated time (on the topic "
                                    "fedmq-sim/clock) runs as fast as the broker takes it, or --speed times real "
                                    "time. Deterministic for a seed. With --appliances: two smart plugs per home "
                                    "instead, each running 2 to 4 of 10 kinds of appliance with power signatures of "
                                    "their own, and each plug's label as an input_select on statestream.")
    h.add_argument("--homes", type=int, default=3, help="number of homes (default 3)")
    h.add_argument("--days", type=float, default=7.0, help="simulated days to publish (default 7)")
    h.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    h.add_argument("--report-s", type=float, help="seconds between two sensor reports (default 300; with "
                                                    "--appliances 60)")
    h.add_argument("--appliances", action="store_true",
                   help="publish smart plugs (power, power factor, the appliance as an input_select) instead")
    h.add_argument("--speed", type=float, default=0.0,
                   help="simulated seconds per real second (default 0: as fast as the broker takes it)")
    h.add_argument("--host", default="127.0.0.1", help="broker address (default 127.0.0.1)")
    h.add_argument("--port", type=int, default=1883, help="broker port (default 1883)")
    h.add_argument("--username", help="broker user name")
    h.add_argument("--password-file", help="file holding the broker password")
    h.add_argument("--node-configs", metavar="DIR",
                   help="also write a node configuration per home (per plug with --appliances) into DIR (stream "
                        "source with presets, features and the occupancy or appliance label), for federation "
                        "--federation")
    h.add_argument("--federation", help="federation id for --node-configs (default smarthome; with --appliances "
                                        "appliances)")
    h.set_defaults(func=_homes)
    p.set_defaults(func=lambda args: p.print_help() or 2)


def _homes(args: argparse.Namespace) -> int:
    from fedmq.coordinator.sim.publish import Publisher
    from fedmq.shared.topicmap.model import BrokerSettings

    if args.report_s is None:
        args.report_s = 60.0 if args.appliances else 300.0
    if args.homes < 1 or args.days <= 0 or args.report_s <= 0:
        print("fedmq sim homes: need --homes >= 1, --days > 0 and --report-s > 0", file=sys.stderr)
        return 2
    broker = BrokerSettings(host=args.host, port=args.port, username=args.username, password_file=args.password_file)
    sim = _simulation(args, broker)
    total = args.days * 86400

    def progress(sent: int, t: float) -> None:
        print(f"fedmq sim homes: {t / 86400:.2f} of {args.days:g} days, {sent} messages", flush=True)

    try:
        with Publisher(broker) as pub:
            sent = pub.publish(sim.run(total), speed=args.speed, progress=progress)
    except OSError as exc:
        print(f"fedmq sim homes: cannot reach the broker at {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    print(f"fedmq sim homes: {sent} messages for {args.homes} homes, {args.days:g} days")
    return 0


def _simulation(args: argparse.Namespace, broker: "BrokerSettings") -> Any:
    """The homes' or plugs' simulation, with a node configuration per home or plug in ``--node-configs``."""
    from fedmq.coordinator.sim.scenario import node_config, write_yaml

    if args.appliances:
        from fedmq.coordinator.demo.appliances import APPLIANCES
        from fedmq.coordinator.sim.appliances import PlugSimulation

        sim: Any = PlugSimulation(args.homes, args.seed, args.report_s)
        configs = {plug.name: APPLIANCES.node_config(plug, "appliance", broker, f"{plug.name}-store.sqlite",
                                                     args.federation) for plug in sim.homes}
    else:
        from fedmq.coordinator.sim.homes import Simulation

        sim = Simulation(args.homes, args.seed, args.report_s)
        configs = {home.name: node_config(home, args.federation or "smarthome", broker, args.report_s,
                                          store=f"{home.name}-store.sqlite") for home in sim.homes}
    if args.node_configs:
        os.makedirs(args.node_configs, exist_ok=True)
        for name, cfg in configs.items():
            path = os.path.join(args.node_configs, f"{name}.yaml")
            write_yaml(path, cfg)
            print(f"fedmq sim homes: wrote {path}")
    return sim
