"""fedmq.node: the software on a gateway. Trains on local data that never leaves it and publishes updates.

It depends on fedmq.shared only; it never imports the coordinator.
"""
