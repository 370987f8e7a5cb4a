"""`make test-order`: write each test file's time in this checkout's last runs (pytest's cache) to
``tests/file_seconds.json``, the order a clean clone, which has no cache yet, runs the files in."""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CACHED = ROOT / ".pytest_cache" / "v" / "aipm" / "file-seconds"
COMMITTED = ROOT / "tests" / "file_seconds.json"


def main() -> int:
    if not CACHED.is_file():
        print("no test times yet: run `make test` first, then `make test-order`", file=sys.stderr)
        return 1
    seconds = json.loads(CACHED.read_text())
    kept = {path: round(float(s), 1) for path, s in sorted(seconds.items()) if (ROOT / path).is_file()}
    COMMITTED.write_text(json.dumps(kept, indent=1, sort_keys=True) + "\n")
    print(f"{COMMITTED.relative_to(ROOT)}: {len(kept)} files, {sum(kept.values()):.0f} s summed")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
