"""``python -m bench [--quick] [--only NAME ...]``: run the benchmarks and print one table."""

from __future__ import annotations

import argparse
import logging
import sys
import time
import traceback

from bench.cases import ALIASES, BENCHMARKS, Plan, Row
from bench.harness import Harness

COLUMNS = ("#", "benchmark", "this system", "seed baseline", "vs seed", "target", "met?")


def render(rows: list[Row]) -> str:
    cells = [
        (str(i), r.name, r.ours, r.seed, r.ratio, r.target, {True: "yes", False: "NO", None: "-"}[r.met])
        for i, r in enumerate(rows, 1)
    ]
    widths = [max(len(c[k]) for c in [COLUMNS, *cells]) for k in range(len(COLUMNS))]

    def line(c: tuple[str, ...]) -> str:
        return "| " + " | ".join(v.ljust(w) for v, w in zip(c, widths, strict=True)) + " |"

    out = [line(COLUMNS), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(c) for c in cells]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer samples, a shorter run")
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="NAME",
        help=f"run only these benchmarks ({', '.join(BENCHMARKS)}; repeatable)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work folder (runner and agent logs)")
    args = parser.parse_args(argv)
    names = [ALIASES.get(n, n) for n in args.only] or list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark {unknown[0]!r}; choose from {', '.join(BENCHMARKS)}")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    plan = Plan.make(args.quick)
    started = time.monotonic()
    harness = Harness(keep=args.keep)
    rows: list[Row] = []
    try:
        print(f"bench: starting the local stack in {harness.workdir} ...", file=sys.stderr, flush=True)
        harness.start()
        for name in BENCHMARKS:
            if name not in names:
                continue
            t = time.monotonic()
            print(f"bench: {name} ...", file=sys.stderr, flush=True)
            try:
                rows += BENCHMARKS[name](harness, plan)
            except Exception as e:  # report, never stop the other rows
                rows.append(Row(name, f"error: {type(e).__name__}: {e}"[:60], "-", "-", "-", None, "0"))
                traceback.print_exc()
            print(f"bench: {name} took {time.monotonic() - t:.1f} s", file=sys.stderr, flush=True)
    finally:
        harness.stop()
    print()
    print(render(rows))
    print()
    for r in rows:
        print(f"- {r.name}: {r.samples}" + (f". {r.note}" if r.note else ""))
    mode = "quick" if args.quick else "full"
    print(f"\n{mode} run, {time.monotonic() - started:.0f} s in total")
    return 0


if __name__ == "__main__":
    sys.exit(main())
