"""Watching a running federation from its retained topics: ``fedmq status`` and ``fedmq dashboard``."""
