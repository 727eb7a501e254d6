"""Regenerate ``fedkeeper/runtime/data/digits.npz`` from scikit-learn's bundled copy of the UCI digits.

Why a generator and not a download: scikit-learn ships the data inside its wheel, so this works offline and
gives the same bytes every time. scikit-learn is a development tool only; the functions read the ``.npz``.

The file holds the original 1,797 samples in their original order (``X``: uint8 0..16, shape (1797, 64);
``y``: uint8 0..9). The train/test split is made by ``fedkeeper.runtime.data`` with a fixed seed, so the
file stays a faithful copy of the source. Run: ``python tools/make_digits.py``.
"""

from __future__ import annotations

import hashlib
import io
import sys
import zipfile
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parents[1] / "fedkeeper" / "runtime" / "data" / "digits.npz"
_FIXED_DATE = (1980, 1, 1, 0, 0, 0)


def build() -> bytes:
    """The .npz bytes, deterministic: fixed member order and timestamps (np.savez stamps the current time)."""
    from sklearn.datasets import load_digits  # dev-only dependency

    bunch = load_digits()
    x = np.asarray(bunch.data)
    y = np.asarray(bunch.target)
    if x.shape != (1797, 64) or x.min() < 0 or x.max() > 16 or not np.array_equal(x, np.round(x)):
        raise SystemExit(f"unexpected digits data: shape {x.shape}, range {x.min()}..{x.max()}")
    arrays = {"X": x.astype(np.uint8), "y": y.astype(np.uint8)}
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, arr in arrays.items():
            member = io.BytesIO()
            np.lib.format.write_array(member, arr, allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=_FIXED_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, member.getvalue(), compresslevel=9)
    return out.getvalue()


def main() -> int:
    data = build()
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_bytes(data)
    print(f"wrote {OUT} ({len(data):,} bytes, sha256 {hashlib.sha256(data).hexdigest()})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
