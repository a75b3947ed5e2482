"""fedmq.broker: Mosquitto configuration from a topic map, and Mosquitto as a managed child process."""

from fedmq.broker.config import BrokerConfig, render_config
from fedmq.broker.process import MosquittoProcess, find_mosquitto

__all__ = ["BrokerConfig", "MosquittoProcess", "find_mosquitto", "render_config"]
