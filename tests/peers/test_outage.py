"""Crash and outage acceptance: exactly-once, in-order transaction messages across uplink cuts and
edge crashes (ARCHITECTURE §6.1, §6.3).

    10 x 1.6 + 10 x 2.0.1 chargers --> edge1 --> FaultProxy --> hub --> CSMS
    (mobilityhouse ocpp)         (ocpp-node)  (this test)  (ocpp-node) (overlaylib.CsmsServer)

The chargers behave like real ones: each keeps its transaction messages in a queue that survives
reconnects and resends the head, with the SAME content under a new message id, until it gets a
CALLRESULT. Meanwhile the proxy cuts the uplink 10 times (RST or blackhole, 1-4 s) and the edge is
SIGKILLed and restarted 3 times (same config, same data dir), at seeded random times, one at a time.
Afterwards the CSMS must have received every transaction message exactly once, in the order the
charger generated it, with the CSMS's own 1.6 transaction ids; the edge's audit chain must verify.

Environment:
  OUTAGE_SEED          the seed (default: random; printed, and in every assertion message)
  OUTAGE_TRANSACTIONS  transactions over all 20 chargers (default 200; 1000 = soak: the 13-fault cycle
                       repeats every ~60 s of the longer run). OUTAGE_SOAK=1 defaults it to 1000.
  OUTAGE_FAULTS=0      no faults: the harness against the plain online relay path
  OUTAGE_CRASH_IN_CUT  "mixed" (default): the first crash of each cycle hits an online edge (with
                       messages on their way), the other two happen while the uplink is cut, so the
                       edge dies holding locally answered messages and restarts offline; "1": every
                       crash inside a cut; "0": none (the cuts and crashes never overlap)
  OUTAGE_REPORT        a file to append one JSON line of counts to
  OUTAGE_OUTBOX_CONFIG=0  leave the edge's [outbox] table out: only for trying the harness on a
                       binary that predates it (it refuses unknown keys)
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import os
import random
import subprocess
import time
import urllib.parse

import pytest

from outagelib import (
    Clock, FaultInjector, FaultProxy, SimCharger, check16, check201, csms_calls, duplicates,
    fault_schedule, start_edge,
)
from overlaylib import listener_port, metric_sum, metrics, wait_until, wait_uplink_up

SOAK = os.environ.get("OUTAGE_SOAK") == "1"
TRANSACTIONS = int(os.environ.get("OUTAGE_TRANSACTIONS") or (1000 if SOAK else 200))
FAULTS = os.environ.get("OUTAGE_FAULTS", "1") != "0"
CRASH_IN_CUT: bool | str = {"1": True, "0": False}.get(
    os.environ.get("OUTAGE_CRASH_IN_CUT", "mixed"), "mixed")
OUTBOX_CONFIG = os.environ.get("OUTAGE_OUTBOX_CONFIG", "1") != "0"

IDS16 = [f"OUT16-{i:02d}" for i in range(10)]
IDS201 = [f"OUT201-{i:02d}" for i in range(10)]
VERSIONS = {**{c: "ocpp1.6" for c in IDS16}, **{c: "ocpp2.0.1" for c in IDS201}}

TIMERS = {"request_timeout_s": 5, "ping_interval_s": 2, "connect_timeout_s": 3,
          "reconnect_initial_ms": 200, "reconnect_max_ms": 1000, "csms_grace_s": 120}

# Per charger: an idle gap before each transaction, then its 5 messages 0.3-0.8 s apart. With 10
# transactions per charger that is ~75 s of traffic, which the fault schedule spans.
PACE = (0.3, 0.8)
GAP = (3.0, 8.0)
PER_CHARGER_S = TRANSACTIONS / len(VERSIONS) * (sum(GAP) / 2 + 4 * sum(PACE) / 2)

SETUP_S = 60.0  # nodes up, chargers connected and booted
DRAIN_S = 120.0  # after the last message is generated: every charger queue empty
OUTBOX_S = 60.0  # then the edge's durable queue empty
# Hard cap of the whole run (pytest-timeout kills at TEST_TIMEOUT; the asyncio cap comes first so
# that cleanup runs and the message says which phase hung).
TEST_TIMEOUT = 300 if TRANSACTIONS <= 200 else int(300 + 2 * PER_CHARGER_S)
RUN_CAP = TEST_TIMEOUT - 30

pytestmark = pytest.mark.timeout(TEST_TIMEOUT)


def _per_charger(total: int) -> dict[str, int]:
    ids = list(VERSIONS)
    return {cid: total // len(ids) + (1 if i < total % len(ids) else 0) for i, cid in enumerate(ids)}


async def _wait_tasks(tasks: list[asyncio.Task], timeout: float, what: str, describe) -> None:
    """Wait for all ``tasks``; the first one to fail fails the test at once."""
    pending = set(tasks)
    deadline = time.monotonic() + timeout
    while pending:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}\n{describe()}")
        done, pending = await asyncio.wait(pending, timeout=left, return_when=asyncio.FIRST_EXCEPTION)
        for t in done:
            if t.exception() is not None:
                raise t.exception()


async def _run_cli(*argv: str) -> subprocess.CompletedProcess:
    return await asyncio.to_thread(subprocess.run, list(argv), capture_output=True, text=True, timeout=60)


async def test_outage_exactly_once(node_factory, node_bin, overlay, csms, frame_logs):
    seed = int(os.environ.get("OUTAGE_SEED") or random.randrange(2**32))
    tag = (f"[OUTAGE_SEED={seed} transactions={TRANSACTIONS} faults={'on' if FAULTS else 'off'}"
           f" crash-in-cut={CRASH_IN_CUT}]")
    print(f"\n{tag}")
    clock = Clock()
    log = lambda line: print(line, flush=True)  # noqa: E731
    tasks: list[asyncio.Task] = []
    chargers: dict[str, SimCharger] = {}
    proxy: FaultProxy | None = None
    phases: dict[str, float] = {}

    async def scenario():
        nonlocal proxy
        # -- topology ------------------------------------------------------------------
        hub = await overlay.start_hub(csms.url, peers={"edge1": ["*"]}, timers=TIMERS)
        proxy = await FaultProxy("127.0.0.1", listener_port(hub), clock, log).start()
        hub_path = urllib.parse.urlsplit(hub.charger_url).path
        edge = await start_edge(node_factory, "edge1", f"ws://127.0.0.1:{proxy.port}{hub_path}",
                                timers=TIMERS, id_tags=[f"TAG-{cid}"[:20] for cid in VERSIONS],
                                outbox=OUTBOX_CONFIG)
        await wait_uplink_up(edge, SETUP_S)

        async def outbox_queued():  # the edge's durable queue (None: the binary has no such metric)
            try:
                return metric_sum(await metrics(edge), "ocpp_outbox_queued")
            except OSError as e:
                raise AssertionError(f"edge /metrics: {e!r}") from None

        n_tx = _per_charger(TRANSACTIONS)
        for cid, version in VERSIONS.items():
            chargers[cid] = SimCharger(cid, version, edge, random.Random(f"{seed}/{cid}"), n_tx[cid],
                                       PACE, GAP, frame_logs, clock)
        senders = [asyncio.create_task(ch.run_sender(), name=f"send-{ch.id}") for ch in chargers.values()]
        tasks.extend(senders)
        await csms.wait_connected(VERSIONS, SETUP_S)
        await wait_until(lambda: all(ch.boot_result is not None for ch in chargers.values()), SETUP_S,
                         "every charger's BootNotification answered",
                         lambda: f"unbooted: {[c for c, ch in chargers.items() if ch.boot_result is None]}")
        phases["setup"] = clock()
        log(f"{clock.stamp()} setup done: hub, edge, proxy, {len(chargers)} chargers booted")

        # -- traffic and faults ------------------------------------------------------------
        plans = {cid: ch.plan() for cid, ch in chargers.items()}
        t_traffic = clock()
        traffic_s = max(sum(p) for p in plans.values())
        schedule = (fault_schedule(random.Random(f"{seed}/faults"), t_traffic + 3, t_traffic + traffic_s - 2,
                                   crash_in_cut=CRASH_IN_CUT) if FAULTS else [])
        log(f"{clock.stamp()} traffic for ~{traffic_s:.0f}s; {len(schedule)} faults planned: "
            + ", ".join(f.describe() for f in schedule))
        producers = [asyncio.create_task(ch.run_producer(plans[cid]), name=f"produce-{cid}")
                     for cid, ch in chargers.items()]
        tasks.extend(producers)
        injector = FaultInjector(schedule, proxy, edge, clock, log,
                                 exposure=lambda: sum(ch.inflight is not None for ch in chargers.values()),
                                 outbox=outbox_queued)
        inject = asyncio.create_task(injector.run(), name="faults")
        tasks.append(inject)

        def queues() -> str:
            lines = []
            for ch in chargers.values():
                head = ch.queue[0] if ch.queue else None
                lines.append(f"  {ch.id}: queue {len(ch.queue)}, generated {len(ch.generated)}, "
                             f"connected {ch.connected}, head {head.action if head else '-'} "
                             f"{head.key if head else ''} x{head.attempts if head else 0}, {ch.stats}")
            return "\n".join(lines) + "\n" + edge.output_tail(30)

        await _wait_tasks(producers + [inject], traffic_s + 120, "the chargers' traffic and the faults", queues)
        phases["traffic"] = clock()
        log(f"{clock.stamp()} traffic generated, faults done: {injector.counts()}")
        await _wait_tasks(senders, DRAIN_S, "every charger's transaction queue to empty", queues)
        phases["drain"] = clock()
        log(f"{clock.stamp()} every charger queue is empty")

        # -- the edge's durable queue ---------------------------------------------------------
        last = {"queued": await outbox_queued()}

        async def outbox_empty():
            last["queued"] = await outbox_queued()
            if last["queued"] is None:
                raise AssertionError("the edge's ocpp_outbox_queued metric disappeared")
            return last["queued"] == 0

        if last["queued"] is None:
            log(f"{clock.stamp()} the edge has no ocpp_outbox_queued metric; waiting (bounded) for the CSMS instead")

            def complete():
                got = sum(len([c for c in csms_calls(csms, cid) if c.action in
                               ("StartTransaction", "MeterValues", "StopTransaction", "TransactionEvent")])
                          for cid in chargers)
                return got >= sum(len(ch.generated) for ch in chargers.values())

            with contextlib.suppress(AssertionError):
                await wait_until(complete, 5, "the CSMS to hold every generated message")
        else:
            await wait_until(outbox_empty, OUTBOX_S, "edge ocpp_outbox_queued == 0",
                             lambda: f"ocpp_outbox_queued = {last['queued']}\n{edge.output_tail(30)}")
        phases["outbox"] = clock()

        # -- what the CSMS got ----------------------------------------------------------------
        problems: list[str] = []
        ids16: list = []
        started201: list = []
        for ch in chargers.values():
            problems += ch.problems
            if ch.version == "ocpp1.6":
                p, ids = check16(csms, ch)
                ids16 += ids
            else:
                p, ids = check201(csms, ch)
                started201 += ids
            problems += p
        if len(set(ids16)) != len(ids16):
            dup = [i for i, n in collections.Counter(ids16).items() if n > 1]
            problems.append(f"the CSMS's transaction ids of distinct 1.6 transactions collide: {dup[:10]}")
        total = len(ids16) + len(set(started201))
        if total != TRANSACTIONS:
            problems.append(f"{total} transactions reached the CSMS (1.6: {len(ids16)}, 2.0.1: "
                            f"{len(set(started201))}), want {TRANSACTIONS}")

        per_action = collections.Counter(c.action for cid in chargers for c in csms_calls(csms, cid))
        dups = sum(duplicates(csms, ch) for ch in chargers.values())
        stats = collections.Counter()
        errors = collections.Counter()
        answers = collections.Counter()
        for ch in chargers.values():
            answers.update(ch.stats.answers)
            stats.update({"connects": ch.stats.connects, "drops": ch.stats.drops, "timeouts": ch.stats.timeouts,
                          "resends": ch.stats.resends, "best_effort_lost": ch.stats.best_effort_lost})
            errors.update(ch.stats.call_errors)
        duration = clock()
        log(f"{clock.stamp()} SUMMARY {tag}\n"
            f"  transactions at the CSMS: {total} of {TRANSACTIONS}; duplicates: {dups}; problems: {len(problems)}\n"
            f"  CSMS calls per action: {dict(sorted(per_action.items()))}\n"
            f"  faults: {injector.counts()}: {', '.join(f.describe() for f in injector.done)}\n"
            f"  chargers: {dict(stats)}\n"
            f"  CALLERRORs the chargers received: {dict(errors)}\n"
            f"  transaction messages answered by: {dict(answers)}\n"
            f"  CSMS connections opened: {len(csms.connections)}; proxy connections accepted: {proxy.accepted}\n"
            f"  phases (s): {', '.join(f'{k} {v:.1f}' for k, v in phases.items())}; duration {duration:.1f}s")
        report = os.environ.get("OUTAGE_REPORT")
        if report:
            with open(report, "a", encoding="utf-8") as f:
                f.write(json.dumps({
                    "seed": seed, "transactions": TRANSACTIONS, "transactions_at_csms": total,
                    "faults_enabled": FAULTS, "csms_messages": dict(sorted(per_action.items())),
                    "duplicates": dups, "problems": len(problems), "faults": injector.counts(),
                    "charger_stats": dict(stats), "call_errors": dict(errors), "answered_by": dict(answers),
                    "duration_s": round(duration, 1)}) + "\n")
        # -- the edge's audit chain: one node_started per start, intact after the crashes -------
        for ch in chargers.values():
            await ch.close()
        rc = await asyncio.to_thread(edge.stop)
        if rc != 0:
            problems.append(f"the edge exited with {rc} on SIGTERM\n{edge.output_tail(40)}")
        verify = await _run_cli(str(node_bin), "audit", "verify", "--config", str(edge.config_path))
        if verify.returncode != 0 or not verify.stdout.startswith("ok: "):
            problems.append(f"ocpp-node audit verify --config {edge.config_path}: rc={verify.returncode}\n"
                            f"stdout: {verify.stdout}\nstderr: {verify.stderr}")
        show = await _run_cli(str(node_bin), "audit", "show", "--config", str(edge.config_path))
        records = [json.loads(line) for line in show.stdout.splitlines() if line.strip().startswith("{")]
        started = [r for r in records if r.get("kind") == "node_started"]
        crashes = injector.counts().get("crash", 0)
        if show.returncode != 0 or not len(started) == 1 + crashes == edge.starts:
            problems.append(f"ocpp-node audit show (rc={show.returncode}): {len(started)} node_started records; "
                            f"the edge was started {edge.starts} times (1 + {crashes} crashes)\n{show.stderr}")
        log(f"{clock.stamp()} audit verify: {verify.stdout.strip()[:200]!r}; {len(started)} node_started records")

        assert not problems, (f"{len(problems)} problem(s):\n  - " + "\n  - ".join(problems[:60])
                              + (f"\n  ... and {len(problems) - 60} more" if len(problems) > 60 else ""))

    try:
        await asyncio.wait_for(scenario(), RUN_CAP)
    except asyncio.TimeoutError:
        raise AssertionError(f"{tag} the run exceeded its hard cap of {RUN_CAP}s; phases done: {phases}") from None
    except AssertionError as e:
        raise AssertionError(f"{tag} {e}") from None
    except Exception as e:  # e.g. a charger task that crashed: the seed must be in the message too
        raise AssertionError(f"{tag} {e!r}") from e
    finally:
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(BaseException):
                await t
        for ch in chargers.values():
            await ch.close()
        if proxy is not None:
            await proxy.close()

