"""Load: several clients submit many small jobs at once while another polls ``status``.

Checks that every job completes exactly once, in the order the server accepted them (FIFO
across clients), and prints the latency of ``status`` while jobs run (goal: p99 <= 50 ms).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time

from server_harness import Backend


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", type=int, default=3, help="submitting clients (default 3)")
    parser.add_argument("--jobs", type=int, default=20, help="jobs per client (default 20)")
    parser.add_argument("--steps", type=int, default=5, help="steps per job of the test pipeline (default 5)")
    parser.add_argument("--step-delay", type=float, default=0.01, help="seconds per step (default 0.01)")
    args = parser.parse_args()

    backend = Backend("--max-queue", str(args.clients * args.jobs))
    accepted: list[tuple[float, str, int]] = []  # (time, job, client)
    finished: dict[str, list[float]] = {}
    lock = threading.Lock()
    done = threading.Event()

    def client(index: int) -> None:
        conn = backend.connect(timeout=60)
        for _ in range(args.jobs):
            conn.send({"op": "submit", "pipeline": "test-shape", "text": f"client {index}",
                       "params": {"steps": args.steps, "step_delay": args.step_delay}})
        open_jobs = args.jobs
        while open_jobs:
            message = conn.read()
            if message.op == "accepted":
                with lock:
                    accepted.append((time.perf_counter(), message.header["job"], index))
            elif message.op in ("result", "error", "cancelled"):
                with lock:
                    finished.setdefault(message.header["job"], []).append(time.perf_counter())
                    if message.op != "result":
                        print(f"job {message.header['job']} ended with {message.op}: {message.header}")
                open_jobs -= 1
        conn.close()

    latencies: list[float] = []

    def poll_status() -> None:
        conn = backend.connect(timeout=10)
        while not done.is_set():
            t0 = time.perf_counter()
            conn.send({"op": "status"})
            reply = conn.read()
            latencies.append(time.perf_counter() - t0)
            assert reply.op == "status"
            time.sleep(0.005)
        conn.close()

    poller = threading.Thread(target=poll_status)
    poller.start()
    started = time.perf_counter()
    workers = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    elapsed = time.perf_counter() - started
    done.set()
    poller.join()
    backend.stop()

    total = args.clients * args.jobs
    order_accepted = [job for _, job, _ in sorted(accepted)]
    order_finished = [job for job, _ in sorted(finished.items(), key=lambda kv: kv[1][0])]
    duplicates = sum(len(times) - 1 for times in finished.values())
    by_id = sorted(finished, key=lambda job: int(job[1:]))
    fifo = order_finished == by_id
    latencies.sort()
    p50 = statistics.median(latencies) * 1e3
    p99 = latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))] * 1e3
    print(f"{args.clients} clients x {args.jobs} jobs ({args.steps} steps of {args.step_delay * 1e3:.0f} ms): "
          f"{len(finished)}/{total} completed in {elapsed:.1f} s; lost {total - len(finished)}, duplicated {duplicates}")
    print(f"FIFO across clients (finish order == server's acceptance order): {'yes' if fifo else 'NO'}"
          f" ({len(order_accepted)} accepted)")
    print(f"status latency while jobs run, {len(latencies)} requests: p50 {p50:.2f} ms, p99 {p99:.2f} ms, "
          f"max {latencies[-1] * 1e3:.2f} ms (goal p99 <= 50 ms)")
    ok = len(finished) == total and duplicates == 0 and fifo and p99 <= 50
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
