"""Data sources that live on the gateway: MQTT sensor streams sampled into a bounded on-disk store."""
