"""Names of the parties of a federation: certificate CNs, MQTT usernames and signer ids."""

from typing import Sequence

COORDINATOR = "coordinator"
MONITOR = "monitor"  # reads statuses, round progress and summaries only (fedmq status, fedmq demo's progress)
DASHBOARD = "dashboard"  # the same rights, for the long-running fedmq dashboard (one connection per identity)
OBSERVERS = (MONITOR, DASHBOARD)


def edge_id(path: Sequence[str], worker: int = 0) -> str:
    """The identity of the edge aggregator serving the group at ``path`` (of its ``worker``-th process when
    the group is split over several: each has its own certificate, broker user, client id and signing key)."""
    # "/" cannot be in a node id, and (unlike ":") can be in a Mosquitto user name
    return ("edge/" if worker == 0 else f"edge-w{worker}/") + "/".join(path)
