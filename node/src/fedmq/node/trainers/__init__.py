"""Local trainers. Each reads and writes weights by name in the layout of fedmq.shared.models."""

from fedmq.node.trainers.base import Trainer, TrainerUnavailable
from fedmq.node.trainers.registry import make_trainer

__all__ = ["Trainer", "TrainerUnavailable", "make_trainer"]
