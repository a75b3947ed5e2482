"""``fedmq broker provision``: everything a secured federation needs, in one directory.

Layout of DIR::

    ca.crt ca.key             the federation's CA (or copies of the one given)
    server.crt server.key     the broker's certificate (SAN: localhost, 127.0.0.1 and the broker host)
    clients/<id>.crt .key     one client certificate per party (CN = id)
    clients/<id>.password     its MQTT password (the password file holds only the hash)
    clients/<id>.sign         its Ed25519 signing key (end-to-end signatures)
    clients/edge__<g>.share   a group split over workers: the secret its workers name their shared
                              subscription with (every worker of the group gets a copy; no node does)
    keys.json                 every party's Ed25519 public key (give it to the coordinator and the nodes)
    passwords                 mosquitto_passwd format: every party (the main listener)
    enrol-passwords           mosquitto_passwd format: the open enrolment tokens (the enrolment listener)
    acl                       least-privilege ACL (acl.py)
    crl.pem                   revoked certificates
    registry.json             parties, their groups, certificate serials, revocations

Running it again adds new parties and keeps existing credentials valid.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

from fedmq.broker import acl, passwords, pki
from fedmq.shared.files import write_atomic
from fedmq.shared.identities import COORDINATOR, OBSERVERS, edge_id
from fedmq.shared.signing import new_signing_key
from fedmq.shared.topicmap import TopicMap
from fedmq.shared.topics import level_problem

SERVER_NAMES = ["localhost", "127.0.0.1"]


@dataclass
class Registry:
    """Who has credentials: id -> {"group": [...], "serial": int, "role": node|edge|coordinator}, revocations,
    and enrolment tokens: token id -> {"hash": sha256 of the secret, "used_by": node id or None}."""

    parties: Dict[str, dict] = field(default_factory=dict)
    revoked: List[str] = field(default_factory=list)
    tokens: Dict[str, dict] = field(default_factory=dict)

    @classmethod
    def load(cls, directory: str) -> "Registry":
        path = os.path.join(directory, "registry.json")
        if not os.path.exists(path):
            return cls()
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
        return cls(parties=data.get("parties", {}), revoked=data.get("revoked", []), tokens=data.get("tokens", {}))

    def save(self, directory: str) -> None:
        path = os.path.join(directory, "registry.json")
        write_atomic(path, json.dumps({"parties": self.parties, "revoked": self.revoked, "tokens": self.tokens},
                                      indent=1), mode=0o600)


def _parties(tm: TopicMap) -> Dict[str, dict]:
    out: Dict[str, dict] = {COORDINATOR: {"role": "coordinator", "group": []},
                            **{o: {"role": "monitor", "group": []} for o in OBSERVERS}}
    for path, group in tm.groups().items():
        if group.edge:
            for worker in range(group.workers):
                out[edge_id(path, worker)] = {"role": "edge", "group": list(path), "worker": worker}
        for node in group.nodes:
            if node in (COORDINATOR, *OBSERVERS):
                raise ValueError(f"node id {node!r} is reserved for the {node}; rename the node")
            out[node] = {"role": "node", "group": list(path)}
    return out


def provision(tm: TopicMap, directory: str, *, ca_cert: Optional[str] = None, ca_key: Optional[str] = None,
              extra_server_names: Optional[List[str]] = None, owner: Optional[Tuple[int, int]] = None) -> List[str]:
    """Create or extend DIR for ``tm``; returns the ids that got new credentials. ``owner`` (uid, gid): the
    service user that gets the directory and everything in it, now and whenever it is written again."""
    clients = os.path.join(directory, "clients")
    os.makedirs(clients, exist_ok=True)
    os.chmod(directory, 0o750)
    if owner is not None:
        os.chown(directory, *owner)
    if not os.path.exists(os.path.join(directory, "ca.crt")):
        if ca_cert and ca_key:
            shutil.copyfile(ca_cert, os.path.join(directory, "ca.crt"))
            shutil.copyfile(ca_key, os.path.join(directory, "ca.key"))
            os.chmod(os.path.join(directory, "ca.key"), 0o600)
        else:
            pki.make_ca(directory, tm.federation)
    ca = pki.load_pair(os.path.join(directory, "ca.crt"), os.path.join(directory, "ca.key"))
    if not os.path.exists(os.path.join(directory, "server.crt")):
        names = SERVER_NAMES + [n for n in [tm.broker.host, *(extra_server_names or [])] if n not in SERVER_NAMES]
        pki.issue(ca, tm.broker.host, os.path.join(directory, "server.crt"), os.path.join(directory, "server.key"),
                  server_names=names)
    registry = Registry.load(directory)
    hashes = _hashes(directory)
    added = []
    for pid, info in _parties(tm).items():
        if pid in registry.parties or pid in registry.revoked:
            continue
        add_party(ca, directory, registry, hashes, pid, info)
        added.append(pid)
    for path, group in tm.groups().items():
        share = share_key_file(directory, path)
        if group.workers > 1 and not os.path.exists(share):
            fd = os.open(share, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(secrets.token_hex(32) + "\n")
    _write_state(tm, directory, ca, registry, hashes)
    return added


def share_key_file(directory: str, path: "tuple[str, ...]") -> str:
    """Where the secret of a split group's shared subscription is (``clients/edge__<group>.share``)."""
    return os.path.join(directory, "clients", client_file(edge_id(path)) + ".share")


def add_party(ca: tuple, directory: str, registry: Registry, hashes: Dict[str, str], pid: str, info: dict) -> None:
    """Issue a certificate and a password for one party and record it."""
    safe = client_file(pid)
    cert = pki.issue(ca, pid, os.path.join(directory, "clients", f"{safe}.crt"),
                     os.path.join(directory, "clients", f"{safe}.key"))
    password = passwords.new_password()
    fd = os.open(os.path.join(directory, "clients", f"{safe}.password"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(password + "\n")
    hashes[pid] = passwords.hash_password(password)
    public = new_signing_key(os.path.join(directory, "clients", f"{safe}.sign"))
    registry.parties[pid] = {**info, "serial": cert.serial_number, "public_key": public}


SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")  # a file name and a topic level, everywhere
RESERVED_PREFIXES = (acl.ENROL_PREFIX,)  # an enrolment token's broker user ("enrol-<token id>")
DEFAULT_TOKEN_TTL_S = 7 * 86400
ENROL_PASSWORDS = "enrol-passwords"  # the enrolment listener's password file: open tokens only


def _expired(token: dict) -> bool:
    """True once a token's lifetime is over (tokens made before lifetimes existed never expire)."""
    return time.time() > float(token.get("expires", float("inf")))


def client_file(pid: str) -> str:
    """File name stem for a party's credentials (edge ids contain ':' and '/')."""
    return pid.replace(":", "_").replace("/", "__")


def _write_state(tm: TopicMap, directory: str, ca: tuple, registry: Registry, hashes: Dict[str, str]) -> None:
    open_tokens = {t for t, info in registry.tokens.items() if not info.get("used_by") and not _expired(info)}
    live = {p: h for p, h in hashes.items() if p not in registry.revoked
            and (not p.startswith(acl.ENROL_PREFIX) or p[len(acl.ENROL_PREFIX):] in open_tokens)}
    # Parties log in on the main listener, tokens only on the enrolment listener: two files, so that a
    # party's password is no use without its certificate, and a token is no use anywhere else.
    passwords.write_file(os.path.join(directory, "passwords"),
                         {p: h for p, h in live.items() if not p.startswith(acl.ENROL_PREFIX)})
    passwords.write_file(os.path.join(directory, ENROL_PASSWORDS),
                         {p: h for p, h in live.items() if p.startswith(acl.ENROL_PREFIX)})
    nodes = {p: tuple(i["group"]) for p, i in registry.parties.items() if i["role"] == "node"}
    write_atomic(os.path.join(directory, "acl"), acl.render_acl(tm, nodes, registry.revoked, sorted(open_tokens)))
    serials = [registry.parties[p]["serial"] for p in registry.revoked if p in registry.parties]
    pki.write_crl(ca, serials, os.path.join(directory, "crl.pem"))
    keys = {p: i["public_key"] for p, i in registry.parties.items() if p not in registry.revoked}
    write_atomic(os.path.join(directory, "keys.json"), json.dumps(keys, indent=1, sort_keys=True))
    registry.save(directory)
    _match_owner(directory)


def _match_owner(directory: str) -> None:
    """Run as root on a directory that belongs to a service user (``provision(owner=...)``), hand every file
    in it to that user: the coordinator, which reads its keys and writes enrolments there, and the
    federation's Mosquitto both run as that user."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return
    st = os.stat(directory)
    if (st.st_uid, st.st_gid) == (0, 0):
        return
    for root, dirs, files in os.walk(directory):
        for name in dirs + files:
            os.chown(os.path.join(root, name), st.st_uid, st.st_gid, follow_symlinks=False)


def _hashes(directory: str) -> Dict[str, str]:
    """Every stored password hash: the parties' and the open tokens'."""
    return {**passwords.read_file(os.path.join(directory, "passwords")),
            **passwords.read_file(os.path.join(directory, ENROL_PASSWORDS))}


def refresh(tm: TopicMap, directory: str) -> None:
    """Rewrite the password file, ACL, CRL and keys.json from the registry and the current topic map
    (no new credentials)."""
    ca = pki.load_pair(os.path.join(directory, "ca.crt"), os.path.join(directory, "ca.key"))
    _write_state(tm, directory, ca, Registry.load(directory), _hashes(directory))


def revoke(tm: TopicMap, directory: str, pid: str) -> None:
    """Remove a party from the password and ACL files and list its certificate in the CRL."""
    registry = Registry.load(directory)
    if pid not in registry.parties:
        raise ValueError(f"{pid!r} has no credentials in {directory}")
    if pid not in registry.revoked:
        registry.revoked.append(pid)
    ca = pki.load_pair(os.path.join(directory, "ca.crt"), os.path.join(directory, "ca.key"))
    _write_state(tm, directory, ca, registry, _hashes(directory))


def client_config(directory: str, pid: str, *, auth: str = "mtls") -> Dict[str, dict]:
    """The ``broker.tls`` (and username / password_file) and ``security`` config sections of one party."""
    stem = os.path.join(os.path.abspath(directory), "clients", client_file(pid))
    broker: dict = {"tls": {"ca_file": os.path.join(os.path.abspath(directory), "ca.crt")}}
    if auth == "mtls":
        broker["tls"].update(cert_file=stem + ".crt", key_file=stem + ".key")
    else:
        broker.update(username=pid, password_file=stem + ".password")
    security = {"keys": os.path.join(os.path.abspath(directory), "keys.json"), "signing_key": stem + ".sign"}
    return {"broker": broker, "security": security}


def new_tokens(tm: TopicMap, directory: str, count: int, ttl_s: float = DEFAULT_TOKEN_TTL_S) -> List[str]:
    """Create ``count`` one-time enrolment tokens ("<id>.<secret>") valid for ``ttl_s`` seconds; only their
    hashes are stored."""
    registry = Registry.load(directory)
    hashes = _hashes(directory)
    out = []
    for _ in range(count):
        token_id, secret = secrets.token_hex(6), secrets.token_urlsafe(18)
        registry.tokens[token_id] = {"hash": hashlib.sha256(secret.encode()).hexdigest(), "used_by": None,
                                     "expires": time.time() + ttl_s}
        hashes[acl.ENROL_PREFIX + token_id] = passwords.hash_password(secret)
        out.append(f"{token_id}.{secret}")
    ca = pki.load_pair(os.path.join(directory, "ca.crt"), os.path.join(directory, "ca.key"))
    _write_state(tm, directory, ca, registry, hashes)
    return out


def enrol(tm: TopicMap, directory: str, token_id: str, secret: str, node_id: str) -> Dict[str, str]:
    """Spend a token on ``node_id``: check it, admit the node into the group the topic map's rules give it,
    issue its credentials, and close the token. Returns the files' contents; EnrolmentRefused otherwise."""
    registry = Registry.load(directory)
    token = registry.tokens.get(token_id)
    if token is None or token.get("used_by") or hashlib.sha256(secret.encode()).hexdigest() != token["hash"]:
        raise EnrolmentRefused("unknown or used token")
    if _expired(token):
        raise EnrolmentRefused("expired token")
    if node_id in registry.revoked:
        raise EnrolmentRefused("revoked id")
    taken = {client_file(p) for p in registry.parties}
    if (node_id in registry.parties or node_id in (COORDINATOR, *OBSERVERS) or level_problem(node_id)
            or not SAFE_ID.fullmatch(node_id) or node_id.startswith(RESERVED_PREFIXES)
            or client_file(node_id) in taken):
        raise EnrolmentRefused("id not available")
    group = tm.group_of(node_id)
    if group is None:
        raise EnrolmentRefused("not admitted by the topic map")
    ca = pki.load_pair(os.path.join(directory, "ca.crt"), os.path.join(directory, "ca.key"))
    hashes = _hashes(directory)
    add_party(ca, directory, registry, hashes, node_id, {"role": "node", "group": list(group.path)})
    token["used_by"] = node_id
    _write_state(tm, directory, ca, registry, hashes)
    stem = os.path.join(directory, "clients", client_file(node_id))
    files = {"group": "/".join(group.path)}
    for name, suffix in (("cert", ".crt"), ("key", ".key"), ("password", ".password"), ("signing_key", ".sign")):
        with open(stem + suffix, encoding="utf-8") as fh:
            files[name] = fh.read()
    for name, path in (("ca", "ca.crt"), ("keys", "keys.json")):
        with open(os.path.join(directory, path), encoding="utf-8") as fh:
            files[name] = fh.read()
    return files


class EnrolmentRefused(ValueError):
    """A request that does not earn credentials; the message is the reason counted."""
