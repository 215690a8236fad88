"""Simulated workers for the master benchmark (scripts/bench-cluster.sh).

N DEALER sockets in one process speak Locust's worker protocol to a master:
client_ready, a heartbeat every second, and every 3 s a realistic stats
report (12 entries, each with ~40 response-time buckets and per-second
counts; Locust's format, no cloudswarm histograms, so both masters read the
same bytes). The workers never run users: the benchmark measures what the
master spends on keeping N workers, not on a test.

  python bench/flood.py --port 5557 --workers 200 --seconds 40
Prints one JSON line: workers, acked, heartbeat replies per worker (min),
messages sent.
"""

import argparse
import json
import random
import time
import uuid

import msgpack
import zmq

ENTRIES = [f"{svc}:{op}" for svc, ops in (
    ("ec2", ["RunInstances", "DescribeInstances", "TerminateInstances", "CreateVolume",
             "DeleteVolume", "DescribeVolumes"]),
    ("s3", ["PutObject", "GetObject", "DeleteObject", "CreateBucket", "DeleteBucket",
            "ListObjectsV2"]),
) for op in ops]


def pack(kind, data, node):
    return msgpack.packb([kind, data, node], use_bin_type=True)


def entry(name, now, rng):
    n = rng.randint(200, 400)
    buckets = {}
    left = n
    for ms in sorted(rng.sample(range(1, 1000), 40)):
        k = min(left, rng.randint(1, max(1, n // 20)))
        if k <= 0:
            break
        b = ms if ms < 100 else round(ms, -1)
        buckets[b] = buckets.get(b, 0) + k
        left -= k
    if left > 0:
        buckets[5] = buckets.get(5, 0) + left
    sec = int(now)
    total = sum(k * b for b, k in buckets.items())
    method, _, _ = name.partition(":")
    return {
        "name": name, "method": method, "last_request_timestamp": now,
        "start_time": now - 3.0, "num_requests": n, "num_none_requests": 0,
        "num_failures": rng.randint(0, 3), "total_response_time": float(total),
        "max_response_time": float(max(buckets)), "min_response_time": float(min(buckets)),
        "total_content_length": n * 1024, "response_times": buckets,
        "num_reqs_per_sec": {sec - 2: n // 3, sec - 1: n // 3, sec: n - 2 * (n // 3)},
        "num_fail_per_sec": {},
    }


def report(now, rng):
    stats = [entry(e, now, rng) for e in ENTRIES]
    total = entry("Aggregated", now, rng)
    total["method"] = ""
    total["num_requests"] = sum(e["num_requests"] for e in stats)
    return {
        "stats": stats, "stats_total": total, "errors": {},
        "user_classes_count": {"storage": 5}, "user_count": 5,
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--workers", type=int, required=True)
    ap.add_argument("--seconds", type=float, default=40.0)
    a = ap.parse_args()
    rng = random.Random(1)
    ctx = zmq.Context()
    socks = []
    for i in range(a.workers):
        s = ctx.socket(zmq.DEALER)
        node = f"sim{i}_{uuid.uuid4().hex}"
        s.setsockopt(zmq.IDENTITY, node.encode())
        s.setsockopt(zmq.LINGER, 0)
        s.connect(f"tcp://{a.host}:{a.port}")
        socks.append((s, node))
    poller = zmq.Poller()
    for s, _ in socks:
        poller.register(s, zmq.POLLIN)
    acked = set()
    replies = {node: 0 for _, node in socks}
    sent = 0
    for s, node in socks:
        s.send(pack("client_ready", -1, node))
        sent += 1
    start = time.time()
    next_hb = start + 1.0
    # Each worker reports at its own offset within the 3 s, as real ones do.
    offsets = [rng.random() * 3.0 for _ in socks]
    due = [start + o for o in offsets]
    while time.time() - start < a.seconds:
        now = time.time()
        if now >= next_hb:
            for s, node in socks:
                s.send(pack("heartbeat", {"state": "running", "current_cpu_usage": 12.5,
                                          "current_memory_usage": 150_000_000}, node))
                sent += 1
            next_hb += 1.0
        for i, (s, node) in enumerate(socks):
            if now >= due[i]:
                s.send(pack("stats", report(now, rng), node))
                sent += 1
                due[i] += 3.0
        for s, _ in poller.poll(timeout=20):
            while True:
                try:
                    raw = s.recv(zmq.NOBLOCK)
                except zmq.Again:
                    break
                kind, _data, node = msgpack.unpackb(raw, raw=False, strict_map_key=False)
                if kind == "ack":
                    acked.add(node)
                elif kind == "heartbeat":
                    replies[node] = replies.get(node, 0) + 1
    for s, node in socks:
        s.send(pack("quit", None, node))
    time.sleep(0.5)
    print(json.dumps({
        "workers": a.workers, "acked": len(acked),
        "min_heartbeat_replies": min(replies.values()) if replies else 0,
        "messages_sent": sent,
    }))


if __name__ == "__main__":
    main()
