"""Container health check: healthy while the bot touched its heartbeat file recently.

`python -m bot.health` exits 0 when healthy, 1 otherwise. Reads only HEARTBEAT_PATH, so it works
without the secrets in its environment.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

MAX_AGE_SECONDS = 90.0


def healthy(path: Path, now: float | None = None, max_age: float = MAX_AGE_SECONDS) -> bool:
    try:
        age = (now if now is not None else time.time()) - path.stat().st_mtime
    except OSError:
        return False
    return age <= max_age


def main() -> int:
    path = Path(os.environ.get("HEARTBEAT_PATH", "data/heartbeat"))
    return 0 if healthy(path) else 1


if __name__ == "__main__":
    sys.exit(main())
