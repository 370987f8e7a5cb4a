"""`make test-order`: write each test file's time in this checkout's last runs (pytest's cache) to
``tests/file_seconds.json``, the order a clean clone, which has no cache yet, runs the files in."""

from __future__ import annotations

import json
import sys

from tests.conftest import _FILE_SECONDS_KEY, COMMITTED_FILE_SECONDS, ROOT

CACHED = ROOT / ".pytest_cache" / "v" / _FILE_SECONDS_KEY  # where pytest's cache keeps that key


def main() -> int:
    if not CACHED.is_file():
        print("no test times yet: run `make test` first, then `make test-order`", file=sys.stderr)
        return 1
    seconds = json.loads(CACHED.read_text())
    kept = {path: round(float(s), 1) for path, s in sorted(seconds.items()) if (ROOT / path).is_file()}
    COMMITTED_FILE_SECONDS.write_text(json.dumps(kept, indent=1, sort_keys=True) + "\n")
    print(f"{COMMITTED_FILE_SECONDS.relative_to(ROOT)}: {len(kept)} files, {sum(kept.values()):.0f} s summed")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
