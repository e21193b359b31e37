"""What the conversion tests compare before and after converting: every source file's hash and mtime."""

import hashlib
import os


def snapshot(folder) -> dict:
    """{path: (sha256, mtime_ns)} of every file below ``folder``."""
    return {p: (hashlib.sha256(open(p, "rb").read()).hexdigest(), os.stat(p).st_mtime_ns)
            for p in (os.path.join(d, f) for d, _, fs in os.walk(folder) for f in fs)}
