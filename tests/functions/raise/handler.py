"""Test function: raises a ValueError whose message comes from params (and may echo a setting to mask)."""

import os


def handle(params: dict) -> dict:
    secret = os.environ.get("FK_MONGO_URL", "")
    raise ValueError(f"{params.get('message', 'bad input')} {secret if params.get('leak') else ''}".strip())
