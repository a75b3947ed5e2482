"""Refuse to write fedmq's Mosquitto configuration where another Mosquitto would include it.

The rendered file is a whole configuration for fedmq's own Mosquitto process. Put into a home broker's
``conf.d`` (Debian's ``/etc/mosquitto/mosquitto.conf`` includes that directory) it breaks that broker:
``persistence_location`` twice stops it from starting, and with persistence off it still takes the home's
broker over, since once any listener is configured Mosquitto no longer opens its default port 1883, and
``per_listener_settings`` and the ACL change authentication for every listener, the home's own clients'
included. A drop-in cannot add a listener without knowing and restating the home's own listeners and
authentication, so fedmq renders none.
"""

from __future__ import annotations

import glob
import os
import stat
from typing import Optional

MESSAGE = (
    "{target} would be read by another Mosquitto as part of its configuration ({by}); fedmq's config is a "
    "whole configuration for a Mosquitto process of its own, and in the home broker's conf.d it stops that "
    "broker (Duplicate persistence_location value) or takes its listener 1883 and its clients' authentication "
    "away. Write it elsewhere, e.g. --out /etc/fedmq/mosquitto.conf, and run it beside the home's broker with "
    "deploy/systemd/fedmq-mosquitto.service (docs/deploy.md, 'A home that already runs Mosquitto')"
)


def stdout_file() -> Optional[str]:
    """The path of the regular file standard output is redirected to, if it is one (Linux)."""
    try:
        if not stat.S_ISREG(os.fstat(1).st_mode):
            return None
        return os.readlink("/proc/self/fd/1")
    except OSError:
        return None


def included_by(path: str) -> Optional[str]:
    """What would include ``path`` as Mosquitto configuration: a ``mosquitto.conf`` whose ``include_dir`` is
    its directory (looked for beside that directory), or "a conf.d directory"; None otherwise."""
    folder = os.path.dirname(os.path.abspath(path))
    for conf in sorted(glob.glob(os.path.join(os.path.dirname(folder), "*.conf"))):
        try:
            with open(conf, encoding="utf-8", errors="replace") as fh:
                for line in fh:
                    words = line.split()
                    if len(words) == 2 and words[0] == "include_dir" and os.path.abspath(
                            os.path.join(os.path.dirname(conf), words[1])) == folder:
                        return f"include_dir in {conf}"
        except OSError:
            continue
    return "a conf.d directory" if os.path.basename(folder) == "conf.d" else None


def refusal(target: Optional[str]) -> Optional[str]:
    """Why the config must not be written to ``target`` (None: it may)."""
    by = included_by(target) if target else None
    return MESSAGE.format(target=target, by=by) if by else None
