"""The openwhisk platform: everything FedKeeper knows about it lives in this folder."""
