"""Load test of the prediction server (python -m agegender.serve), loopback only.

    python benchmarks/bench_serve.py [--clients 1 4 16 64] [--seconds 4] [--max-requests 2000]

For batching on (``max_batch_size=16``) and off (``max_batch_size=1``), a server is started on
a free 127.0.0.1 port and N client threads send the sample photos (data/samples/) to
``POST /predict`` for ``--seconds`` (or ``--max-requests``), each waiting for its answer
before sending the next. Reported: requests/s, faces/s and p50/p95/p99 latency per N; the
ceiling is the same photos through ``AgeGender.predict_batch`` in one process (no HTTP, no
JSON). The clients share the machine with the server, as on a small box running both.
Prints the CPU features and a markdown table (the README's "Prediction server" table).
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from agegender.hardware import cpu_summary  # noqa: E402

PHOTOS = sorted(p for p in (REPO / "data" / "samples").iterdir() if p.suffix in (".jpg", ".png"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _multipart(data: bytes) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="p.jpg"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n".encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, f"multipart/form-data; boundary={boundary}"


def start_server(max_batch_size: int) -> tuple[subprocess.Popen, str]:
    """A server on a free loopback port, healthy (or an exception)."""
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("AGEGENDER_API_KEY", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "agegender.serve", "--port", str(port),
         f"max_batch_size={max_batch_size}", "progress=false"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=2) as r:
                if r.status == 200:
                    return process, base
        except OSError:
            time.sleep(0.3)
    stop(process)
    raise RuntimeError("server not healthy within 120 s")


def stop(process: subprocess.Popen) -> None:
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def load(base: str, clients: int, seconds: float, max_requests: int) -> dict[str, float]:
    """N closed-loop clients for ``seconds`` (or ``max_requests`` in all)."""
    import json

    bodies = [_multipart(p.read_bytes()) for p in PHOTOS]
    latencies: list[float] = []
    faces = [0]
    errors = [0]
    lock = threading.Lock()
    sent = [0]
    end = time.monotonic() + seconds

    def client(index: int) -> None:
        i = index
        while time.monotonic() < end:
            with lock:
                if sent[0] >= max_requests:
                    return
                sent[0] += 1
            body, content_type = bodies[i % len(bodies)]
            i += 1
            request = urllib.request.Request(
                f"{base}/predict", data=body, headers={"Content-Type": content_type}
            )
            t0 = time.perf_counter()
            try:
                with urllib.request.urlopen(request, timeout=60) as r:
                    n = len(json.loads(r.read())["faces"])
            except Exception:  # noqa: BLE001 - counted, never fatal in a load test
                with lock:
                    errors[0] += 1
                continue
            dt = time.perf_counter() - t0
            with lock:
                latencies.append(dt)
                faces[0] += n

    start = time.perf_counter()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    ms = np.asarray(latencies) * 1000 if latencies else np.asarray([np.nan])
    return {
        "requests": len(latencies),
        "rps": len(latencies) / elapsed,
        "fps": faces[0] / elapsed,
        "p50": float(np.percentile(ms, 50)),
        "p95": float(np.percentile(ms, 95)),
        "p99": float(np.percentile(ms, 99)),
        "errors": errors[0],
    }


def ceiling(seconds: float) -> dict[str, float]:
    """The same photos through the Python API in one process (batches of 16 images)."""
    from agegender import AgeGender

    ag = AgeGender()
    data = [p.read_bytes() for p in PHOTOS]
    ag.predict_batch(data)  # warm-up
    images = faces = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        out = ag.predict_batch([data[i % len(data)] for i in range(16)])
        images += len(out)
        faces += sum(len(f) for f in out)
    elapsed = time.perf_counter() - start
    return {"rps": images / elapsed, "fps": faces / elapsed}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--seconds", type=float, default=4.0, help="per cell")
    parser.add_argument("--max-requests", type=int, default=2000, help="per cell")
    args = parser.parse_args()
    print(cpu_summary())
    print(f"photos: {', '.join(p.name for p in PHOTOS)} (one face each), loopback")
    rows = []
    for label, size in (("on (max_batch_size=16)", 16), ("off (max_batch_size=1)", 1)):
        process, base = start_server(size)
        try:
            load(base, 4, 1.0, 50)  # warm-up
            for clients in args.clients:
                r = load(base, clients, args.seconds, args.max_requests)
                rows.append((label, clients, r))
                print(f"batching {label}, {clients} clients: {r}", flush=True)
        finally:
            stop(process)
    top = ceiling(args.seconds)
    print()
    print("| batching | clients | requests/s | faces/s | p50 ms | p95 ms | p99 ms | errors |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for label, clients, r in rows:
        print(
            f"| {label} | {clients} | {r['rps']:.1f} | {r['fps']:.1f} | {r['p50']:.0f} | "
            f"{r['p95']:.0f} | {r['p99']:.0f} | {r['errors']} |"
        )
    print(
        f"| Python API, one process (ceiling) | - | {top['rps']:.1f} | {top['fps']:.1f} "
        "| - | - | - | - |"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
