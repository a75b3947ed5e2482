"""Typed, validated form of a topic map."""

from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Dict, Iterator, List, Mapping, Optional, Tuple, Union

from fedmq.shared.codecs import Codec

if TYPE_CHECKING:
    from fedmq.shared.topics import Topics

GroupPath = Tuple[str, ...]


@dataclass(frozen=True)
class TlsSettings:
    """TLS for the broker connection (used by the security work; optional today)."""

    ca_file: str
    cert_file: Optional[str] = None
    key_file: Optional[str] = None


@dataclass(frozen=True)
class BrokerSettings:
    """Where and how to reach the MQTT broker."""

    host: str = "127.0.0.1"
    port: int = 1883
    keepalive_s: int = 30
    tls: Optional[TlsSettings] = None
    username: Optional[str] = None
    password_file: Optional[str] = None
    topic_prefix: str = ""  # where the federation's topics live on this broker (bridges remap between them)


@dataclass(frozen=True)
class ModelSpec:
    """The model every node trains: kind, input features, fixed class labels, layer sizes."""

    kind: str
    features: int
    classes: Tuple[Union[int, str], ...] = ()
    hidden: Tuple[int, ...] = ()
    seed: int = 0
    options: Dict[str, Union[int, float, str, bool]] = field(default_factory=dict)

    @property
    def is_classifier(self) -> bool:
        """True for every kind but the regressors."""
        return bool(self.classes)

    def to_meta(self) -> Dict[str, object]:
        """JSON form carried in the model envelope's ``meta.model``."""
        return {"kind": self.kind, "features": self.features, "classes": list(self.classes),
                "hidden": list(self.hidden), "seed": self.seed, "options": dict(self.options)}


@dataclass(frozen=True)
class RoundPolicy:
    """How rounds run: how many, who is selected, how long they wait, local training settings."""

    rounds: int = 10
    fraction: float = 1.0
    min_nodes: int = 1
    max_nodes: Optional[int] = None
    deadline_s: float = 30.0
    quorum: Union[int, float] = 1.0
    on_quorum_failure: str = "retry"
    max_retries: int = 3
    local_epochs: int = 1
    batch_size: int = 32
    learning_rate: float = 0.1
    hop_margin_s: float = 1.0
    wait_for_nodes_s: float = 60.0
    seed: int = 0

    def quorum_count(self, selected: int) -> int:
        """Contributions needed to apply a round in which ``selected`` nodes were chosen.

        An integer quorum is a node count; a float is a fraction of the selected nodes.
        """
        if isinstance(self.quorum, int):
            return min(self.quorum, selected)
        return max(1, math.ceil(self.quorum * selected - 1e-9))


@dataclass(frozen=True)
class Limits:
    """Guard rails on what the network may send."""

    max_message_bytes: int = 16 * 1024 * 1024
    max_samples: int = 1_000_000
    max_update_norm: Optional[float] = None
    max_messages_per_node_s: float = 20.0
    message_burst: int = 100
    max_tracked_nodes: int = 100_000


@dataclass(frozen=True)
class Compression:
    """How updates go up (``update``: a codec with its parameters) and the global model goes down
    (``model``: raw or float16)."""

    update: Codec = field(default_factory=Codec)
    model: str = "raw"


@dataclass(frozen=True)
class Privacy:
    """Client-level differential privacy: every update's change clipped to ``clip_norm`` and Gaussian noise
    of standard deviation ``noise_multiplier * clip_norm`` added to the sum at the root (``central``) or
    to each change on its node (``local``); the budget is reported as epsilon at ``delta``."""

    mode: str = "central"
    noise_multiplier: float = 1.0
    clip_norm: float = 1.0
    delta: float = 1e-5


@dataclass(frozen=True)
class AsyncSettings:
    """Buffered asynchronous aggregation (FedBuff, Nguyen et al. 2022): the root applies the mean of
    ``buffer_size`` changes, each weighted by ``(1 + staleness) ** -staleness_exponent``; changes trained
    from a model more than ``max_staleness`` versions old are refused. Edge groups forward what they have
    buffered every ``flush_s`` seconds (or as soon as they hold ``buffer_size`` changes)."""

    buffer_size: int = 10
    max_staleness: int = 10
    staleness_exponent: float = 0.5
    flush_s: float = 0.5


@dataclass(frozen=True)
class SecureAggregation:
    """Secure aggregation (Bonawitz et al. 2017) in every group: a group's aggregator learns only the sum
    of its nodes' updates. ``threshold`` is the fraction of a group's key holders whose shares are needed
    to unmask (more than half); ``frac_bits`` the fixed-point precision of the field encoding;
    ``phase_s`` how long each key-exchange phase waits for stragglers."""

    threshold: float = 0.6
    frac_bits: int = 20
    phase_s: float = 10.0


@dataclass(frozen=True)
class Strategy:
    """How updates become the next global model (docs/topic-map.md, ``strategy``).

    ``aggregator``: ``fedavg`` (sample-weighted mean, streamed as sums up the tree) or a Byzantine-robust
    rule computed at the root over every update (the coordinator's rules: ``median``, ``trimmed_mean``,
    ``krum``, ``multi_krum`` and any plugged in), over the means of shuffled buckets of ``bucket_size``
    updates. ``params`` holds the other keys of the section, the parameters of the chosen rule and server
    optimizer (``trim_fraction``, ``byzantine``, ``server_momentum``, ...): the coordinator's components
    declare and check them (fedmq.coordinator.strategy). Every update's change is clipped to ``clip_norm``
    (``clip_auto``: to the
    previous round's median change norm) and its weight capped at ``weight_cap`` (``weight_auto``: twice the
    median sample count the nodes report); see fedmq.coordinator.strategy.bounds. ``proximal_mu`` is FedProx's
    mu, sent to nodes with each round. The server optimizer treats the aggregated change as a
    pseudo-gradient (Reddi et al. 2021): ``fedavg`` applies it, ``fedavgm`` with momentum, ``fedadam``,
    ``fedyogi`` and ``fedadagrad`` adaptively, at rate ``server_lr``. ``mode`` is ``sync`` (rounds) or
    ``async`` (FedBuff,
    ``asynchronous``); ``edge_rounds`` HierFAVG's schedule per level; ``secure`` secure aggregation.
    """

    aggregator: str = "fedavg"
    bucket_size: int = 1  # robust rules: applied to means of shuffled buckets of this many updates (1: off)
    clip_norm: Optional[float] = None
    clip_auto: bool = True
    weight_cap: Optional[float] = None
    weight_auto: bool = True
    proximal_mu: float = 0.0
    partial_work: bool = False  # FedProx: nodes short of time send the epochs they managed
    server_optimizer: str = "fedavg"
    server_lr: float = 1.0
    params: Mapping[str, Any] = field(default_factory=dict, hash=False)  # the chosen components' parameters
    privacy: Optional[Privacy] = None
    mode: str = "sync"
    asynchronous: AsyncSettings = field(default_factory=AsyncSettings)
    edge_rounds: Tuple[int, ...] = ()  # HierFAVG: aggregations a group at depth d runs per parent aggregation
    secure: Optional[SecureAggregation] = None

    def edge_rounds_at(self, depth: int) -> int:
        """How many aggregations of its own a group at ``depth`` (1 = the root's children) runs per round
        of its parent (1 unless ``edge_rounds`` says more)."""
        return self.edge_rounds[depth - 1] if 0 < depth <= len(self.edge_rounds) else 1

    @property
    def robust(self) -> bool:
        """True when the rule needs every update, not just their sums."""
        return self.aggregator != "fedavg"

    @property
    def clip(self) -> Optional[float]:
        """The norm every change is clipped to: the privacy bound, else ``clip_norm``, else none."""
        return self.privacy.clip_norm if self.privacy is not None else self.clip_norm


@dataclass(frozen=True)
class Transport:
    """Messages over ``max_payload_bytes`` are sent in chunks; incomplete chunk sets are dropped after
    ``chunk_timeout_s``."""

    max_payload_bytes: Optional[int] = None
    chunk_timeout_s: float = 60.0


@dataclass(frozen=True)
class SecuritySettings:
    """End-to-end signatures: ``keys`` is the public key file (keys.json from ``fedmq broker provision``),
    ``signing_key`` the coordinator's own Ed25519 key."""

    signatures: bool = False
    keys: Optional[str] = None
    signing_key: Optional[str] = None
    dir: Optional[str] = None  # the provisioning directory: lets the coordinator enrol devices with tokens
    broker_pid_file: Optional[str] = None  # Mosquitto's pid file, to make it reload after an enrolment


SCALING_MODES = ("auto", "federated", "none")


@dataclass(frozen=True)
class ScalingPolicy:
    """Federated feature scaling (``fedmq.shared.scaling``): ``federated`` gathers the features' mean and
    scale from the nodes before round 1 and again every ``every_rounds`` rounds (0: once); ``auto`` does so
    when a node learns from a live stream; ``none`` never."""

    mode: str = "auto"
    every_rounds: int = 0


@dataclass(frozen=True)
class Monitoring:
    """The coordinator's Prometheus endpoint (``metrics.address``, ``host:port``; None: off) and whether its
    metrics carry one label per node (``metrics.per_node``; off: label sets stay bounded by the groups)."""

    address: Optional[str] = None
    per_node: bool = False


@dataclass(frozen=True)
class DataRef:
    """A data source: ``kind`` (csv, npz, mqtt or a plug-in's), ``path`` (file sources; '' for others) and
    the options the kind's class validated."""

    kind: str
    path: str
    options: Dict[str, Any] = field(default_factory=dict)


@dataclass
class Group:
    """One level of the topic tree: named nodes, admission patterns and child groups."""

    name: str
    path: GroupPath
    nodes: Tuple[str, ...] = ()
    admit: Tuple[str, ...] = ()
    edge: bool = False
    children: Tuple["Group", ...] = ()
    line: Optional[int] = None
    broker: Optional[BrokerSettings] = None  # a site broker for this subtree, bridged to its parent's broker
    workers: int = 1  # edge aggregator processes sharing this group's updates (MQTT v5 shared subscription)

    def walk(self) -> Iterator["Group"]:
        """This group and every group below it, parents first."""
        yield self
        for child in self.children:
            yield from child.walk()

    def admits(self, node_id: str) -> bool:
        """True if ``node_id`` is named by this group or matches one of its patterns."""
        return node_id in self.nodes or any(fnmatch.fnmatchcase(node_id, p) for p in self.admit)

    @property
    def has_patterns(self) -> bool:
        """True if this group or any group below admits nodes by pattern (size unknown)."""
        return any(g.admit for g in self.walk())

    def named_nodes(self) -> Tuple[str, ...]:
        """Every node named in this subtree."""
        return tuple(n for g in self.walk() for n in g.nodes)


@dataclass
class TopicMap:
    """A whole federation, as validated from one YAML file."""

    file: str
    federation: str
    broker: BrokerSettings
    model: ModelSpec
    policy: RoundPolicy
    limits: Limits
    root: Group
    evaluation: Optional[DataRef] = None
    checkpoint_dir: Optional[str] = None
    security: SecuritySettings = field(default_factory=SecuritySettings)
    compression: Compression = field(default_factory=Compression)
    transport: Transport = field(default_factory=Transport)
    strategy: Strategy = field(default_factory=Strategy)
    scaling: ScalingPolicy = field(default_factory=ScalingPolicy)
    monitoring: Monitoring = field(default_factory=Monitoring)

    def groups(self) -> Dict[GroupPath, Group]:
        """Every group by path (the root is the empty path)."""
        return {g.path: g for g in self.root.walk()}

    def topics(self) -> "Topics":
        """Topic names on the broker this process talks to (``broker``, with its topic prefix)."""
        from fedmq.shared.topics import Topics

        return Topics(self.federation, self.broker.topic_prefix)

    def broker_for(self, path: GroupPath) -> BrokerSettings:
        """The broker that serves group ``path``: its own site broker, the nearest ancestor's, or the root's."""
        groups = self.groups()
        for i in range(len(path), 0, -1):
            g = groups.get(path[:i])
            if g is not None and g.broker is not None:
                return g.broker
        return self.broker

    def site_groups(self, site: GroupPath) -> List[GroupPath]:
        """The groups whose broker is site ``site``'s: the site and its subtree minus nested sites."""
        out, stack = [], [self.groups()[site]]
        while stack:
            g = stack.pop()
            out.append(g.path)
            stack.extend(c for c in g.children if c.broker is None)
        return sorted(out)

    def group_of(self, node_id: str) -> Optional[Group]:
        """The group a node belongs to: the one naming it, else the deepest whose pattern admits it."""
        best: Optional[Group] = None
        for g in self.root.walk():
            if node_id in g.nodes:
                return g
            if any(fnmatch.fnmatchcase(node_id, p) for p in g.admit):
                if best is None or len(g.path) > len(best.path):
                    best = g
        return best
