"""fedmq.coordinator: rounds, hierarchical streaming FedAvg, edge aggregators, checkpoints, the demo."""
