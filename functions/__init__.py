"""The deployable functions (shipped from the top-level functions/ folder); each folder has handler.py."""
