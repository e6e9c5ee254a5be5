"""The inference tier side by side with KServe's Python model server, one INT8 ONNX model, in one run.

    .venv/bin/python bench/serving.py                          # the example's current release, ~2 min
    .venv/bin/python bench/serving.py --seconds 5 --repeats 1  # a quick look
    .venv/bin/python bench/serving.py --repeats 3 --json out.json
    .venv/bin/python bench/serving.py --recommender            # also the composite recommender, millrace only

KServe lives in a virtual environment of its own (kserve and tritonclient cannot share a process:
both register the protobuf messages of package ``inference``):

    python3 -m venv /work/venvs/kserve && /work/venvs/kserve/bin/pip install kserve 'onnxruntime==1.32.*'

(``--kserve-python`` points at its interpreter; keep its onnxruntime the same version as .venv's.)

The model is the release's ``will_like`` (the tabular ranking model), its INT8 file, batch-1
requests: ``python -m millrace.serving`` serves the release; bench/kserve_server.py serves the same
file (SHA-256 checked) as a stock ``kserve.Model`` under ``kserve.ModelServer`` with KServe's
defaults, its v2 gRPC port in use. Both get the same requests: ``--rows`` batch-1 rows drawn from
the bundle's input statistics, sent by tritonclient.grpc, so the request bytes are the same (their
SHA-256 is printed). Before any timing each server answers every row once and the answers must
equal each other and onnxruntime in this process within 1e-6, or the bench stops.

Load: tritonclient.grpc in separate client processes (one process's GIL would cap the rate),
closed loop: ``--concurrency`` requests in flight in all, spread over at most ``--processes``
processes x threads, each thread with its own client (channel), cycling through the rows. Each
point runs ``--warmup`` s untimed, then ``--seconds`` s timed: a request counts when it starts and
ends inside the window; its latency is the client's. The machine's cores are shared by clients and
server, so the servers run one at a time, their order alternating over ``--repeats``; the figures
are medians over repeats. Also the server's and clients' CPU time per request, the CPU anything
else on the machine used meanwhile (a warning past a quarter core: the figures are then noisy), and
start-up: seconds from launching each server to its ready line and to the first ServerReady true.

Target: millrace >= 2x KServe's throughput at concurrency 8, with p99 no worse.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

# This file is named like the `serving` package: keep its folder off the import path.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import numpy as np

# Client processes are spawned and import this file again: millrace modules are imported inside the
# functions of the bench's own process, tritonclient inside the client processes only.

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "movielens"
KSERVE_SERVER = Path(__file__).resolve().parent / "kserve_server.py"
KSERVE_PYTHON = "/work/venvs/kserve/bin/python"
MODEL = "will_like"
RECOMMENDER = "recommender"
TARGET_CONCURRENCY, TARGET_SPEEDUP = 8, 2.0
TOLERANCE = 1e-6
BUSY_CORES = 0.25  # CPU of other processes during a point past which the figures are called noisy
START_TIMEOUT = 120.0
# The example's genre names: the values its string inputs (genre lists) take.
GENRES = ("Action", "Adventure", "Animation", "Children", "Comedy", "Crime", "Documentary", "Drama", "Fantasy",
          "Film-Noir", "Horror", "IMAX", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western")
LIST_WIDTH = 3  # genre lists of 1..3 names, padded with "" as training pads them
PROTOCOL = {"FLOAT": "FP32", "DOUBLE": "FP64", "INT64": "INT64", "INT32": "INT32", "BOOL": "BOOL", "STRING": "BYTES"}
NUMPY = {"FP32": np.float32, "FP64": np.float64, "INT64": np.int64, "INT32": np.int32, "BOOL": np.bool_,
         "BYTES": np.object_}

Row = dict  # input name -> (protocol datatype, numpy array of batch 1)


# -- the model and its requests ------------------------------------------------------------------

@dataclass(frozen=True)
class ServedFile:
    release: str
    model: str
    variant: str
    path: str
    sha256: str
    part: object  # training.bundle.Part


def served_file(state: str, model: str = MODEL, variant: str = "int8") -> ServedFile:
    """The ONNX file the current release serves for ``model`` (one-part bundle), verified as the server verifies it."""
    from millrace.contracts.errors import MillraceError
    from millrace.indexing.release import release_root, verify

    try:
        checked = verify(release_root(state))
    except MillraceError as exc:
        raise SystemExit(f"error: {exc}") from None
    if model not in checked.bundles:
        raise SystemExit(f"error: release {checked.release.id} has no model '{model}' "
                         f"(it has {sorted(checked.bundles)}; fix: run `millrace nightly` for the example)")
    folder, manifest = checked.bundles[model]
    (part_name, part), *more = manifest.parts.items()
    if more or variant not in part.files:
        raise SystemExit(f"error: {folder}: model '{model}' is not a one-part bundle with a {variant} file")
    name = part.files[variant]
    return ServedFile(checked.release.id, model, variant, os.path.join(folder, name), part.sha256[name], part)


def request_rows(part, count: int, seed: int = 7) -> list[Row]:
    """``count`` batch-1 rows for every input of ``part``: numbers drawn around each input's mean
    and spread, genre lists of 1..3 names (strings as UTF-8 bytes, as clients send BYTES)."""
    rng = np.random.default_rng(seed)
    datatypes = {t.name: PROTOCOL[t.datatype] for t in part.signature.inputs}
    rows = []
    for _ in range(count):
        row = {}
        for i in part.inputs:
            datatype = datatypes[i.name]
            if i.kind == "numeric":
                value = np.array([rng.normal(i.mean, i.std or 1.0)], NUMPY[datatype])
            elif i.kind == "categorical":
                value = np.array([rng.integers(1, max(i.vocabulary, 2))], np.int64) if datatype == "INT64" else \
                    np.array([rng.choice(GENRES).encode()], object)
            elif datatype == "INT64":
                value = np.full((1, LIST_WIDTH), -(2 ** 63), np.int64)
                n = rng.integers(1, LIST_WIDTH + 1)
                value[0, :n] = rng.integers(1, max(i.vocabulary, 2), n)
            else:
                names = list(rng.choice(GENRES, rng.integers(1, LIST_WIDTH + 1), replace=False))
                value = np.array([[g.encode() for g in names] + [b""] * (LIST_WIDTH - len(names))], object)
            row[i.name] = (datatype, value)
        rows.append(row)
    return rows


def reference_outputs(served: ServedFile, rows: list[Row]) -> list[dict[str, np.ndarray]]:
    """onnxruntime in this process, with the server's session options, on each row."""
    from millrace.indexing.embed import session

    with open(served.path, "rb") as f:
        onnx = session(f.read())
    names = [o.name for o in onnx.get_outputs()]
    out = []
    for row in rows:
        feed = {n: (np.vectorize(bytes.decode, otypes=[object])(v) if t == "BYTES" else v) for n, (t, v) in row.items()}
        out.append(dict(zip(names, onnx.run(names, feed))))
    return out


def recommender_rows(state: str, count: int) -> list[Row]:
    """Batch-1 requests of the composite recommender: user ids the offline user features know
    (the first ``count``; 1..count when that table is not there), k = 10."""
    path = Path(state) / "offline" / "user_activity" / "data.parquet"
    users = list(range(1, count + 1))
    if path.exists():
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        known = pc.unique(pq.read_table(path, columns=["userId"])["userId"]).to_pylist()
        users = sorted(int(u) for u in known if u is not None)[:count] or users
    return [{"user_id": ("INT64", np.array([u], np.int64)), "k": ("INT32", np.array([10], np.int32))} for u in users]


# -- the client side (separate processes, tritonclient only) ---------------------------------------

def _inputs(triton, row: Row) -> list:
    tensors = []
    for name, (datatype, array) in row.items():
        tensor = triton.InferInput(name, list(array.shape), datatype)
        tensor.set_data_from_numpy(array)
        tensors.append(tensor)
    return tensors


def _request_sha256(model: str, tensors: list) -> str:
    """SHA-256 of the ModelInferRequest tritonclient sends for ``tensors`` (the bytes on the wire)."""
    from tritonclient.grpc._utils import _get_inference_request

    request = _get_inference_request(model_name=model, inputs=tensors, model_version="", request_id="", outputs=None,
                                     sequence_id=0, sequence_start=False, sequence_end=False, priority=0,
                                     timeout=None, parameters=None)
    return hashlib.sha256(request.SerializeToString(deterministic=True)).hexdigest()


def _probe_process(conn) -> None:
    """A long-lived client process answering the bench's questions: when a server first says it is
    ready, what it answers for each row, whether it serves a model."""
    import tritonclient.grpc as triton

    while True:
        command, *args = conn.recv()
        if command == "stop":
            return
        if command == "cancel":  # came after the answer it meant to call off
            continue
        try:
            if command == "ready_at":
                address, deadline = args
                while time.monotonic() < deadline:
                    if conn.poll():  # the server exited: the bench calls the wait off
                        conn.recv()
                        conn.send(("error", "the server exited"))
                        break
                    # a fresh channel each try: a refused connection puts a channel in reconnect backoff
                    client = triton.InferenceServerClient(address)
                    try:
                        if client.is_server_ready(client_timeout=0.5):
                            conn.send(("ok", time.monotonic()))
                            break
                    except triton.InferenceServerException:
                        pass
                    finally:
                        client.close()
                    time.sleep(0.01)
                else:
                    conn.send(("error", f"no ServerReady true from {address} in time"))
            elif command == "infer_each":
                address, model, rows = args
                client = triton.InferenceServerClient(address)
                answers, digests = [], []
                for row in rows:
                    tensors = _inputs(triton, row)
                    digests.append(_request_sha256(model, tensors))
                    result = client.infer(model, tensors)
                    answers.append({o.name: result.as_numpy(o.name) for o in result.get_response().outputs})
                client.close()
                conn.send(("ok", (answers, hashlib.sha256("".join(digests).encode()).hexdigest())))
            elif command == "serves":
                address, model = args
                client = triton.InferenceServerClient(address)
                conn.send(("ok", client.is_model_ready(model)))
                client.close()
        except Exception as exc:  # the bench's process says it and stops
            conn.send(("error", f"{type(exc).__name__}: {exc}".splitlines()[0]))


def _load_process(conn, address: str, model: str, rows: list[Row], threads: int, offset: int) -> None:
    """``threads`` closed-loop clients; sends back each one's latencies inside the window."""
    import tritonclient.grpc as triton

    clients = [triton.InferenceServerClient(address) for _ in range(threads)]
    requests = [_inputs(triton, row) for row in rows]
    for client in clients:  # connect every channel before the clock starts
        client.infer(model, requests[0])
    conn.send("ready")
    start_at, warmup, seconds = conn.recv()
    measure_from, until = start_at + warmup, start_at + warmup + seconds
    results: list = [None] * threads

    def loop(i: int) -> None:
        client, latencies, errors, first_error, n = clients[i], [], 0, "", offset + i
        time.sleep(max(0.0, start_at - time.monotonic()))
        while True:
            request = requests[n % len(requests)]
            n += 1
            started = time.monotonic()
            if started >= until:
                break
            try:
                client.infer(model, request)
                ok = True
            except triton.InferenceServerException as exc:
                ok, first_error = False, first_error or f"{exc.status()}: {exc.message()}"
            ended = time.monotonic()
            if started >= measure_from and ended <= until:
                if ok:
                    latencies.append(ended - started)
                else:
                    errors += 1
        results[i] = (latencies, errors, first_error)

    workers = [threading.Thread(target=loop, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    time.sleep(max(0.0, measure_from - time.monotonic()))
    cpu_from = time.process_time()
    time.sleep(max(0.0, until - time.monotonic()))
    cpu = time.process_time() - cpu_from
    for w in workers:
        w.join()
    latencies = np.concatenate([np.asarray(r[0], np.float64) for r in results])
    conn.send((latencies, sum(r[1] for r in results), next((r[2] for r in results if r[2]), ""), cpu))


class Probe:
    """The bench's handle on its probe process."""

    def __init__(self, ctx):
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_probe_process, args=(child,), daemon=True)
        self.proc.start()

    def ask(self, *command, timeout: float = START_TIMEOUT):
        self.conn.send(command)
        if not self.conn.poll(timeout):
            raise SystemExit(f"error: the probe client gave no answer to {command[0]} in {timeout:.0f} s")
        status, value = self.conn.recv()
        if status != "ok":
            raise SystemExit(f"error: {command[0]} against {command[1]}: {value}")
        return value

    def close(self) -> None:
        self.conn.send(("stop",))
        self.proc.join(timeout=10)


# -- servers -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Side:
    name: str
    argv: tuple[str, ...]           # {port}, {http_port}, {metrics_port}: free ports, filled in at start
    env: dict
    ready_marks: tuple[str, ...]    # ready when every mark was seen in its output


@dataclass
class Running:
    side: Side
    proc: subprocess.Popen
    address: str
    log: Path
    ready_line_s: float = 0.0       # launch -> the last ready mark
    server_ready_s: float = 0.0     # launch -> the first ServerReady true through tritonclient
    ready_line: str = ""
    metrics_url: str | None = None  # where the server says its metrics are, when it says so


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def millrace_side(project: str, state: str) -> Side:
    argv = (sys.executable, "-m", "millrace.serving", "--project", project, "--port", "{port}")
    usage = subprocess.run([*argv[:3], "--help"], capture_output=True, text=True, cwd=ROOT).stdout
    if "--metrics-port" in usage:  # a free one, not the project's fixed default
        argv += ("--metrics-port", "{metrics_port}")
    return Side("millrace", argv, {**os.environ, "MILLRACE_STATE_DIR": state, "PYTHONUNBUFFERED": "1"},
                ("serving release ",))


def kserve_side(python: str, served: ServedFile) -> Side:
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    return Side("KServe", (python, str(KSERVE_SERVER), "--onnx", served.path, "--sha256", served.sha256,
                           "--model_name", served.model, "--grpc_port", "{port}", "--http_port", "{http_port}"),
                env | {"PYTHONUNBUFFERED": "1"}, ("Starting gRPC server on", "Uvicorn running on"))


def start(side: Side, probe: Probe, logs: Path) -> Running:
    port, http_port, metrics_port = free_port(), free_port(), free_port()
    address = f"127.0.0.1:{port}"
    argv = [a.format(port=port, http_port=http_port, metrics_port=metrics_port) for a in side.argv]
    log = logs / f"{side.name.lower()}-{port}.log"
    seen: dict[str, float] = {}
    first_ready_line: list[str] = []
    marked = threading.Event()

    def drain(stream, out) -> None:  # keeps the pipe empty (KServe logs every request) and times the marks
        for line in stream:
            now = time.monotonic()
            out.write(line)
            for mark in side.ready_marks:
                if mark in line and mark not in seen:
                    seen[mark] = now
                    first_ready_line.append(line.strip())
            if len(seen) == len(side.ready_marks):
                marked.set()
        marked.set()

    deadline = time.monotonic() + START_TIMEOUT
    probe.conn.send(("ready_at", address, deadline))  # polls from before the launch
    launched = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=side.env,
                            cwd=ROOT, bufsize=1)
    out = log.open("w")
    threading.Thread(target=drain, args=(proc.stdout, out), daemon=True).start()
    running = Running(side, proc, address, log)
    while not probe.conn.poll(0.05):
        if proc.poll() is not None:
            probe.conn.send(("cancel",))
            break
    if not probe.conn.poll(START_TIMEOUT + 5):
        stop(running)
        raise SystemExit(f"error: the probe client gave no answer for {side.name}")
    status, value = probe.conn.recv()
    marked.wait(max(0.0, deadline - time.monotonic()))
    if status != "ok" or len(seen) < len(side.ready_marks):
        stop(running)
        out.flush()
        tail = "".join(log.read_text().splitlines(keepends=True)[-15:])
        raise SystemExit(f"error: {side.name} did not start ({value if status != 'ok' else 'no ready line'}); "
                         f"its output ends:\n{tail}")
    running.server_ready_s = value - launched
    running.ready_line_s = max(seen.values()) - launched
    running.ready_line = " | ".join(first_ready_line)
    running.metrics_url = metrics_url(running.ready_line)
    return running


def metrics_url(ready_line: str) -> str | None:
    """Where a ready line says the metrics are ("...; metrics on :8002/metrics": this host)."""
    found = re.search(r"metrics on (\[[^\]]*\]|[^\s:/,;]*):(\d+)(/[^\s,;]*)?", ready_line)
    if found is None:
        return None
    host = found.group(1) if found.group(1) not in ("", "0.0.0.0", "[::]") else "127.0.0.1"
    return f"http://{host}:{found.group(2)}{found.group(3) or '/metrics'}"


def stop(running: Running) -> None:
    running.proc.send_signal(signal.SIGTERM)
    try:
        running.proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        running.proc.kill()
        running.proc.wait(timeout=10)


def machine_busy_seconds() -> float:
    """CPU seconds all cores have spent busy (not idle, not waiting on I/O) since boot."""
    ticks = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(ticks[:8]) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (all its threads) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- load ----------------------------------------------------------------------------------------

@dataclass
class Point:
    server: str
    model: str
    concurrency: int
    layout: list[int]               # threads of each client process
    requests: int
    errors: int
    rps: float
    p50_ms: float
    p99_ms: float
    mean_ms: float
    server_cpu_ms: float            # server CPU per request
    client_cpu_ms: float            # clients' CPU per request
    other_cores: float              # CPU used meanwhile by anything else on the machine, in cores
    first_error: str = ""


def spread(concurrency: int, processes: int) -> list[int]:
    """Threads per client process: ``concurrency`` in all over at most ``processes`` processes."""
    n = max(1, min(concurrency, processes))
    return [concurrency // n + (1 if i < concurrency % n else 0) for i in range(n)]


def run_point(ctx, running: Running, model: str, rows: list[Row], concurrency: int, processes: int,
              warmup: float, seconds: float) -> Point:
    layout = spread(concurrency, processes)
    conns, procs, offset = [], [], 0
    for threads in layout:
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_load_process, args=(child, running.address, model, rows, threads, offset),
                           daemon=True)
        proc.start()
        conns.append(parent)
        procs.append(proc)
        offset += threads
    for conn, proc in zip(conns, procs):
        if not conn.poll(START_TIMEOUT) or conn.recv() != "ready":
            raise SystemExit(f"error: a client process did not connect to {running.side.name} at {running.address}")
    start_at = time.monotonic() + 0.2
    for conn in conns:
        conn.send((start_at, warmup, seconds))
    time.sleep(max(0.0, start_at + warmup - time.monotonic()))
    cpu_from, bench_from, machine_from = cpu_seconds(running.proc.pid), time.process_time(), machine_busy_seconds()
    time.sleep(max(0.0, start_at + warmup + seconds - time.monotonic()))
    server_cpu = cpu_seconds(running.proc.pid) - cpu_from
    bench_cpu, machine = time.process_time() - bench_from, machine_busy_seconds() - machine_from
    results = []
    for conn in conns:
        if not conn.poll(60):
            raise SystemExit(f"error: a client process of {running.side.name} did not report")
        results.append(conn.recv())
    for proc in procs:
        proc.join(timeout=10)
    latencies = np.concatenate([r[0] for r in results]) * 1e3
    errors = sum(r[1] for r in results)
    done = max(len(latencies), 1)
    clients_cpu = sum(r[3] for r in results)
    other = max(0.0, machine - server_cpu - clients_cpu - bench_cpu) / seconds
    return Point(running.side.name, model, concurrency, layout, len(latencies), errors, len(latencies) / seconds,
                 float(np.percentile(latencies, 50)) if len(latencies) else float("nan"),
                 float(np.percentile(latencies, 99)) if len(latencies) else float("nan"),
                 float(latencies.mean()) if len(latencies) else float("nan"),
                 server_cpu / done * 1e3, clients_cpu / done * 1e3, other,
                 next((r[2] for r in results if r[2]), ""))


# -- the check -----------------------------------------------------------------------------------

def compare(name: str, got: list[dict], want: list[dict], what: str) -> float:
    """Largest absolute difference between two answer lists; stops the bench past the tolerance."""
    worst = 0.0
    for i, (g, w) in enumerate(zip(got, want)):
        if set(g) != set(w):
            raise SystemExit(f"error: row {i}: {name} answers outputs {sorted(g)}, {what} {sorted(w)}")
        for output in w:
            a, b = np.asarray(g[output], np.float64), np.asarray(w[output], np.float64)
            if a.shape != b.shape:
                raise SystemExit(f"error: row {i}: {name}'s '{output}' has shape {a.shape}, {what}'s {b.shape}")
            diff = float(np.max(np.abs(a - b))) if a.size else 0.0
            if not diff <= TOLERANCE:
                raise SystemExit(f"error: row {i}: {name}'s '{output}' {a.tolist()} differs from {what}'s "
                                 f"{b.tolist()} by {diff:.3g} (> {TOLERANCE}); the figures would compare "
                                 "different work, so none are taken")
            worst = max(worst, diff)
    return worst


# -- the composite recommender (millrace only) ----------------------------------------------------

def stage_seconds(metrics: str) -> dict[str, float]:
    """Seconds spent in each recommender stage so far, from the server's Prometheus text."""
    out = {}
    for found in re.finditer(r'^millrace_serving_stage_seconds_sum\{stage="([^"]+)"\} (\S+)$', metrics, re.M):
        out[found.group(1)] = float(found.group(2))
    return out


def stage_shares(before: str, after: str) -> dict[str, float]:
    """Each stage's share of the stage time spent between two scrapes."""
    spent = {s: v - stage_seconds(before).get(s, 0.0) for s, v in stage_seconds(after).items()}
    total = sum(spent.values())
    return {s: v / total for s, v in spent.items()} if total > 0 else {}


def scrape(running: Running) -> str | None:
    if running.metrics_url is None:
        return None
    from urllib.request import urlopen

    with urlopen(running.metrics_url, timeout=10) as response:
        return response.read().decode()


def recommender_section(ctx, args, probe: Probe, side: Side, logs: Path) -> dict:
    """The composite ``recommender`` (user id [+ k] -> top-k item ids and scores) at concurrency 8,
    millrace only (KServe has no peer of it): throughput, latency and where its time goes."""
    print(f"\n{RECOMMENDER} (millrace only, concurrency {TARGET_CONCURRENCY})", flush=True)
    running = start(side, probe, logs)
    try:
        if not probe.ask("serves", running.address, RECOMMENDER):
            print("  skipped: the release serves no recommender", flush=True)
            return {"skipped": "the release serves no recommender"}
        rows = recommender_rows(args.state, args.rows)
        probe.ask("infer_each", running.address, RECOMMENDER, rows[:1])
        before = scrape(running)
        point = run_point(ctx, running, RECOMMENDER, rows, TARGET_CONCURRENCY, args.processes, args.warmup,
                          args.seconds)
        after = scrape(running)
    finally:
        stop(running)
    print_point(point)
    shares = stage_shares(before, after) if before is not None and after is not None else None
    if shares:
        print("  stage shares: " + ", ".join(f"{s} {v:.0%}" for s, v in sorted(shares.items())), flush=True)
    elif shares is None:
        print("  stage shares: not measured (the server's ready line names no metrics address)", flush=True)
    else:
        print(f"  stage shares: not measured ({running.metrics_url} has no stage timings)", flush=True)
    return {"point": asdict(point), "stage_shares": shares, "users": len(rows)}


# -- report --------------------------------------------------------------------------------------

def print_point(p: Point) -> None:
    print(f"  {p.server:<9} c={p.concurrency:<3} {'x'.join(map(str, p.layout)):<9} {p.rps:>9,.0f} req/s  "
          f"p50 {p.p50_ms:7.2f} ms  p99 {p.p99_ms:7.2f} ms  errors {p.errors:<4} "
          f"CPU ms/req server {p.server_cpu_ms:5.3f} clients {p.client_cpu_ms:5.3f}  others {p.other_cores:4.2f} cores"
          + (f"  first error: {p.first_error}" if p.first_error else ""), flush=True)


def median(values: list[float]) -> float:
    return float(np.median(values)) if values else float("nan")


def summarize(points: list[Point], concurrencies: list[int]) -> list[dict]:
    rows = []
    for c in concurrencies:
        cell = {"concurrency": c}
        for side in ("millrace", "KServe"):
            mine = [p for p in points if p.server == side and p.concurrency == c]
            cell[side] = {"rps": median([p.rps for p in mine]), "p50_ms": median([p.p50_ms for p in mine]),
                          "p99_ms": median([p.p99_ms for p in mine]), "errors": sum(p.errors for p in mine),
                          "server_cpu_ms": median([p.server_cpu_ms for p in mine]),
                          "client_cpu_ms": median([p.client_cpu_ms for p in mine]),
                          "other_cores": max([p.other_cores for p in mine], default=float("nan"))}
        cell["rps_ratio"] = cell["millrace"]["rps"] / cell["KServe"]["rps"]
        cell["p99_ratio"] = cell["millrace"]["p99_ms"] / cell["KServe"]["p99_ms"]
        rows.append(cell)
    return rows


def report(table: list[dict], startup: dict, repeats: int) -> dict:
    print(f"\n{MODEL} INT8, batch 1, medians over {repeats} repeat(s)")
    head = f"{'req/s':>7} {'p50 ms':>7} {'p99 ms':>7} {'err':>4} {'CPU ms':>7}"
    print(f"{'':>4}   {'millrace':<36}   {'KServe':<36}")
    print(f"{'conc':>4} | {head} | {head} | {'req/s ratio':>11} {'p99 ratio':>9}")
    for cell in table:
        sides = [f"{x['rps']:>7,.0f} {x['p50_ms']:>7.2f} {x['p99_ms']:>7.2f} {x['errors']:>4} {x['server_cpu_ms']:>7.3f}"
                 for x in (cell["millrace"], cell["KServe"])]
        print(f"{cell['concurrency']:>4} | {sides[0]} | {sides[1]} | {cell['rps_ratio']:>10.2f}x {cell['p99_ratio']:>8.2f}x")
    print("(CPU ms: the server's CPU time per request, all its threads; clients and server share the cores)")
    print("\nstart-up (median s from launch)   ready line   first ServerReady true")
    for side, s in startup.items():
        print(f"  {side:<31} {median(s['ready_line_s']):>10.2f} {median(s['server_ready_s']):>24.2f}")
    others = max(c[side]["other_cores"] for c in table for side in ("millrace", "KServe"))
    if others > BUSY_CORES:
        print(f"\nwarning: other work on the machine used up to {others:.2f} cores during a point; "
              "the figures are noisy (rerun on a quiet machine, or with --repeats)")
    at = next((c for c in table if c["concurrency"] == TARGET_CONCURRENCY), None)
    target = f"millrace >= {TARGET_SPEEDUP:g}x KServe's req/s at concurrency {TARGET_CONCURRENCY}, p99 no worse"
    if at is None:
        verdict = {"target": target, "pass": None, "figure": "not measured"}
        print(f"\ntarget: {target}: not measured (add {TARGET_CONCURRENCY} to --concurrency)")
    else:
        ok = at["rps_ratio"] >= TARGET_SPEEDUP and at["p99_ratio"] <= 1.0 and at["millrace"]["errors"] == 0
        figure = f"{at['rps_ratio']:.2f}x req/s, p99 {at['p99_ratio']:.2f}x"
        verdict = {"target": target, "pass": ok, "figure": figure}
        print(f"\ntarget: {target}: {figure}  {'PASS' if ok else 'MISS'}")
        m, k = at["millrace"], at["KServe"]
        busy = {n: x["rps"] * (x["server_cpu_ms"] + x["client_cpu_ms"]) / 1e3 for n, x in (("millrace", m), ("KServe", k))}
        print(f"  CPU per request at concurrency {TARGET_CONCURRENCY}: millrace server {m['server_cpu_ms']:.3f} + "
              f"clients {m['client_cpu_ms']:.3f} ms ({busy['millrace']:.2f} cores), KServe server "
              f"{k['server_cpu_ms']:.3f} + clients {k['client_cpu_ms']:.3f} ms ({busy['KServe']:.2f} cores)")
        if min(busy.values()) >= 0.8 * (os.cpu_count() or 1):
            # Both runs keep the shared cores busy, so req/s goes as 1 / (server + client CPU per request):
            # the server CPU per request that would meet the target on this machine.
            budget = (k["server_cpu_ms"] + k["client_cpu_ms"]) / TARGET_SPEEDUP - m["client_cpu_ms"]
            verdict["server_cpu_budget_ms"] = budget
            print(f"  both runs are CPU-bound: {TARGET_SPEEDUP:g}x needs millrace's server at <= {budget:.3f} ms "
                  "of CPU per request")
    return verdict


# -- the run -------------------------------------------------------------------------------------

def check(sides: list[Side], started, probe: Probe, model: str, rows: list[Row], expected: list[dict]) -> str:
    """Every row through each server once, before any timing: the answers must equal onnxruntime's
    and the request bytes must be the same for both. Returns the requests' SHA-256."""
    print("\ncheck: every row through both servers, against onnxruntime in this process", flush=True)
    digests = {}
    for side in sides:
        running = started(side)
        try:
            answers, digests[side.name] = probe.ask("infer_each", running.address, model, rows)
        finally:
            stop(running)
        worst = compare(side.name, answers, expected, "onnxruntime")
        print(f"  {side.name:<9} ready line {running.ready_line_s:5.2f} s, ServerReady {running.server_ready_s:5.2f} s;"
              f" answers equal onnxruntime's (max |diff| {worst:.1e}); requests sha256 {digests[side.name][:16]}",
              flush=True)
    if len(set(digests.values())) != 1:
        raise SystemExit(f"error: the two servers were sent different request bytes ({digests})")
    return digests[sides[0].name]


def timed_runs(ctx, sides: list[Side], started, model: str, rows: list[Row], concurrencies: list[int],
               args) -> list[Point]:
    """Each server in turn (the order alternating over repeats), every concurrency on one start."""
    points: list[Point] = []
    for turn in range(args.repeats):
        order = sides if turn % 2 == 0 else sides[::-1]
        print(f"\nrepeat {turn + 1}/{args.repeats}: {args.warmup:g} s warm-up + {args.seconds:g} s per point",
              flush=True)
        for side in order:
            running = started(side)
            try:
                for c in concurrencies:
                    points.append(run_point(ctx, running, model, rows, c, args.processes, args.warmup, args.seconds))
                    print_point(points[-1])
            finally:
                stop(running)
    return points


# -- main ----------------------------------------------------------------------------------------

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--project", default=str(EXAMPLE), help="project folder (millrace.yaml)")
    ap.add_argument("--state", help="state dir with a current release (default: $MILLRACE_STATE_DIR, else the project's)")
    ap.add_argument("--concurrency", default="1,8,32", help="comma list of requests in flight")
    ap.add_argument("--seconds", type=float, default=10.0, help="timed seconds of each point")
    ap.add_argument("--warmup", type=float, default=2.0, help="untimed seconds of load before each point")
    ap.add_argument("--repeats", type=int, default=1, help="runs of each server, the order alternating")
    ap.add_argument("--processes", type=int, default=4, help="client processes at most (threads make up the rest)")
    ap.add_argument("--rows", type=int, default=64, help="distinct batch-1 requests the clients cycle through")
    ap.add_argument("--kserve-python", default=KSERVE_PYTHON, help="python of the venv with kserve (see above)")
    ap.add_argument("--recommender", action="store_true", help="also the composite recommender, millrace only")
    ap.add_argument("--json", help="write every figure to this file")
    args = ap.parse_args()
    concurrencies = [int(c) for c in args.concurrency.split(",") if c]
    if not Path(args.kserve_python).exists():
        raise SystemExit(f"error: --kserve-python {args.kserve_python}: no such interpreter "
                         "(fix: create the venv as this script's --help says)")
    from millrace.contracts.project import load_project

    if args.state:
        os.environ["MILLRACE_STATE_DIR"] = args.state
    args.state = load_project(args.project).state_dir
    served = served_file(args.state)
    rows = request_rows(served.part, args.rows)
    expected = reference_outputs(served, rows)
    kserve_version = subprocess.run([args.kserve_python, "-c", "from importlib.metadata import version as v; "
                                     "print(v('kserve'), v('onnxruntime'))"],
                                    capture_output=True, text=True, check=True).stdout.split()
    import onnxruntime

    print(f"release {served.release}, {served.model} {served.variant} ({Path(served.path).name}, "
          f"sha256 {served.sha256[:12]}), {len(rows)} distinct batch-1 rows; kserve {kserve_version[0]} "
          f"(onnxruntime {kserve_version[1]}), millrace's onnxruntime {onnxruntime.__version__}; "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}", flush=True)
    if kserve_version[1] != onnxruntime.__version__:
        print("  warning: the two onnxruntime versions differ; the servers may not run the same kernels")

    ctx = multiprocessing.get_context("spawn")
    sides = [millrace_side(args.project, args.state), kserve_side(args.kserve_python, served)]
    logs = Path(tempfile.mkdtemp(prefix="millrace-serving-bench-"))
    probe = Probe(ctx)
    startup = {s.name: {"ready_line_s": [], "server_ready_s": [], "ready_line": ""} for s in sides}
    summary: dict = {"release": served.release, "model": served.model, "variant": served.variant,
                     "onnx": served.path, "sha256": served.sha256, "rows": len(rows), "concurrency": concurrencies,
                     "seconds": args.seconds, "warmup": args.warmup, "repeats": args.repeats,
                     "processes": args.processes, "cpu_count": os.cpu_count(),
                     "versions": {"kserve": kserve_version[0], "onnxruntime_kserve": kserve_version[1],
                                  "onnxruntime_millrace": onnxruntime.__version__},
                     "kserve_settings": "ModelServer defaults: workers 1, max_threads 4 (gRPC), asyncio executor "
                                        "min(32, cpus + 4), latency logging on; sync predict()",
                     "logs": str(logs), "load_average_before": os.getloadavg()[0]}

    def started(side: Side) -> Running:
        running = start(side, probe, logs)
        record = startup[side.name]
        record["ready_line_s"].append(running.ready_line_s)
        record["server_ready_s"].append(running.server_ready_s)
        record["ready_line"] = running.ready_line
        return running

    try:
        summary["requests_sha256"] = check(sides, started, probe, served.model, rows, expected)
        points = timed_runs(ctx, sides, started, served.model, rows, concurrencies, args)
        table = summarize(points, concurrencies)
        summary |= {"points": [asdict(p) for p in points], "table": table, "startup": startup}
        summary["target"] = report(table, startup, args.repeats)
        if args.recommender:
            summary["recommender"] = recommender_section(ctx, args, probe, sides[0], logs)
        summary["load_average_after"] = os.getloadavg()[0]
        print(f"\nserver logs in {logs}")
        if args.json:
            Path(args.json).write_text(json.dumps(summary, indent=1, default=str))
            print(f"all figures in {args.json}")
    finally:
        probe.close()


if __name__ == "__main__":
    main()
