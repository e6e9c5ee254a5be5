"""Index build and catalogue embedding: millrace.indexing side by side with its peers, in one run.

    .venv/bin/python bench/indexing.py                    # build mode, 1M x 128 clustered vectors (~5-10 min, 2 cores)
    .venv/bin/python bench/indexing.py --rows 200000      # a smaller catalogue
    .venv/bin/python bench/indexing.py --mode embed       # catalogue embedding throughput (~1 min)
    .venv/bin/python bench/indexing.py --mode embed --state DIR --model NAME   # a real nightly's encoder

Mode ``build``: seeded clustered float32 vectors (gaussian centres + noise, unit length, so inner
product is cosine) and queries drawn the same way. For IVF-Flat (``IVF{nlist_for(n)},Flat``), IVF-PQ
(``IVF{nlist},PQ{dim/4}np``) and the ``,Refine(SQ8)`` variant ``factory.choose`` gives large
catalogues: ``build.build`` vs a direct faiss script doing the same build (index_factory with inner
product, trained on the same sample drawn the same way, filled in the same batches), alternated
``--repeats`` times so load swings hit both; overhead = median(millrace) / median(direct) - 1,
target <= 10%. Then recall@10 (against exact search, ``build.recall_at``) and QPS (all queries in
one search call, faiss's default threads) over nprobe, the index's size (serialized bytes) and the
process's resident-memory growth while building it, and what ``build.tune`` picks at recall 0.95.

Mode ``embed``: items/s of ``Encoder.embed`` (batched, 4096 rows a session call) vs one session
call per row (``Encoder.embed_rows``, timed on at most ``--row-items`` rows / ``--row-seconds``),
same encoder (the served variant, INT8 for a quantized model) and same rows. By default the encoder
is the tiny synthetic project's two_tower model (trained here, as tests/indexing/conftest.py does)
and its 60-item catalogue is scaled to ``--items`` rows by resampling its rows under new keys.
"""
from __future__ import annotations

import argparse
import gc
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

# This file is named like the `indexing` package: keep its folder off the import path.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import ctypes
import faiss
import numpy as np

from millrace.indexing import build, factory
from millrace.training.spec import IndexSpec

ROOT = Path(__file__).resolve().parents[1]
K = 10
MIN_RECALL = 0.95
OVERHEAD_TARGET = 0.10
_LIBC = ctypes.CDLL("libc.so.6")


# -- data ----------------------------------------------------------------------------------------

def clustered(n: int, dim: int, centres: np.ndarray, noise: float, rng: np.random.Generator,
              chunk: int = 200_000) -> np.ndarray:
    """``n`` unit vectors: a random centre plus gaussian noise, normalised (float32, C order)."""
    out = np.empty((n, dim), np.float32)
    for start in range(0, n, chunk):
        rows = min(chunk, n - start)
        block = centres[rng.integers(0, len(centres), rows)]
        block += noise * rng.standard_normal((rows, dim), dtype=np.float32)
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        out[start:start + rows] = block
    return out


def dataset(n: int, dim: int, queries: int, clusters: int, noise: float, seed: int):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim), dtype=np.float32)
    return clustered(n, dim, centres, noise, rng), clustered(queries, dim, centres, noise, rng)


# -- memory --------------------------------------------------------------------------------------

def rss_bytes() -> int:
    """Resident bytes after handing freed heap back to the OS, so a freed index does not hide a new one."""
    _LIBC.malloc_trim(0)
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def mib(b: float) -> str:
    return f"{b / (1 << 20):,.1f} MiB"


# -- build: millrace vs direct faiss -------------------------------------------------------------

def direct_build(vectors: np.ndarray, factory_string: str, train_rows: int, seed: int):
    """What a hand-written faiss script does: the same factory, sample and add batches."""
    n, dim = vectors.shape
    index = faiss.index_factory(dim, factory_string, faiss.METRIC_INNER_PRODUCT)
    rows = min(n, train_rows)
    sample = vectors if rows == n else vectors[np.sort(np.random.default_rng(seed).choice(n, rows, replace=False))]
    index.train(np.ascontiguousarray(sample))
    for start in range(0, n, build.ADD_BATCH):
        index.add(vectors[start:start + build.ADD_BATCH])
    return index


def millrace_build(vectors: np.ndarray, factory_string: str, train_rows: int, seed: int):
    return build.build(vectors, factory_string, train_rows, seed=seed, where="bench").index


def compare_builds(vectors: np.ndarray, factory_string: str, train_rows: int, seed: int, repeats: int,
                   first: int) -> dict:
    """Wall seconds of each build, the two sides taking turns (``first``: 0 direct starts, 1 millrace),
    and the resident-memory growth of the last millrace build. Returns that build's index."""
    times: dict = {"direct": [], "millrace": []}
    runners = {"direct": direct_build, "millrace": millrace_build}
    kept, rss_growth = None, 0
    for turn in range(repeats):
        order = ("direct", "millrace") if (turn + first) % 2 == 0 else ("millrace", "direct")
        for who in order:
            kept = None if who == "millrace" else kept  # free the previous millrace index first
            gc.collect()
            before = rss_bytes()
            started = time.perf_counter()
            index = runners[who](vectors, factory_string, train_rows, seed)
            times[who].append(time.perf_counter() - started)
            if who == "millrace":
                kept, rss_growth = index, rss_bytes() - before
            del index
            print(f"    {factory_string:<28} {who:<9} {times[who][-1]:7.2f} s", flush=True)
    direct, ours = float(np.median(times["direct"])), float(np.median(times["millrace"]))
    return {"factory": factory_string, "direct_s": times["direct"], "millrace_s": times["millrace"],
            "overhead": ours / direct - 1, "index": kept, "rss_growth": rss_growth,
            "index_bytes": len(faiss.serialize_index(kept))}


def sweep(index, base: np.ndarray, queries: np.ndarray, kth: np.ndarray, fixed: dict, most: int) -> list[dict]:
    """recall@K and QPS at each nprobe of the index's ladder up to ``most`` (``fixed``: other parameters)."""
    rows = []
    for nprobe in [p for p in factory.ladder(index, K)["nprobe"] if p <= most]:
        factory.apply(index, {"nprobe": nprobe} | fixed)
        index.search(queries[:50], K)  # warm the lists this nprobe touches
        started = time.perf_counter()
        index.search(queries, K)
        seconds = time.perf_counter() - started
        rows.append({"nprobe": nprobe, "recall": build.recall_at(index, base, queries, kth, K),
                     "qps": len(queries) / seconds})
    return rows


def build_mode(args) -> list[tuple]:
    spec = IndexSpec()
    started = time.perf_counter()
    base, queries = dataset(args.rows, args.dim, args.queries, args.clusters, args.noise, args.seed)
    n, dim = base.shape
    print(f"data: {n:,} x {dim} clustered unit vectors ({args.clusters:,} centres, noise {args.noise}), "
          f"{len(queries):,} queries, {time.perf_counter() - started:.1f} s; vectors {mib(base.nbytes)}", flush=True)
    nlist, m = factory.nlist_for(n), factory.pq_subquantizers(dim)
    variants = {"IVF-Flat": f"IVF{nlist},Flat", "IVF-PQ": f"IVF{nlist},PQ{m}np",
                "IVF-PQ+Refine": f"IVF{nlist},PQ{m}np,Refine(SQ8)"}
    variants = {name: variants[name] for name in args.variants.split(",")}
    started = time.perf_counter()
    kth = build.exact_top(base, queries, K)[:, K - 1]
    exact_qps = len(queries) / (time.perf_counter() - started)
    print(f"exact top-{K} of every query (IndexFlatIP): {len(queries) / exact_qps:.2f} s ({exact_qps:,.0f} QPS); "
          f"factory.choose gives {factory.choose(n, dim, spec)!r}; faiss {faiss.__version__}, "
          f"{faiss.omp_get_max_threads()} threads, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}", flush=True)

    results, checks = {}, []
    print(f"\nbuild (train on {factory.train_rows(n, variants[next(iter(variants))], spec):,} sampled rows + add in "
          f"batches of {build.ADD_BATCH:,}), {args.repeats} alternating runs each", flush=True)
    for position, (name, f) in enumerate(variants.items()):
        r = compare_builds(base, f, factory.train_rows(n, f, spec), args.seed, args.repeats, position)
        index = r["index"]
        fixed = {"k_factor": args.k_factor} if "k_factor" in factory.ladder(index, K) else {}
        r["sweep"] = sweep(index, base, queries, kth, fixed, args.max_nprobe)
        r["fixed"] = fixed
        try:
            gate = build.tune(index, base, queries, K, MIN_RECALL, what=name)
            r["tune"] = f"{', '.join(f'{k}={v}' for k, v in gate.params.items())} -> recall {gate.recall:.4f}"
        except Exception as exc:  # RecallGateFailed: the figure is the finding
            r["tune"] = f"fails: {str(exc).split(';')[0]}"
        r["index"] = None
        del index
        results[name] = r

    print(f"\n{'index':<14} {'factory':<28} {'direct s':>14} {'millrace s':>14} {'overhead':>9} "
          f"{'index size':>12} {'RSS growth':>12}")
    for name, r in results.items():
        d = "/".join(f"{x:.1f}" for x in r["direct_s"])
        o = "/".join(f"{x:.1f}" for x in r["millrace_s"])
        print(f"{name:<14} {r['factory']:<28} {d:>14} {o:>14} {r['overhead']:>+8.1%} "
              f"{mib(r['index_bytes']):>12} {mib(r['rss_growth']):>12}")
        checks.append((f"{name} build overhead (median millrace / median direct - 1)", f"{r['overhead']:+.1%}",
                       "<= +10%", r["overhead"] <= OVERHEAD_TARGET))

    names = list(results)
    print(f"\nrecall@{K} / QPS over nprobe ({len(queries):,} queries, one search call; exact search "
          f"{exact_qps:,.0f} QPS)" + "".join(f"; {n} at k_factor={r['fixed']['k_factor']}"
                                             for n, r in results.items() if r["fixed"]))
    print(f"{'nprobe':>7}" + "".join(f"{n + ' recall':>22}{'QPS':>9}" for n in names))
    probes = sorted({row["nprobe"] for r in results.values() for row in r["sweep"]})
    for p in probes:
        line = f"{p:>7}"
        for n in names:
            row = next((x for x in results[n]["sweep"] if x["nprobe"] == p), None)
            line += f"{row['recall']:>22.4f}{row['qps']:>9,.0f}" if row else f"{'':>31}"
        print(line)
    print(f"\nbuild.tune at recall@{K} >= {MIN_RECALL}:")
    for n, r in results.items():
        print(f"  {n:<14} {r['tune']}")
    return checks


# -- embed: batched vs row by row ----------------------------------------------------------------

def tiny_encoder(tmp: Path):
    """(bundle folder, manifest, catalogue table) of the tiny synthetic project's two_tower model."""
    import yaml

    sys.path.insert(0, str(ROOT))  # the tests package (its synthetic project and trainer)
    from tests.training.conftest import TINY_MODELS, Tiny, build_offline, synthetic

    project_dir, state = tmp / "project", tmp / "state"
    shutil.copytree(ROOT / "examples" / "movielens", project_dir, ignore=shutil.ignore_patterns(".millrace"))
    (project_dir / "models.yaml").write_text(yaml.safe_dump(TINY_MODELS))
    os.environ.update(MILLRACE_STATE_DIR=str(state), MILLRACE_USER="bench")
    ratings, movies = synthetic()
    tiny = Tiny(project_dir, ratings, movies)
    build_offline(tiny.project, tiny.features, ratings, movies)
    started = time.perf_counter()
    tiny.train("retrieval")
    print(f"tiny two_tower 'retrieval' trained in {time.perf_counter() - started:.1f} s", flush=True)
    return bundle_and_catalogue(tiny.project, tiny.features, tiny.models(), "retrieval", ratings, "timestamp", tmp)


def bundle_and_catalogue(project, features, models, name: str, examples, time_column: str, tmp: Path):
    from millrace.pipelines.index import _as_of, catalogue_table, resolve_version
    from millrace.training import registry
    from millrace.training.bundle import read_manifest

    client = registry.connect(project)
    version = resolve_version(client, project, name, None, None)
    folder = registry.download(client, registry.registered_name(project, name), version, str(tmp / "bundle"))
    spec = models.get(name)
    catalogue = catalogue_table(project, features, spec, examples, time_column, _as_of(project, examples, time_column))
    return folder, read_manifest(folder), catalogue, spec.item.key


def state_encoder(state: Path, model: str, tmp: Path):
    from millrace.contracts.project import load_project
    from millrace.features.spec import load_features
    from millrace.pipelines.train import examples_and_lineage
    from millrace.training.spec import load_models

    os.environ["MILLRACE_STATE_DIR"] = str(state)
    project = load_project(ROOT / "examples" / "movielens")
    features = load_features(project)
    models = load_models(project, features)
    examples, time_column, _ = examples_and_lineage(project, features, models, model)
    return bundle_and_catalogue(project, features, models, model, examples, time_column, tmp)


def scaled(catalogue, key: str, items: int, seed: int):
    """``items`` rows: the catalogue's rows resampled (features kept), under new keys 1..items."""
    import pyarrow as pa

    if catalogue.num_rows >= items:
        return catalogue.slice(0, items)
    rows = np.random.default_rng(seed).integers(0, catalogue.num_rows, items)
    table = catalogue.take(pa.array(rows))
    position = table.column_names.index(key)
    return table.set_column(position, key, pa.array(np.arange(1, items + 1), table.schema.field(key).type))


def embed_mode(args) -> list[tuple]:
    from millrace.indexing.embed import ITEM_ENCODER, Encoder

    tmp = Path(tempfile.mkdtemp(prefix="millrace-indexing-bench-"))
    try:
        if args.state:
            folder, manifest, catalogue, key = state_encoder(Path(args.state).resolve(), args.model, tmp)
        else:
            folder, manifest, catalogue, key = tiny_encoder(tmp)
        encoder = Encoder(folder, manifest, ITEM_ENCODER, args.variant)
        table = scaled(catalogue, key, args.items, args.seed)
        served = manifest.parts[ITEM_ENCODER].served
        print(f"{manifest.model} item encoder, variant {encoder.variant} (served: {served}), dim {encoder.dim}; catalogue "
              f"{catalogue.num_rows:,} items scaled to {table.num_rows:,}; columns {table.column_names}; "
              f"load {os.getloadavg()[0]:.2f}", flush=True)
        encoder.embed(table.slice(0, 256), args.batch)  # warm the session
        batched, rowwise = [], []
        row_table = table.slice(0, args.row_items)
        for turn in range(args.repeats):
            started = time.perf_counter()
            vectors = encoder.embed(table, args.batch)
            batched.append(table.num_rows / (time.perf_counter() - started))
            started, done = time.perf_counter(), 0
            one = []
            while done < row_table.num_rows and time.perf_counter() - started < args.row_seconds:
                chunk = row_table.slice(done, 256)
                one.append(encoder.embed_rows(chunk))
                done += chunk.num_rows
            rowwise.append(done / (time.perf_counter() - started))
            print(f"  turn {turn + 1}: batched {batched[-1]:,.0f} items/s ({table.num_rows:,} rows), row by row "
                  f"{rowwise[-1]:,.0f} items/s ({done:,} rows)", flush=True)
        # INT8 dynamic quantization scales activations by each call's range: a row's vector then
        # depends on the rows it is batched with, so the two paths differ by a quantization step.
        same = float(np.max(np.abs(np.concatenate(one) - vectors[:done])))
        scale = float(np.max(np.abs(vectors[:done])))
        b, r = float(np.median(batched)), float(np.median(rowwise))
        print(f"\n{'path':<38} {'items/s':>12}")
        print(f"{'Encoder.embed, batch ' + str(args.batch):<38} {b:>12,.0f}")
        print(f"{'Encoder.embed_rows (one call per row)':<38} {r:>12,.0f}")
        print(f"batched / row by row: {b / r:.1f}x; max |difference| of the vectors: {same:.2e} "
              f"(largest |component| {scale:.2e})")
        checks = [("embedding: batched / row by row items/s", f"{b / r:.1f}x", "> 1x", b > r)]
        if encoder.variant == "fp32":  # dynamic INT8 scales activations per call: its vectors depend on the batch
            checks.append(("embedding: same vectors both ways", f"{same:.1e}", "<= 1e-4", same <= 1e-4))
        else:
            print(f"({encoder.variant}: dynamic quantization scales activations by each call's range, so a row's "
                  f"vector depends on its batch; FP32 gives the same vectors both ways, `--variant fp32`)")
        return checks
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", choices=("build", "embed"), default="build")
    ap.add_argument("--rows", type=int, default=1_000_000, help="build: catalogue vectors")
    ap.add_argument("--dim", type=int, default=128, help="build: vector dimension")
    ap.add_argument("--queries", type=int, default=1000, help="build: query vectors")
    ap.add_argument("--clusters", type=int, default=1024, help="build: gaussian centres (fewer than the inverted "
                    "lists, so a cluster spans several lists and recall grows with nprobe)")
    ap.add_argument("--noise", type=float, default=1.0, help="build: noise std per dimension (centres are N(0, 1))")
    ap.add_argument("--max-nprobe", type=int, default=256, help="build: largest nprobe in the table")
    ap.add_argument("--variants", default="IVF-Flat,IVF-PQ,IVF-PQ+Refine",
                    help="build: comma list of IVF-Flat, IVF-PQ, IVF-PQ+Refine (the Refine(SQ8) wrapper)")
    ap.add_argument("--k-factor", type=int, default=8, help="build: Refine re-scoring depth in the nprobe table")
    ap.add_argument("--repeats", type=int, help="runs of each side, taking turns (medians); build: default 1, the "
                    "order alternating between indexes (1M rows on 2 cores: ~2-4 min per extra repeat); embed: "
                    "default 3")
    ap.add_argument("--items", type=int, default=200_000, help="embed: catalogue rows")
    ap.add_argument("--batch", type=int, default=4096, help="embed: rows per session call of the batched path")
    ap.add_argument("--row-items", type=int, default=20_000, help="embed: most rows timed row by row")
    ap.add_argument("--row-seconds", type=float, default=20.0, help="embed: most seconds timed row by row per turn")
    ap.add_argument("--variant", choices=("fp32", "int8"), help="embed: encoder variant (default: the served one)")
    ap.add_argument("--state", help="embed: a state folder whose nightly trained the example's models")
    ap.add_argument("--model", default="movie_retrieval", help="embed with --state: the two_tower model")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    args.repeats = args.repeats or (1 if args.mode == "build" else 3)
    started = time.perf_counter()
    checks = build_mode(args) if args.mode == "build" else embed_mode(args)
    print(f"\n{'check':<68} {'figure':>10} {'target':>10}  result")
    for check, figure, target, ok in checks:
        print(f"{check:<68} {figure:>10} {target:>10}  {'PASS' if ok else 'MISS'}")
    print(f"\n{args.mode} mode: {time.perf_counter() - started:.0f} s in all")


if __name__ == "__main__":
    main()
