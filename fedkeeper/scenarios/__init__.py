"""Experiments FedKeeper runs over the fabric: federated learning, and the smoke test."""
