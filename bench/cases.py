"""The benchmarks: each a small function taking the shared harness and returning result rows.

Benchmarks never assert: they measure, compare with the seed baseline and report.
"""

from __future__ import annotations

import math
import os
import random
import threading
import time
import uuid
from dataclasses import dataclass, field

from bench.harness import Harness, cpu_times, iso_to_epoch, rss_kib
from bench.proxy import TABLE_READS, table_reads
from bench.seed import SEED_FIXED_WAIT, SEED_SCAN_SECONDS, SeedPoller

# DESIGN.md (Targets); the bench prints them beside the measurements and never asserts them
PICKUP_P50 = 0.15  # s, put-item -> claimed
PICKUP_P95 = 0.30  # s
OVERHEAD_P50 = 0.15  # s per task beside the agent's own time
SLOTS_RATIO = 3.8  # 4 slots vs 1 slot, IO-bound agent
ECHO_P50_MS = 10.0  # terminal keystroke echo through the local gateway
OUTPUT_MBPS = 5.0  # terminal output through the relay
PAGE_BURST_SECONDS = 2.0  # a 5 MB burst rendered by the page in Chromium


@dataclass
class Row:
    """One line of the report table."""

    name: str
    ours: str
    seed: str
    ratio: str
    target: str
    met: bool | None  # None: no target, or not measured
    samples: str
    note: str = ""


@dataclass
class Plan:
    quick: bool
    pickup_samples: int = 20
    seed_window: float = 10.0
    seed_samples: int = 20
    slot_tasks: int = 12
    idle_seconds: float = 10.0
    shared_rounds: int = 6  # four tasks a round, two of them on one branch
    burst_tasks: int = 200
    sandbox_samples: int = 12
    extra: dict = field(default_factory=dict)

    @classmethod
    def make(cls, quick: bool) -> Plan:
        if quick:
            return cls(
                quick,
                pickup_samples=10,
                seed_samples=10,
                slot_tasks=12,
                shared_rounds=4,
                burst_tasks=96,
                sandbox_samples=6,
            )
        return cls(quick, slot_tasks=16)


def pct(values: list[float], q: float) -> float:
    """The q-th percentile (0..100), linear between the two nearest ranks."""
    xs = sorted(values)
    if not xs:
        return float("nan")
    k = (len(xs) - 1) * q / 100
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    if math.isinf(xs[hi]):  # a censored sample (never seen to happen) counts as endless
        return xs[lo] if k == lo else math.inf
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def times_better(seed: float, ours: float) -> str:
    if ours <= 0:
        return "inf" if seed > 0 else "="
    return f"{seed / ours:,.1f}x better"


# -- 1 + 2: pick-up latency and per-task overhead ----------------------------------------------
def pickup_and_overhead(h: Harness, plan: Plan) -> list[Row]:
    """Sequential tasks on an idle runner: put-item -> the row's startedAt (the claim), and
    startedAt -> finishedAt less the fake agent's own time; the seed poller measured the same way."""
    runner = h.runner(slots=2)
    agent_sleep = 0.5
    pickups: list[float] = []
    overheads: list[float] = []
    agent_times: list[float] = []
    before: list[float] = []  # claim -> the agent's first line of its own
    after: list[float] = []  # the agent's last line -> complete
    rnd = random.Random(7)
    measured: dict[str, tuple[float, tuple[float, float]]] = {}  # task -> (overhead, agent run)
    for _ in range(plan.pickup_samples):
        time.sleep(rnd.uniform(0.05, 0.3))  # no phase lock with any poll loop
        put_at = time.time()
        task_id = h.put_task("pickup", f"[fake:sleep={agent_sleep}]")
        row = h.wait_final(task_id)
        if row.get("status") != "complete" or not row.get("startedAt"):
            continue
        pickups.append(iso_to_epoch(row["startedAt"]) - put_at)
        run = h.agent_run(task_id)
        if run is not None and row.get("finishedAt"):
            start, end = iso_to_epoch(row["startedAt"]), iso_to_epoch(row["finishedAt"])
            agent_times.append(run[1] - run[0])
            overheads.append(end - start - (run[1] - run[0]))
            before.append(run[0] - start)
            after.append(end - run[1])
            measured[task_id] = (overheads[-1], run)
    # the agent process's own start and exit, counted in the overhead above: from the runner's
    # line just before the spawn to the agent's first line, and from its last line to the runner's
    # line once it has exited (the real CLI starts as it starts; the fake one is a Python program)
    spawned = h.log_times(runner, " starting: ")
    ended = h.log_times(runner, " run ended: ")
    process = {
        t: (run[0] - spawned[t]) + (ended[t] - run[1])
        for t, (_, run) in measured.items()
        if t in spawned and t in ended
    }
    runner_own = [over - process[t] for t, (over, _) in measured.items() if t in process]

    seed_pickups = _seed_pickups(h, plan)
    p50, p95 = pct(pickups, 50), pct(pickups, 95)
    s50, s95 = pct(seed_pickups, 50), pct(seed_pickups, 95)
    rows = [
        Row(
            "pick-up latency p50 (put-item -> processing)",
            f"{p50 * 1000:.0f} ms",
            f"{s50 * 1000:,.0f} ms",
            times_better(s50, p50),
            f"<= {PICKUP_P50 * 1000:.0f} ms",
            p50 <= PICKUP_P50,
            f"{len(pickups)} ours, {len(seed_pickups)} seed",
            "startedAt (claim) minus the put's start; seed = Scan every 5 s, then update-item",
        ),
        Row(
            "pick-up latency p95",
            f"{p95 * 1000:.0f} ms",
            f"{s95 * 1000:,.0f} ms",
            times_better(s95, p95),
            f"<= {PICKUP_P95 * 1000:.0f} ms",
            p95 <= PICKUP_P95,
            f"{len(pickups)} ours, {len(seed_pickups)} seed",
        ),
    ]
    o50 = pct(overheads, 50)
    seed_over = [max(SEED_FIXED_WAIT - a, 0.0) for a in agent_times]
    so50 = pct(seed_over, 50)
    rows.append(
        Row(
            "per-task overhead p50 (beside the agent's time)",
            f"{o50 * 1000:.0f} ms",
            f"{so50:,.1f} s (modelled)",
            times_better(so50, o50),
            f"<= {OVERHEAD_P50 * 1000:.0f} ms",
            o50 <= OVERHEAD_P50,
            f"{len(overheads)} tasks, agent p50 {pct(agent_times, 50):.2f} s",
            f"claim->complete minus the fake agent's logged start->end (claim->agent start p50 "
            f"{pct(before, 50) * 1000:.0f} ms, agent end->complete p50 {pct(after, 50) * 1000:.0f} ms); "
            f"of it the agent process's own start-up and exit (spawn -> its first line, its last "
            f"line -> exited) p50 {pct(list(process.values()), 50) * 1000:.0f} ms, the rest (claim, "
            f"git, status writes) p50 {pct(runner_own, 50) * 1000:.0f} ms; "
            "seed = fixed 30 s wait minus agent time, computed, not slept",
        )
    )
    return rows


# -- 2b: the sandbox's cost per task --------------------------------------------------------
def sandbox_overhead(h: Harness, plan: Plan) -> list[Row]:
    """The per-task overhead (claim -> complete less the fake agent's own time) of the same short
    tasks on runners with AGENT_SANDBOX=off and =bwrap (network none, and proxy, the default, whose
    bridge starts before the agent): what the sandbox adds to every task."""
    modes = {
        "off": {"AGENT_SANDBOX": "off"},
        "none": {"AGENT_SANDBOX": "bwrap", "AGENT_NETWORK": "none"},
        "proxy": {"AGENT_SANDBOX": "bwrap", "AGENT_NETWORK": "proxy"},
    }
    samples: dict[str, list[float]] = {mode: [] for mode in modes}
    # each mode twice, mirrored: a machine that slows down or warms up over the run weighs on all alike
    for mode in ("off", "none", "proxy", "proxy", "none", "off"):
        h.runner(slots=2, env=modes[mode])
        for _ in range(max(plan.sandbox_samples // 2, 1)):
            task_id = h.put_task(f"sandbox-{mode}", "[fake:sleep=0.2]")
            row = h.wait_final(task_id)
            run = h.agent_run(task_id)
            if row.get("status") == "complete" and run is not None and row.get("finishedAt"):
                took = iso_to_epoch(row["finishedAt"]) - iso_to_epoch(row["startedAt"])
                samples[mode].append(took - (run[1] - run[0]))
    p50 = {mode: pct(values, 50) for mode, values in samples.items()}
    on, off = p50["proxy"], p50["off"]
    return [
        Row(
            "per-task overhead p50 in the sandbox (AGENT_SANDBOX=bwrap)",
            f"{on * 1000:.0f} ms",
            "no sandbox",
            "-",
            f"<= {OVERHEAD_P50 * 1000:.0f} ms",
            on <= OVERHEAD_P50,
            ", ".join(f"{len(v)} tasks {m}" for m, v in samples.items()),
            f"AGENT_NETWORK=proxy (the default); the same tasks without the sandbox: {off * 1000:.0f} ms, "
            f"so it adds {(on - off) * 1000:.0f} ms a task ({(p50['none'] - off) * 1000:.0f} ms with "
            "AGENT_NETWORK=none, no proxy bridge)",
        )
    ]


def _seed_pickups(h: Harness, plan: Plan) -> list[float]:
    """Rows put at random moments over a few scan periods; latency = the seed's claim - put."""
    poller = SeedPoller(h.seed_ddb, h.seed_table)
    rnd = random.Random(11)
    offsets = sorted(rnd.uniform(0, plan.seed_window) for _ in range(plan.seed_samples))
    puts: dict[str, float] = {}
    poller.start()
    t0 = time.monotonic()
    for off in offsets:
        time.sleep(max(0.0, t0 + off - time.monotonic()))
        put_at = time.time()
        puts[h.put_task("seed", "", table=h.seed_table)] = put_at
    deadline = time.monotonic() + SEED_SCAN_SECONDS + 2
    while time.monotonic() < deadline and len(poller.claimed) < len(puts):
        time.sleep(0.05)
    poller.stop()
    return [poller.claimed[t] - p for t, p in puts.items() if t in poller.claimed]


# -- 2b: pick-up when tasks share branches ---------------------------------------------------
SHARED_CAP = 20.0  # s; a task not claimed by then counts as stalled (the reconciler is 60-120 s away)
SHARED_AGENT = 1.0  # s the first task of a branch works: the second one's claim comes meanwhile


def shared_branch_pickup(h: Harness, plan: Plan) -> list[Row]:
    """Half the tasks share a branch with another. Each round puts four tasks: A (on a fresh
    branch; its agent works 1 s) and C (a branch of its own); once A is claimed, B on A's branch,
    whose claim the branch lock refuses (it waits for A), then D (a branch of its own). Pick-up:
    put -> startedAt; for B, from the moment its branch was free (A's finishedAt) when that was
    later. A task not claimed within SHARED_CAP s counts as stalled and ends the rounds."""
    runner = h.runner(slots=4)
    log_from = runner.log.stat().st_size  # the refusals are counted in the log from here
    lone: list[float] = []  # A, C, D: put -> claimed
    waited: list[float] = []  # B: free (or put) -> claimed
    put_ids: list[str] = []
    second: list[str] = []
    stalled = 0
    rnd = random.Random(13)
    for _ in range(plan.shared_rounds):
        time.sleep(rnd.uniform(0.05, 0.3))  # no phase lock with any poll loop
        branch = f"feature/bench-shared-{uuid.uuid4().hex[:10]}"
        put_at: dict[str, float] = {}

        def put(details: str, on: str | None = None, at: dict[str, float] = put_at) -> str:
            started = time.time()
            task_id = h.put_task("shared", details, branch=on)
            at[task_id] = started
            put_ids.append(task_id)
            return task_id

        a = put(f"[fake:sleep={SHARED_AGENT:g}]", branch)
        c = put("[fake:sleep=0.5]")
        if (
            not h.wait_all_final([a], timeout=SHARED_CAP, every=0.05, until="startedAt")
            .get(a, {})
            .get("startedAt")
        ):
            stalled += 2  # A and C (C may have been claimed; the round is lost either way)
            break
        b = put("[fake:sleep=0.5]", branch)
        second.append(b)
        time.sleep(0.3)  # B's signal reaches the runner meanwhile and is refused (A works 1 s)
        d = put("[fake:sleep=0.5]")
        rows = h.wait_all_final([a, b, c, d], timeout=SHARED_CAP + SHARED_AGENT, every=0.05)
        for task_id in (a, b, c, d):
            row = rows.get(task_id, {})
            if row.get("status") != "complete" or not row.get("startedAt"):
                stalled += 1
                continue
            since = put_at[task_id]
            if task_id == b and rows[a].get("finishedAt"):
                since = max(since, iso_to_epoch(rows[a]["finishedAt"]))
            latency = iso_to_epoch(row["startedAt"]) - since
            (waited if task_id == b else lone).append(latency)
        if stalled:
            break
    h.abandon(put_ids)
    log = runner.log.read_bytes()[log_from:].decode(errors="replace")
    refusals = [line for line in log.splitlines() if "is locked by task" in line]
    refused = sum(1 for b in second if any(f'"task_id":"{b}"' in line for line in refusals))
    values = lone + waited + [math.inf] * stalled
    p50, p95 = pct(values, 50), pct(values, 95)
    # the seed scanned every 5 s and had no one-task-per-branch rule: a put waits U(0, 5) s
    s50, s95 = SEED_SCAN_SECONDS * 0.5, SEED_SCAN_SECONDS * 0.95
    samples = (
        f"{len(values)} tasks ({len(second)} rounds of 4), {len(waited)} waited for their branch "
        f"({refused} of {len(second)} refused by the lock first)"
        + (f"; {stalled} not claimed within {SHARED_CAP:.0f} s" if stalled else "")
    )

    def shown(v: float) -> str:
        return f"{v * 1000:.0f} ms" if math.isfinite(v) else f"> {SHARED_CAP:.0f} s (stalled)"

    return [
        Row(
            "pick-up p50, half the tasks sharing a branch",
            shown(p50),
            f"{s50 * 1000:,.0f} ms (modelled)",
            times_better(s50, p50) if math.isfinite(p50) else "worse",
            f"<= {PICKUP_P50 * 1000:.0f} ms",
            p50 <= PICKUP_P50,
            samples,
            f"put -> startedAt; for the second task of a branch, from its branch's release (the first "
            f"task's finishedAt) if later: p50 {shown(pct(waited, 50))} for those, "
            f"{shown(pct(lone, 50))} for the others; seed = Scan every 5 s, modelled, no branch rule",
        ),
        Row(
            "pick-up p95, half the tasks sharing a branch",
            shown(p95),
            f"{s95 * 1000:,.0f} ms (modelled)",
            times_better(s95, p95) if math.isfinite(p95) else "worse",
            f"<= {PICKUP_P95 * 1000:.0f} ms",
            p95 <= PICKUP_P95,
            samples,
            "a refused claim (a cancelled TransactWriteItems) must not stop dispatch for later tasks",
        ),
    ]


# -- 3: slots -----------------------------------------------------------------------------------
def slots_scaling(h: Harness, plan: Plan) -> list[Row]:
    """N IO-bound tasks (the fake agent sleeps 1 s) on one runner with 1 slot, then with 4."""
    thr: dict[int, float] = {}
    for slots in (1, 4):
        h.runner(slots=slots)
        t0 = time.time()
        ids = [h.put_task(f"slots{slots}", "[fake:sleep=1]") for _ in range(plan.slot_tasks)]
        rows = [h.wait_final(i, timeout=120) for i in ids]
        done = [iso_to_epoch(r["finishedAt"]) for r in rows if r.get("status") == "complete"]
        thr[slots] = len(done) / (max(done) - t0) if done else 0.0
    ratio = thr[4] / thr[1] if thr[1] else 0.0
    return [
        Row(
            "4 slots vs 1 slot, IO-bound agent (throughput)",
            f"{thr[4]:.2f} tasks/s",
            f"{thr[1]:.2f} tasks/s (1 slot)",
            f"{ratio:.2f}x",
            f">= {SLOTS_RATIO}x",
            ratio >= SLOTS_RATIO,
            f"{plan.slot_tasks} tasks per setting",
            "first put -> last finishedAt; agent = [fake:sleep=1]; the seed had one session (1 slot)",
        )
    ]


# -- 3b: a burst drained ---------------------------------------------------------------------
BURST_RUNNERS, BURST_SLOTS, BURST_AGENT = 2, 4, 1.0


def burst_drain(h: Harness, plan: Plan) -> list[Row]:
    """``burst_tasks`` tasks inserted at once on branches of their own, two runners of four slots,
    an agent that works 1 s: first insert -> last finishedAt, against the ideal (tasks / 8 x 1 s).
    The target allows the per-task overhead target beside the agent's own measured time."""
    runners = h.runners(BURST_RUNNERS, BURST_SLOTS)
    n = plan.burst_tasks
    width = BURST_RUNNERS * BURST_SLOTS
    ideal = n / width * BURST_AGENT
    cpu0 = _burst_cpu([r.pid for r in runners])
    t0 = time.time()
    ids = h.put_tasks("burst", f"[fake:sleep={BURST_AGENT:g}]", n)
    inserted = time.time() - t0
    wanted = set(ids)
    # wait on the agents' log, not the table: moto serves DynamoDB one request at a time, and the
    # bench's reads of 200 rows would take turns with the runners' (the rows are read every 10 s
    # all the same, for tasks that end without their agent)
    deadline = time.monotonic() + ideal * 4 + 30
    next_read = time.monotonic() + 10
    while time.monotonic() < deadline and len(wanted & h.agents_ended("burst").keys()) < n:
        if time.monotonic() > next_read:
            next_read = time.monotonic() + 10
            seen = h.wait_all_final(ids, 0)
            if len(seen) == n and all(r.get("status") in ("complete", "failed") for r in seen.values()):
                break
        time.sleep(0.5)
    rows = h.wait_all_final(ids, timeout=max(deadline - time.monotonic(), 5), every=0.25)
    cpu = [b - a for a, b in zip(cpu0, _burst_cpu([r.pid for r in runners]), strict=True)]
    h.abandon(ids)
    done = [r for r in rows.values() if r.get("status") == "complete" and r.get("finishedAt")]
    failed = sum(1 for r in rows.values() if r.get("status") == "failed")
    drain = max(iso_to_epoch(r["finishedAt"]) for r in done) - t0 if done else math.inf
    if len(done) < n:
        drain = math.inf  # the drain did not end: that is the finding
    agent_times = [
        end - start for task_id, (start, end) in h.agents_ended("burst").items() if task_id in wanted
    ]
    agent = pct(agent_times, 50)
    allowed = n / width * (agent + OVERHEAD_P50)  # every slot busy, each task agent + overhead
    per_runner = sorted(
        (sum(1 for r in done if r.get("runnerId") == rid) for rid in {r.get("runnerId") for r in done}),
        reverse=True,
    )
    per_task = (drain - n / width * agent) / (n / width)
    cores = os.cpu_count() or 1
    seed = n * SEED_FIXED_WAIT  # one Kiro session, a fixed 30 s a task
    shown = f"{drain:.1f} s = {drain / ideal:.2f}x ideal" if math.isfinite(drain) else "did not drain"
    return [
        Row(
            f"burst drain: {n} tasks, {BURST_RUNNERS} runners x {BURST_SLOTS} slots, 1 s agent",
            shown,
            f"{seed:,.0f} s (modelled)",
            times_better(seed, drain) if math.isfinite(drain) else "-",
            f"<= {allowed / ideal:.2f}x",
            drain <= allowed,
            f"{len(done)} complete, {failed} failed, {n - len(done) - failed} unfinished; per runner "
            f"{'/'.join(map(str, per_runner)) or '-'}",
            f"first insert -> last finishedAt; ideal {n} / {width} x {BURST_AGENT:g} s = {ideal:.0f} s; "
            f"the fake agent's own run p50 {agent:.2f} s, so the target is {n} / {width} x (agent + "
            f"{OVERHEAD_P50 * 1000:.0f} ms) = {allowed:.1f} s; overhead per task under load "
            f"{per_task * 1000:.0f} ms; CPU {sum(cpu) / n * 1000:.0f} ms a task (moto and the event "
            f"sources {cpu[0] / n * 1000:.0f}, runners {cpu[1] / n * 1000:.0f}, their agents and git "
            f"{cpu[2] / n * 1000:.0f}), so at least {sum(cpu) / cores:.0f} s on {cores} cores; "
            f"BatchWriteItem insert took {inserted:.1f} s; seed = one session, a fixed 30 s a task",
        )
    ]


def _burst_cpu(runner_pids: list[int]) -> tuple[float, float, float]:
    """CPU seconds so far of this process (moto, the proxies, the event sources and functions), of
    the runners themselves, and of the children they waited for (agents, git)."""
    bench = sum(cpu_times(os.getpid()))
    runners = [cpu_times(pid) for pid in runner_pids]
    return bench, sum(r[0] for r in runners), sum(r[1] for r in runners)


# -- 4 + 5: idle reads and memory ---------------------------------------------------------------
def idle_reads(h: Harness, plan: Plan) -> list[Row]:
    """A warmed-up runner left idle; every request it and the local event sources send is counted
    at the proxies. The seed's scan poller runs through its own proxy over the same window."""
    h.runner(slots=2)
    time.sleep(0.5)  # let the warm-up task's last writes settle
    assert h.runner_proxy and h.system_proxy and h.seed_proxy
    before = (h.runner_proxy.snapshot(), h.system_proxy.snapshot(), h.seed_proxy.snapshot())
    poller = SeedPoller(h.seed_ddb, h.seed_table)
    poller.start()
    time.sleep(plan.idle_seconds)
    poller.stop()  # a scan in flight at the end would still count; stop first, then read
    after = (h.runner_proxy.snapshot(), h.system_proxy.snapshot(), h.seed_proxy.snapshot())
    runner_d, system_d, seed_d = (a - b for a, b in zip(after, before, strict=True))
    ours = table_reads(runner_d) + table_reads(system_d)
    seed = table_reads(seed_d)
    per_day_seed = 10_000 / 4 / 2 * (86_400 / SEED_SCAN_SECONDS)  # NOTES: 10 MB scan, eventually consistent
    stream_reads = system_d["DynamoDBStreams_20120810.GetRecords"]
    receives = sum(v for k, v in runner_d.items() if k.endswith("ReceiveMessage"))
    return [
        Row(
            f"idle table reads in {plan.idle_seconds:.0f} s (GetItem/Query/Scan)",
            f"{ours}",
            f"{seed} scans",
            "0 vs " + str(seed) if ours == 0 else times_better(seed, ours),
            "0",
            ours == 0,
            f"{plan.idle_seconds:.0f} s window",
            f"seed at 10 MB: ~{per_day_seed / 1e6:.1f} M read units/day, "
            f"ours {ours * 86_400 / plan.idle_seconds:,.0f} reads/day; not table reads: "
            f"{receives} SQS long polls, {stream_reads} stream GetRecords "
            "(free to Lambda in AWS); reconciler: 1 GSI Query/min",
        )
    ]


def memory(h: Harness, plan: Plan) -> list[Row]:
    """The runner's RSS idle, and its peak while 4 tasks run at once (the agents are separate
    processes and not counted)."""
    runner = h.runner(slots=4)
    time.sleep(0.5)
    idle = rss_kib(runner.pid)
    ids = [h.put_task("mem", "[fake:sleep=1] [fake:big=2000000]") for _ in range(4)]
    peak = idle
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, rss_kib(runner.pid))
            time.sleep(0.02)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    for i in ids:
        h.wait_final(i, timeout=60)
    stop.set()
    t.join()
    peak = max(peak, rss_kib(runner.pid, "VmHWM"))
    return [
        Row(
            "runner RSS idle / peak during 4 tasks",
            f"{idle / 1024:.0f} / {peak / 1024:.0f} MiB",
            "n/a",
            "-",
            "report only",
            None,
            "VmRSS, VmHWM",
            "/proc/<pid>/status of the runner process; each task's agent streams 2 MB of output",
        )
    ]


def terminal(h: Harness, plan: Plan) -> list[Row]:
    """Keystroke echo and output throughput through the local WebSocket gateway and the relay."""
    from bench.terminal import measure

    samples = 20 if plan.quick else 50
    assert h.stack is not None
    log = h.workdir / "terminal-runner.log"
    got = measure(
        h.endpoint,
        h.workdir,
        lambda env: h.stack.start_runner(extra_env=env, log_path=log),  # type: ignore[union-attr]
        echo_samples=samples,
    )
    echo_ms = [s * 1000 for s in got["echo"]]
    mbps = got["burst_bytes"] / got["burst_seconds"] / 1e6
    return [
        Row(
            "terminal echo p50 via local gateway",
            f"{pct(echo_ms, 50):.1f} ms (p95 {pct(echo_ms, 95):.1f})",
            "n/a",
            "-",
            f"<= {ECHO_P50_MS:.0f} ms",
            pct(echo_ms, 50) <= ECHO_P50_MS,
            f"{len(echo_ms)} keystrokes",
            "browser -> gateway -> relay Lambda -> a runner process's WebSocket -> bash pty and back; the "
            "seed had no relay (a socket straight to the EC2 box, no auth)",
        ),
        Row(
            "terminal output throughput",
            f"{mbps:.1f} MB/s",
            "n/a",
            "-",
            f">= {OUTPUT_MBPS:.0f} MB/s",
            mbps >= OUTPUT_MBPS,
            f"{got['burst_bytes']:,} bytes",
            "one burst from the pty, coalesced into <= 32 KB frames with seq, through the relay",
        ),
        _page_row(got["page"], got["burst_bytes"]),
    ]


def _page_row(page: dict, burst_bytes: int) -> Row:
    name = "terminal page renders a 5 MB burst"
    note = "web/index.html (xterm.js 6) in headless Chromium: Enter to the frame showing the end marker"
    if "seconds" not in page:
        target = f"<= {PAGE_BURST_SECONDS:.0f} s"
        return Row(name, f"not run: {page['error']}", "n/a", "-", target, None, "0", note)
    seconds = page["seconds"]
    return Row(
        name,
        f"{seconds:.2f} s",
        "n/a",
        "-",
        f"<= {PAGE_BURST_SECONDS:.0f} s",
        seconds <= PAGE_BURST_SECONDS,
        f"{burst_bytes:,} bytes",
        note,
    )


def egress(h: Harness, plan: Plan) -> list[Row]:
    """What the sandbox's egress (bridge in the namespace, allow-list proxy) adds to a request."""
    from bench.egress import measure

    got = measure(requests=20 if plan.quick else 50, startups=5 if plan.quick else 10)
    ms = {k: [s * 1000 for s in v] for k, v in got.items()}
    start_extra = pct(ms["start_bridged"], 50) - pct(ms["start_bare"], 50)
    return [
        Row(
            "egress: new connection + request p50",
            f"{pct(ms['via_fresh'], 50):.1f} ms (p95 {pct(ms['via_fresh'], 95):.1f})",
            "n/a",
            "-",
            "-",
            None,
            f"{len(ms['via_fresh'])} requests",
            "from inside bwrap --unshare-net: CONNECT through the bridge and the allow-list proxy, then "
            f"GET; straight to the endpoint without a sandbox {pct(ms['direct_fresh'], 50):.1f} ms; on a "
            f"kept-open tunnel {pct(ms['via_kept'], 50):.2f} ms vs {pct(ms['direct_kept'], 50):.2f} ms "
            "direct",
        ),
        Row(
            "egress: the bridge's start-up per sandbox p50",
            f"+{start_extra:.1f} ms",
            "n/a",
            "-",
            "-",
            None,
            f"{len(ms['start_bridged'])} starts each",
            f"bwrap --unshare-net running `true` through the bridge {pct(ms['start_bridged'], 50):.1f} ms vs "
            f"without it {pct(ms['start_bare'], 50):.1f} ms (python -I -S and a fork before the exec)",
        ),
    ]


BENCHMARKS = {
    "idle": idle_reads,
    "pickup": pickup_and_overhead,
    "sandbox": sandbox_overhead,
    "shared": shared_branch_pickup,
    "slots": slots_scaling,
    "burst": burst_drain,
    "memory": memory,
    "terminal": terminal,
    "egress": egress,
}
ALIASES = {
    "overhead": "pickup",
    "latency": "pickup",
    "branch": "shared",
    "drain": "burst",
    "reads": "idle",
    "rss": "memory",
    "echo": "terminal",
}
__all__ = ["ALIASES", "BENCHMARKS", "Plan", "Row", "TABLE_READS", "pct"]
