"""FedKeeper: federated learning over a function-as-a-service fabric."""

__version__ = "0.1.0"
