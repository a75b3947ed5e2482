"""``fedmq broker``: render a federation's mosquitto.conf, or run Mosquitto with it."""

from __future__ import annotations

import argparse
import os
import sys

from fedmq.broker.config import BrokerConfig, render_config, starter_user
from fedmq.broker.process import find_mosquitto
from fedmq.shared.topicmap import ConfigIssue, TopicMapError, load_topic_map


def register(sub: "argparse._SubParsersAction") -> None:
    """Add ``fedmq broker render`` and ``fedmq broker run``."""
    p = sub.add_parser("broker", help="Mosquitto configuration for a federation",
                       description="Write or run the Mosquitto configuration of a federation.")
    bsub = p.add_subparsers(dest="broker_command", metavar="SUBCOMMAND")
    for name, helptext in (("render", "write mosquitto.conf for a topic map"),
                           ("run", "render the config and run Mosquitto in the foreground")):
        r = bsub.add_parser(name, help=helptext, description=helptext)
        r.add_argument("topic_map", help="federation topic map (YAML)")
        r.add_argument("--out", help="write the config here (default: stdout for render, "
                                     "./mosquitto-<federation>.conf for run)")
        r.add_argument("--port", type=int, help="listener port (default: the topic map's broker.port)")
        r.add_argument("--bind", default=None, help="listener address (default: the topic map's broker.host)")
        r.add_argument(
            "--persistence-dir",
            help="directory for Mosquitto's persistence file, so that sessions, queued updates and retained "
            "models survive a broker restart (default: "
            + (
                "/var/lib/fedmq/mosquitto, fedmq-mosquitto.service's"
                if name == "render"
                else "mosquitto-<federation>-data beside the config"
            )
            + "; 'none' turns it off)",
        )
        r.add_argument("--log-file", help="Mosquitto log file (default: stderr)")
        r.add_argument(
            "--security",
            metavar="DIR",
            help="directory made by 'fedmq broker provision': TLS listener, "
            "no anonymous clients, password and ACL files",
        )
        r.add_argument(
            "--security-mount",
            metavar="PATH",
            help="where Mosquitto sees the --security directory, when not at the same path (e.g. /security "
            "in the compose file's container): the config names its files there",
        )
        r.add_argument(
            "--auth",
            choices=("mtls", "password"),
            default="mtls",
            help="with --security: client certificates (default) or passwords over TLS",
        )
        r.add_argument("--enrol-port", type=int, help="with --auth mtls: a TLS listener for enrolment tokens")
        r.add_argument(
            "--pid-file", help="where Mosquitto writes its pid (the coordinator signals it after enrolments)"
        )
        r.add_argument(
            "--audit",
            action="store_true",
            help="log at Mosquitto's debug level, the only one at which it logs ACL denials (every packet "
            "is logged too: rotate the log); read them with 'fedmq broker denials LOG'",
        )
        r.add_argument(
            "--site",
            metavar="GROUP",
            help="the config of this group's own (site) broker: its listener from "
            "the group's broker section, and a bridge to its parent's broker",
        )
        r.set_defaults(func=_render if name == "render" else _run)
    prov = bsub.add_parser(
        "provision",
        help="create a CA, certificates, passwords and the ACL for a federation",
        description="Create (or extend) DIR with the federation's CA, the broker's certificate, a "
        "client certificate and password for the coordinator, every edge aggregator "
        "and every node the topic map names, a least-privilege ACL and a CRL. "
        "Running it again adds new parties and keeps existing credentials.",
    )
    prov.add_argument("topic_map", help="federation topic map (YAML)")
    prov.add_argument("--out", required=True, metavar="DIR", help="security directory")
    prov.add_argument("--ca-cert", help="use this CA certificate instead of creating one (with --ca-key)")
    prov.add_argument("--ca-key", help="the CA's private key")
    prov.add_argument(
        "--server-name", action="append", default=[], help="extra DNS name or IP for the broker certificate"
    )
    prov.add_argument(
        "--owner",
        metavar="USER[:GROUP]",  # or UID:GID
        help="the service user (and group; default: the user's) that runs the coordinator and the "
        "federation's Mosquitto: it gets the directory and every file in it, also after later "
        "'token', 'revoke' and enrolments (run as root)",
    )
    prov.set_defaults(func=_provision)
    rev = bsub.add_parser(
        "revoke",
        help="revoke a party's credentials",
        description="Remove a node (or edge aggregator) from the password and ACL files and list "
        "its certificate in the CRL. Restart or SIGHUP Mosquitto to apply.",
    )
    rev.add_argument("topic_map", help="federation topic map (YAML)")
    rev.add_argument("--dir", required=True, help="security directory")
    rev.add_argument("id", help="the node id (or edge/<group path>)")
    rev.set_defaults(func=_revoke)
    tok = bsub.add_parser(
        "token",
        help="create one-time enrolment tokens",
        description="Create one-time tokens with which new devices enrol (fedmq node enrol). Each "
        "is its own broker user that may send one request; the coordinator admits the "
        "device into the group the topic map's rules give its id.",
    )
    tok.add_argument("topic_map", help="federation topic map (YAML)")
    tok.add_argument("--dir", required=True, help="security directory")
    tok.add_argument("--count", type=int, default=1, help="how many tokens (default 1)")
    tok.add_argument(
        "--ttl",
        type=float,
        default=7 * 24,
        metavar="HOURS",
        help="hours a token can be used before it expires (default 168, a week)",
    )
    tok.set_defaults(func=_tokens)
    den = bsub.add_parser(
        "denials",
        help="list who the broker refused what (from an --audit log)",
        description="Read a Mosquitto log written with 'fedmq broker render --audit' and list, per "
        "client (a party's identity under provisioned security), the publishes the ACL "
        "refused and their topics: a node probing the ACL shows here.",
    )
    den.add_argument("log", help="Mosquitto's log file (log_dest file), or - for stdin")
    den.add_argument("--top", type=int, default=5, help="topics shown per client (default 5)")
    den.set_defaults(func=_denials)
    p.set_defaults(func=lambda args: p.print_help() or 2)


def _denials(args: argparse.Namespace) -> int:
    from fedmq.broker.denials import denials, report

    try:
        if args.log == "-":
            found = denials(sys.stdin)
        else:
            with open(args.log, encoding="utf-8", errors="replace") as fh:
                found = denials(fh)
    except OSError as exc:
        print(f"fedmq broker denials: cannot read {args.log}: {exc.strerror}", file=sys.stderr)
        return 2
    print(report(found, args.top))
    return 0


def _config(args: argparse.Namespace) -> "tuple[str, str]":
    tm = load_topic_map(args.topic_map)
    if args.security:  # the ACL follows the topic map as it is now
        from fedmq.broker.provision import refresh

        refresh(tm, args.security)
    listen, bridge = tm.broker, None
    if args.site:
        from fedmq.broker.bridge import bridge_for

        site = tuple(args.site.strip("/").split("/"))
        group = tm.groups().get(site)
        if group is None or group.broker is None:
            raise TopicMapError(
                [
                    ConfigIssue(
                        tm.file,
                        group.line if group else None,
                        f"tree ... {args.site}",
                        "no such group with its own broker",
                        "give the group a 'broker: {host: ..., port: ...}' section and edge: true",
                    )
                ]
            )
        listen, bridge = group.broker, bridge_for(tm, site, args.security, args.auth)
    persistence = args.persistence_dir
    if persistence is None:
        persistence = (
            DEFAULT_PERSISTENCE
            if args.func is _render
            else os.path.abspath(
                os.path.join(
                    os.path.dirname(os.path.abspath(args.out or ".")) if args.out else ".",
                    f"mosquitto-{tm.federation}-data",
                )
            )
        )
        if args.func is _run:
            os.makedirs(persistence, exist_ok=True)
    cfg = BrokerConfig.for_topic_map(
        tm,
        port=args.port or listen.port,
        bind=args.bind or listen.host,
        persistence_dir=None if persistence == "none" else persistence,
        log_file=args.log_file,
        security_dir=args.security,
        security_mount=args.security_mount,
        auth=args.auth,
        enrol_port=args.enrol_port,
        pid_file=args.pid_file,
        bridge=bridge,
        audit=args.audit,
        user=starter_user() if args.func is _run else None,
    )
    return tm.federation, render_config(cfg)


DEFAULT_PERSISTENCE = "/var/lib/fedmq/mosquitto"  # fedmq-mosquitto.service's, under its StateDirectory=


def _render(args: argparse.Namespace) -> int:
    from fedmq.broker.dropin import refusal, stdout_file

    problem = refusal(args.out or stdout_file())
    if problem:
        print(f"fedmq broker render: {problem}", file=sys.stderr)
        return 2
    _, text = _config(args)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as fh:
            fh.write(text)
        print(f"wrote {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    for note in _render_notes(args):
        print(f"fedmq broker render: note: {note}", file=sys.stderr)
    return 0


def _render_notes(args: argparse.Namespace) -> "list[str]":
    """What a Mosquitto started by hand with the rendered config would lack: its persistence directory, and,
    started as root, the rights of the user it drops to (``mosquitto``) on the files it names."""
    notes = []
    persistence = args.persistence_dir or DEFAULT_PERSISTENCE
    if persistence != "none" and not os.path.isdir(persistence):
        notes.append(f"the persistence directory {persistence} does not exist: fedmq-mosquitto.service makes it "
                     "(StateDirectory); to run this config by hand, create it for the user Mosquitto runs as, or "
                     "use 'fedmq broker run', which makes one beside the topic map")
    if hasattr(os, "geteuid") and os.geteuid() == 0 and (args.security or args.pid_file):
        notes.append("started as root, Mosquitto drops to the user 'mosquitto' before it opens the security "
                     "files and writes its pid file: run it as the user that owns them (provision --owner, "
                     "fedmq-mosquitto.service) or use 'fedmq broker run', which runs it as you")
    return notes


def _run(args: argparse.Namespace) -> int:
    from fedmq.broker.dropin import refusal

    federation, text = _config(args)
    out = args.out or os.path.abspath(f"mosquitto-{federation}.conf")
    problem = refusal(out)
    if problem:
        print(f"fedmq broker run: {problem}", file=sys.stderr)
        return 2
    with open(out, "w", encoding="utf-8") as fh:
        fh.write(text)
    print(f"running mosquitto with {out} (Ctrl-C stops it)", file=sys.stderr)
    sys.stderr.flush()
    mosquitto = find_mosquitto()
    os.execv(mosquitto, [mosquitto, "-c", out])  # Mosquitto takes this process over: SIGTERM reaches it directly


def _provision(args: argparse.Namespace) -> int:
    from fedmq.broker.provision import provision

    if bool(args.ca_cert) != bool(args.ca_key):
        print("fedmq broker provision: --ca-cert and --ca-key go together", file=sys.stderr)
        return 2
    owner = None
    if args.owner:
        try:
            owner = _user_and_group(args.owner)
        except KeyError as exc:
            print(
                f"fedmq broker provision: --owner {args.owner}: no such {exc.args[0]} (create it first, e.g. "
                "'useradd --system --home-dir /var/lib/fedmq fedmq')",
                file=sys.stderr,
            )
            return 2
    tm = load_topic_map(args.topic_map)
    added = provision(
        tm, args.out, ca_cert=args.ca_cert, ca_key=args.ca_key, extra_server_names=args.server_name, owner=owner
    )
    print(
        f"{args.out}: {len(added)} new part{'y' if len(added) == 1 else 'ies'}"
        + (f": {', '.join(added)}" if added else "")
    )
    return 0


def _user_and_group(spec: str) -> "tuple[int, int]":
    """(uid, gid) of USER[:GROUP], names or numbers (a container's user needs no account here); the user's
    own group when GROUP is left out. KeyError('user' or 'group') when a name does not exist."""
    import grp
    import pwd

    user, _, group = spec.partition(":")
    try:
        uid = int(user) if user.isdigit() else pwd.getpwnam(user).pw_uid
    except KeyError:
        raise KeyError("user") from None
    try:
        if not group:
            return uid, pwd.getpwuid(uid).pw_gid
        return uid, int(group) if group.isdigit() else grp.getgrnam(group).gr_gid
    except KeyError:
        raise KeyError("group" if group else "user") from None


def _revoke(args: argparse.Namespace) -> int:
    from fedmq.broker.provision import revoke

    tm = load_topic_map(args.topic_map)
    try:
        revoke(tm, args.dir, args.id)
    except ValueError as exc:
        print(f"fedmq broker revoke: {exc}", file=sys.stderr)
        return 2
    print(
        f"revoked {args.id}: removed from passwords and ACL, certificate listed in {args.dir}/crl.pem; "
        "restart Mosquitto (or send it SIGHUP) to apply"
    )
    return 0


def _tokens(args: argparse.Namespace) -> int:
    from fedmq.broker.provision import new_tokens

    if args.ttl <= 0:
        print("fedmq broker token: --ttl must be a positive number of hours", file=sys.stderr)
        return 2
    for token in new_tokens(load_topic_map(args.topic_map), args.dir, args.count, ttl_s=args.ttl * 3600):
        print(token)
    print("reload Mosquitto (SIGHUP) so the tokens can log in", file=sys.stderr)
    return 0
