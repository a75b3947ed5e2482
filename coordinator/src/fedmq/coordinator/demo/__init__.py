"""``fedmq demo``: a whole federation on this machine (private Mosquitto, coordinator, node processes)."""
