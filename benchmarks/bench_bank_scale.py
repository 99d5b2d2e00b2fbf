"""Bank exchange at N = 2..16 simulated workers: time per step and bytes out of the busiest process.

Simulated workers are Ray actors without a model: each holds a replica of the bank, and every step
exchanges a realistic record batch (Cityscapes settings, 2 images per worker: 300 pixel + 30 region
records x 256 float32 = 338 KB) and writes what it receives to its replica, as training workers do.
Modes, measured in the same run on the same worker processes:

- ``actor``: the first bank actor (:mod:`raycontrast.bank._inline`), answering every worker with every
  batch by value;
- ``plane_s1`` / ``plane_s4``: the object-store data plane (:mod:`raycontrast.bank.actor`) with 1 and 4
  class shards;
- ``allgather``: ``torch.distributed.all_gather`` over N gloo processes;
- ``collective``: the default data plane (:mod:`raycontrast.bank.collective`): the same all_gather for
  the replicas, plus each worker's batch handed to one bank actor (``ray.put`` once, a call the step
  does not wait on); the workers are flushed before the digests are compared.

``exchange_s_per_step`` is the wall time of a worker's step loop divided by its steps (the loop does
nothing but exchange, so this is the synchronised exchange), the slowest rank, median of repeats.
``busiest_bytes_per_step`` is, per process, the payload it produces for others per step, the largest
over workers and actors: a worker's batch (``ray.put`` once, or sent by value; for ``collective`` the
ring's N - 1 chunks plus its batch to the actor), an actor's answers
(batches by value for ``actor``; references for the data plane, at ``REF_NBYTES`` each), and for
gloo's ring all_gather the N - 1 chunks each process forwards. ``wchar`` (bytes the process wrote to
sockets / pipes / files, from ``/proc/<pid>/io``) is reported as a measured cross-check; it does not
see shared-memory writes (object store), which is why it is not the headline figure.

Usage: ``python benchmarks/bench_bank_scale.py [--workers 2,4,8,16] [--steps 20] [--repeats 3]``
``[--force]`` (writes benchmarks/results/bank_scale.json, or bank_scale_loaded.json when the machine
was loaded at the start; ``--quick``: N = 2, 4, a few steps).
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import ray
import torch
from _measure import add_force_flag, machine, save, table

from raycontrast.bank import create_bank_actor
from raycontrast.bank._inline import create_inline_bank_actor
from raycontrast.bank.actor import REF_NBYTES, object_store_usage

NUM_CLASSES, DIM, PIXEL, REGION = 19, 256, 300, 30
SPEC = {"num_classes": NUM_CLASSES, "dim": DIM, "size": 500, "kinds": ("pixel", "region")}
MODES = ("actor", "plane_s1", "plane_s4", "allgather", "collective")
TARGETS = {
    "busiest_bytes_per_step": "plane: flat in N (<= 1.2x from N=2 to N=16)",
    "exchange_s_per_step": "plane at N=16 <= allgather at N=16; at N=2 plane (actor) <= 1.0x allgather",
    "collective": "exchange on the critical path <= allgather's at every N",
}


def _wchar(pid: int | str = "self") -> int | None:
    try:
        with open(f"/proc/{pid}/io") as f:
            for line in f:
                if line.startswith("wchar:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


@ray.remote(num_cpus=0)
class SimWorker:
    """One simulated Train worker: a replica, a sync, pre-generated record batches."""

    def __init__(self, rank: int, batches: int = 4):
        from raycontrast.contrast import BankRecords

        torch.set_num_threads(1)
        self.rank = rank
        g = torch.Generator().manual_seed(rank)
        n = PIXEL + REGION
        self.batches = [
            BankRecords(
                torch.randint(0, NUM_CLASSES, (n,), generator=g),
                torch.cat([torch.zeros(PIXEL), torch.ones(REGION)]).long(),
                torch.randn(n, DIM, generator=g),
            )
            for _ in range(batches)
        ]
        self.sync = None

    def setup(self, mode: str, world: int, head_name: str | None, port: int | None) -> bool:
        import torch.distributed as dist

        from raycontrast.bank._inline import InlineActorSync
        from raycontrast.bank.actor import NAMESPACE
        from raycontrast.bank.collective import CollectiveSync
        from raycontrast.bank.sync import ActorSync, AllGatherSync
        from raycontrast.contrast import MemoryBank

        replica = MemoryBank(**SPEC)
        if mode in ("allgather", "collective") and not dist.is_initialized():
            dist.init_process_group(
                "gloo",
                init_method=f"tcp://127.0.0.1:{port}",
                rank=self.rank,
                world_size=world,
            )
        if mode == "allgather":
            self.sync = AllGatherSync(replica)
        elif mode == "collective":
            head = ray.get_actor(head_name, namespace=NAMESPACE)
            self.sync = CollectiveSync(replica, head, self.rank, timeout_s=300)
        else:
            head = ray.get_actor(head_name, namespace=NAMESPACE)
            cls = InlineActorSync if mode == "actor" else ActorSync
            self.sync = cls(replica, head, self.rank, timeout_s=300)
        self.sync.start(None, 0)
        self.step = 0
        return True

    def flush(self) -> None:
        self.sync.flush()

    def teardown(self) -> None:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
        self.sync = None

    def run(self, steps: int) -> dict:
        """``steps`` exchanges; loop wall time and what this process sent."""
        sync = self.sync
        sent0, w0 = sync.bytes_sent, _wchar()
        recv0 = sync.bytes_received
        actor0 = getattr(sync, "actor_bytes_sent", 0)
        t0 = time.perf_counter()
        for _ in range(steps):
            sync.exchange(self.step, self.batches[self.step % len(self.batches)])
            self.step += 1
        wall = time.perf_counter() - t0
        w1 = _wchar()
        return {
            "wall_s": wall,
            "sent": sync.bytes_sent - sent0,
            "received": sync.bytes_received - recv0,
            "actor_sent": getattr(sync, "actor_bytes_sent", 0) - actor0,
            "wchar": None if w0 is None or w1 is None else w1 - w0,
            "steps": steps,
        }

    def digest(self) -> str:
        return self.sync.replica.digest()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _actor_handles(mode: str, name: str, world: int):
    """Start the mode's actors; returns (head name, [(handle, pid)] of every bank actor)."""
    if mode == "actor":
        handle = create_inline_bank_actor(name, SPEC, world)
        return name, [handle]
    shards = 4 if mode == "plane_s4" else 1
    head = create_bank_actor(name, SPEC, world, None, shards=shards)
    from raycontrast.bank.actor import NAMESPACE

    peers = ray.get(head.describe.remote())["peers"]
    return f"raycontrast-bank:{name}", [
        head,
        *(ray.get_actor(p, namespace=NAMESPACE) for p in peers),
    ]


def _actor_counters(actors) -> list[dict]:
    out = []
    for info in ray.get([a.describe.remote() for a in actors]):
        out.append({"bytes_out": info["stats"]["bytes_out"], "wchar": _wchar(info["pid"])})
    return out


def measure(mode: str, workers: list, steps: int, repeats: int, warmup: int) -> dict:
    world = len(workers)
    name = f"scale-{mode}-{world}"
    port = _free_port() if mode in ("allgather", "collective") else None
    head, actors = (None, []) if mode == "allgather" else _actor_handles(mode, name, world)
    if port is not None:  # every rank joins the process group at once (collective: rank 0 adopts
        # the actor in start(), before a barrier)
        ray.get([w.setup.remote(mode, world, head, port) for w in workers])
    else:  # rank 0 first: it resets the actor before the others read its incarnation
        ray.get(workers[0].setup.remote(mode, world, head, port))
        ray.get([w.setup.remote(mode, world, head, port) for w in workers[1:]])
    ray.get([w.run.remote(warmup) for w in workers])
    times, busiest, worker_bytes, actor_bytes, wchar_busiest = [], [], [], [], []
    for _ in range(repeats):
        a0 = _actor_counters(actors)
        runs = ray.get([w.run.remote(steps) for w in workers])
        a1 = _actor_counters(actors)
        times.append(max(r["wall_s"] for r in runs) / steps)
        if mode == "allgather":  # ring all_gather: each process forwards N - 1 chunks
            per_worker = [r["received"] / steps for r in runs]
        elif mode == "collective":  # the ring, plus its own batch once and one call per shard
            per_worker = [
                (r["received"] + r["actor_sent"]) / steps + len(actors) * REF_NBYTES for r in runs
            ]
        else:
            calls = (1 if mode == "actor" else len(actors)) * REF_NBYTES * (mode != "actor")
            per_worker = [r["sent"] / steps + calls for r in runs]
        per_actor = [(b["bytes_out"] - a["bytes_out"]) / steps for a, b in zip(a0, a1)]
        worker_bytes.append(max(per_worker))
        actor_bytes.append(max(per_actor, default=0.0))
        busiest.append(max(per_worker + per_actor))
        wchars = [r["wchar"] / steps for r in runs if r["wchar"] is not None]
        wchars += [
            (b["wchar"] - a["wchar"]) / steps
            for a, b in zip(a0, a1)
            if a["wchar"] is not None and b["wchar"] is not None
        ]
        wchar_busiest.append(max(wchars, default=None))
    if mode == "collective":  # a collective: the actor then holds every step
        ray.get([w.flush.remote() for w in workers])
    digests = ray.get([w.digest.remote() for w in workers])
    identical = len(set(digests)) == 1
    if actors:
        truth = ray.get(actors[0].digest.remote())["digest"]
        identical = identical and truth == digests[0]
    ray.get([w.teardown.remote() for w in workers])
    for a in actors:
        ray.kill(a, no_restart=True)
    return {
        "exchange_s_per_step": statistics.median(times),
        "exchange_s_per_step_repeats": times,
        "busiest_bytes_per_step": statistics.median(busiest),
        "worker_bytes_out_per_step": statistics.median(worker_bytes),
        "actor_bytes_out_per_step": statistics.median(actor_bytes),
        "wchar_busiest_per_step": statistics.median([w for w in wchar_busiest if w is not None])
        if any(w is not None for w in wchar_busiest)
        else None,
        "replicas_identical_to_authority": identical,
    }


def long_run(workers: list, steps: int) -> dict:
    """Object-store usage over a long data-plane run (S=4): must not grow with steps."""
    world = len(workers)
    head, actors = _actor_handles("plane_s4", f"scale-long-{world}", world)
    ray.get(workers[0].setup.remote("plane_s4", world, head, None))
    ray.get([w.setup.remote("plane_s4", world, head, None) for w in workers[1:]])
    samples = []
    for _ in range(4):
        ray.get([w.run.remote(steps // 4) for w in workers])
        time.sleep(1.5)  # Ray frees objects in batches
        samples.append(object_store_usage())
    ray.get([w.teardown.remote() for w in workers])
    for a in actors:
        ray.kill(a, no_restart=True)
    return {"workers": world, "steps": steps, "usage_every_quarter": samples}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--workers", default="2,4,8,16")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--long-steps", type=int, default=200)
    parser.add_argument(
        "--quick", action="store_true", help="N = 2, 4; 5 steps (checks the script)"
    )
    add_force_flag(parser)
    args = parser.parse_args()
    state = machine()  # the load average before anything runs
    counts = [2, 4] if args.quick else [int(n) for n in args.workers.split(",")]
    steps = 5 if args.quick else args.steps
    long_steps = 20 if args.quick else args.long_steps
    ray.init(
        num_cpus=2,
        object_store_memory=2 * 1024**3,
        include_dashboard=False,
        log_to_driver=False,
        _temp_dir=f"/tmp/rcbs{os.getpid()}",
    )
    t_start = time.perf_counter()
    pool = [SimWorker.remote(r) for r in range(max(counts))]
    ray.get([w.__ray_ready__.remote() for w in pool])
    results: dict = {"exchange_s_per_step": {m: {} for m in MODES}}
    results["busiest_bytes_per_step"] = {m: {} for m in MODES}
    raw: dict = {m: {} for m in MODES}
    for n in counts:
        for mode in MODES:
            print(f"== {mode} N={n}", flush=True)
            r = measure(mode, pool[:n], steps, args.repeats, warmup=3)
            raw[mode][str(n)] = r
            results["exchange_s_per_step"][mode][str(n)] = r["exchange_s_per_step"]
            results["busiest_bytes_per_step"][mode][str(n)] = r["busiest_bytes_per_step"]
    print("== long run (object store usage)", flush=True)
    results["object_store_long_run"] = long_run(pool[: max(counts)], long_steps)
    ray.shutdown()

    e, b = results["exchange_s_per_step"], results["busiest_bytes_per_step"]
    lo, hi = str(min(counts)), str(max(counts))
    checks = {}
    for mode in ("plane_s1", "plane_s4"):
        checks[f"{mode}_bytes_ratio_N{hi}_over_N{lo}"] = b[mode][hi] / b[mode][lo]
        checks[f"{mode}_exchange_over_allgather_at_N{hi}"] = e[mode][hi] / e["allgather"][hi]
        checks[f"{mode}_exchange_over_allgather_at_N{lo}"] = e[mode][lo] / e["allgather"][lo]
    for n in counts:
        checks[f"collective_exchange_over_allgather_at_N{n}"] = (
            e["collective"][str(n)] / e["allgather"][str(n)]
        )
    checks[f"collective_bytes_ratio_N{hi}_over_N{lo}"] = b["collective"][hi] / b["collective"][lo]
    checks[f"actor_bytes_ratio_N{hi}_over_N{lo}"] = b["actor"][hi] / b["actor"][lo]
    usage = results["object_store_long_run"]["usage_every_quarter"]
    checks["object_store_needed_bytes_last_over_first_quarter"] = (
        usage[-1]["needed_bytes"] / usage[0]["needed_bytes"] if usage[0]["needed_bytes"] else None
    )
    results.update(
        checks=checks,
        targets=TARGETS,
        raw=raw,
        record_batch_bytes=(PIXEL + REGION) * DIM * 4,
        ref_nbytes=REF_NBYTES,
        settings={"workers": counts, "steps": steps, "repeats": args.repeats, "spec": SPEC},
        wall_s=time.perf_counter() - t_start,
        machine=state,
        command="python benchmarks/bench_bank_scale.py"
        + (
            " --quick"
            if args.quick
            else f" --workers {args.workers} --steps {steps} --repeats {args.repeats}"
        ),
    )
    rows = []
    for mode in MODES:
        for n in counts:
            r = raw[mode][str(n)]
            spread = r["exchange_s_per_step_repeats"]
            rows.append(
                (
                    f"{mode:<10} N={n:<3}",
                    f"{1e3 * r['exchange_s_per_step']:8.1f} ms/step "
                    f"[{1e3 * min(spread):.1f}-{1e3 * max(spread):.1f}]  busiest "
                    f"{r['busiest_bytes_per_step'] / 1e6:8.3f} MB/step  identical "
                    f"{r['replicas_identical_to_authority']}",
                )
            )
    rows += [(k, f"{v:.3f}" if isinstance(v, float) else str(v)) for k, v in checks.items()]
    print(table(rows))
    name = "bank_scale_quick.json" if args.quick else "bank_scale.json"
    print(f"wrote {save(name, results, force=args.force)}")


if __name__ == "__main__":
    main()
