"""Who the broker refused, from Mosquitto's log: ``fedmq broker denials LOG``.

Mosquitto logs an ACL denial only at its ``debug`` log level (``Denied PUBLISH from <client id> (..., 'topic',
...``), which ``fedmq broker render --audit`` turns on. Under provisioned security the client id is the
party's identity (``use_username_as_clientid``), so every line names who probed what.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Dict, Iterable

DENIED = re.compile(r"Denied (PUBLISH|SUBSCRIBE) from (\S+) \(.*?'([^']*)'")


def denials(lines: Iterable[str]) -> Dict[str, Counter]:
    """Client id -> Counter of (action, topic) it was refused, from Mosquitto log lines."""
    out: Dict[str, Counter] = {}
    for line in lines:
        m = DENIED.search(line)
        if m:
            action, client, topic = m.groups()
            out.setdefault(client, Counter())[(action, topic)] += 1
    return out


def report(found: Dict[str, Counter], top: int = 5) -> str:
    """One block per client, most refused first: its total and its most refused topics."""
    if not found:
        return "no denials in the log (is it written with fedmq broker render --audit?)"
    lines = []
    for client, counts in sorted(found.items(), key=lambda kv: -sum(kv[1].values())):
        lines.append(f"{client}: {sum(counts.values())} refused")
        for (action, topic), n in counts.most_common(top):
            lines.append(f"  {n:>6}  {action.lower():<9} {topic}")
        if len(counts) > top:
            lines.append(f"  ... and {len(counts) - top} other topics")
    return "\n".join(lines)
