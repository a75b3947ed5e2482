"""Names of the parties of a federation: certificate CNs, MQTT usernames and signer ids."""

from typing import Sequence

COORDINATOR = "coordinator"


def edge_id(path: Sequence[str]) -> str:
    """The identity of the edge aggregator serving the group at ``path``."""
    return "edge/" + "/".join(path)  # "/" cannot be in a node id, and (unlike ":") can be in a Mosquitto user name
