"""Streaming ingestion: sustained events/s and freshness of ``millrace stream`` against a plain
redis-py consumer loop doing the same decode, rules and online write, side by side in one run.

    .venv/bin/python bench/streaming.py                            # ~5 min, one table
    .venv/bin/python bench/streaming.py --rates 1000,2000 --seconds 10 --json out.json

Workload: the bundled example's ratings (100,004 records with their planted bad ones), replayed in
landing order by ``millrace stream produce``'s own function into a Redis stream of the bench's own,
2% of them held back and sent last (too late for any window) and 1% cut short (not JSON). Both
consumers read the same entries, each from its own stream, in a process of its own; the producer
runs in this one.

- **Throughput**: the stream is filled first (``--backlog`` entries), then consumed. Events/s from
  the first entry read to the last one done: for millrace, online and committed to the lake (the
  closing commit included) and acknowledged; for the plain loop, written online and acknowledged.
- **Freshness**: the producer sends at each ``--rates`` value for ``--seconds`` while the consumer
  runs; freshness is entry produced -> its features online, p50 and p99 over every entry. The
  highest rate with millrace's p99 <= 2 s is stated (the freshness target).

millrace: ``millrace stream --source ratings`` as a user runs it (defaults: batches of 2,000
entries, the lake committed every 10 s in a thread of its own, expectations on, the three
streaming views recomputed with the batch transforms and written to the online store).

The plain loop (``--plain-loop``, below) is what a user writes next to Feast's push API: XREADGROUP
2,000 at a time, ``json.loads``, the ratings contract's rules written out by hand (required
fields, integer ids >= 1, a half-star rating, whole epoch seconds at most a day ahead), the same
three views' aggregates kept incrementally in dicts (counts, means, min/max, distinct movies, last
10, 30-day and 365-day windows, top genres from the catalogue), one HSET per touched entity in
one pipeline, XACK. No lake, no quarantine, no duplicate resolution, no expectations, no restart
safety: the reference for speed, not for what it does.
"""
from __future__ import annotations

import argparse
import bisect
import csv
import io
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "movielens"
MILLRACE = [sys.executable, "-m", "millrace.pipelines.cli"]
REDIS_URL = os.environ.get("MILLRACE_BENCH_REDIS", "redis://127.0.0.1:6379/0")
TARGET_P99 = 2.0
DAY = 86_400


# -- the plain loop ---------------------------------------------------------------------------

HALF_STARS = {x / 2 for x in range(1, 11)}


def _int(value) -> int | None:
    try:
        number = int(str(value))
    except (TypeError, ValueError):
        return None
    return number


def valid_rating(record) -> tuple[int, int, float, int] | None:
    """The ratings contract's row rules, by hand: (user, movie, rating, epoch seconds) or None."""
    if not isinstance(record, dict):
        return None
    user, movie, ts = _int(record.get("userId")), _int(record.get("movieId")), _int(record.get("timestamp"))
    try:
        rating = float(str(record.get("rating")))
    except (TypeError, ValueError):
        return None
    if user is None or movie is None or ts is None or user < 1 or movie < 1 or rating not in HALF_STARS:
        return None
    if ts > time.time() + DAY:
        return None
    return user, movie, rating, ts


class UserState:
    def __init__(self):
        self.events: list[tuple[int, float, int]] = []   # (ts, rating, movie), kept in time order
        self.movies: set[int] = set()
        self.sum = 0.0
        self.min, self.max = 5.0, 0.0

    def add(self, ts: int, rating: float, movie: int) -> None:
        bisect.insort(self.events, (ts, rating, movie))
        self.movies.add(movie)
        self.sum += rating
        self.min, self.max = min(self.min, rating), max(self.max, rating)

    def features(self, genres: dict[int, list[str]]) -> dict[str, str]:
        newest = self.events[-1][0]
        out = {"rating_count_all": len(self.events), "rating_mean_all": self.sum / len(self.events),
               "rating_min_all": self.min, "rating_max_all": self.max, "movies_rated_all": len(self.movies),
               "recent_movies": json.dumps([m for _, _, m in self.events[-10:]][::-1]),
               "last_rating": self.events[-1][1]}
        for days in (30, 365):
            window = self.events[bisect.bisect_right(self.events, (newest - days * DAY, 6.0, 0)):]
            out[f"rating_count_{days}d"] = len(window)
            out[f"rating_mean_{days}d"] = sum(r for _, r, _ in window) / len(window)
            if days == 365:
                top = Counter(g for _, _, m in window for g in genres.get(m, ()))
                out["top_genres_365d"] = json.dumps([g for g, _ in top.most_common(3)])
        return {k: str(v) for k, v in out.items()}


class MovieState:
    def __init__(self):
        self.times: list[int] = []
        self.sum = 0.0

    def add(self, ts: int, rating: float) -> None:
        bisect.insort(self.times, ts)
        self.sum += rating

    def features(self) -> dict[str, str]:
        n = len(self.times)
        recent = n - bisect.bisect_right(self.times, self.times[-1] - 30 * DAY)
        return {"popularity_30d": str(recent), "rating_count_all": str(n), "rating_mean_all": str(self.sum / n),
                "rating_sum_all": str(self.sum)}


def load_genres(movies_csv: Path) -> dict[int, list[str]]:
    genres = {}
    for row in csv.DictReader(io.StringIO(movies_csv.read_text(errors="replace"))):
        movie = _int(row.get("movieId"))
        if movie is not None and row.get("genres"):
            genres[movie] = row["genres"].split("|")
    return genres


def plain_loop(stream: str, group: str, until_idle: float, movies_csv: Path, out_prefix: str) -> dict:
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    client.xgroup_create(stream, group, id="0", mkstream=True)
    genres = load_genres(movies_csv)
    client.xgroup_createconsumer(stream, group, "plain")  # ready (what the bench waits for)
    users: dict[int, UserState] = defaultdict(UserState)
    movies: dict[int, MovieState] = defaultdict(MovieState)
    entries = good = bad = 0
    freshness: list[float] = []
    first = last_done = last_entry = None
    started = time.monotonic()
    while True:
        reply = client.xreadgroup(group, "plain", {stream: ">"}, count=2000, block=100)
        rows = reply[0][1] if reply else []
        now = time.monotonic()
        if not rows:
            if last_entry is not None and now - last_entry >= until_idle:
                break
            if last_entry is None and now - started > 300:
                break  # nothing ever came
            continue
        first = first or now
        last_entry = now
        touched_users, touched_movies = set(), set()
        for _, fields in rows:
            try:
                rating = valid_rating(json.loads(fields[b"record"]))
            except ValueError:
                rating = None
            if rating is None:
                bad += 1
                continue
            user, movie, stars, ts = rating
            users[user].add(ts, stars, movie)
            movies[movie].add(ts, stars)
            touched_users.add(user)
            touched_movies.add(movie)
            good += 1
        with client.pipeline(transaction=False) as pipe:
            for user in touched_users:
                pipe.hset(f"{out_prefix}:user:{user}", mapping=users[user].features(genres))
            for movie in touched_movies:
                pipe.hset(f"{out_prefix}:movie:{movie}", mapping=movies[movie].features())
            pipe.xack(stream, group, *[entry_id for entry_id, _ in rows])
            pipe.execute()
        done = time.time()
        last_done = time.monotonic()
        entries += len(rows)
        freshness.extend(done - float(fields[b"produced_at"]) for _, fields in rows)
    return {"entries": entries, "good": good, "quarantined": bad, "busy_seconds": (last_done or 0) - (first or 0),
            "freshness_p50_s": _pct(freshness, 50), "freshness_p99_s": _pct(freshness, 99)}


def _pct(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


# -- the bench --------------------------------------------------------------------------------

class Setup:
    """A copy of the example pointed at the bench's Redis, a producer state (the example landed)
    and a consumer state template (movies committed, no ratings: the stream is their only way in)."""

    def __init__(self, root: Path):
        self.root = root
        self.project = root / "project"
        shutil.copytree(EXAMPLE, self.project, ignore=shutil.ignore_patterns(".millrace", ".airflow"))
        self.producer, self.consumer = root / "producer", root / "consumer"
        from millrace.contracts.project import load_project
        from millrace.pipelines.example import land
        from millrace.pipelines.ingest import ingest

        for state in (self.producer, self.consumer):
            os.environ["MILLRACE_STATE_DIR"] = str(state)
            land(load_project(self.project))
        shutil.rmtree(self.consumer / "landing" / "ratings")
        os.environ["MILLRACE_STATE_DIR"] = str(self.consumer)
        ingest(load_project(self.project), "movies", validate=False)
        self.movies_csv = next((self.producer / "landing" / "movies").rglob("*.csv"))

    def point_at(self, prefix: str) -> None:
        config = yaml.safe_load((self.project / "millrace.yaml").read_text())
        config["streaming"] = {"redis": REDIS_URL, "prefix": prefix}
        (self.project / "millrace.yaml").write_text(yaml.safe_dump(config, sort_keys=False))

    def env(self, state: Path) -> dict:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MILLRACE_")}
        env["MILLRACE_STATE_DIR"] = str(state)
        return env


def produce(setup: Setup, prefix: str, rate: float, limit: int) -> dict:
    from millrace.contracts.project import load_project
    from millrace.pipelines.stream_produce import produce as send

    os.environ["MILLRACE_STATE_DIR"] = str(setup.producer)
    report = send(load_project(setup.project), "ratings", rate, late_share=0.02, bad_share=0.01, limit=limit)
    return {"entries": report.entries, "rate": report.rate}


def start_consumer(setup: Setup, system: str, prefix: str, until_idle: float) -> subprocess.Popen:
    setup.point_at(prefix)
    stream, group = f"{prefix}:ratings", "millrace"
    if system == "millrace":
        state = setup.root / f"state-{prefix}"
        shutil.copytree(setup.consumer, state)
        cmd = MILLRACE + ["--project", str(setup.project), "stream", "--source", "ratings", "--until-idle",
                          str(until_idle), "--json"]
        env = setup.env(state)
    else:
        cmd = [sys.executable, __file__, "--plain-loop", stream, "--until-idle", str(until_idle),
               "--movies", str(setup.movies_csv), "--out-prefix", f"{prefix}:online"]
        env = setup.env(setup.root)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    _wait_reading(stream, group, proc)
    return proc


def _wait_reading(stream: str, group: str, proc: subprocess.Popen) -> None:
    """Until the consumer has made its first read (it shows in the group's consumers)."""
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"consumer exited {proc.returncode}:\n{proc.stderr.read()[-3000:]}")
        try:
            if client.xinfo_consumers(stream, group):
                return
        except redis.ResponseError:
            pass  # no group yet
        time.sleep(0.05)
    sys.exit("consumer never started reading")


def finish(proc: subprocess.Popen) -> dict:
    out, err = proc.communicate(timeout=900)
    if proc.returncode != 0:
        sys.exit(f"consumer exited {proc.returncode}:\n{err[-3000:]}")
    return json.loads(out)


def drop(prefix: str) -> None:
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    for key in client.scan_iter(match=f"{prefix}:*"):
        client.delete(key)


def throughput(setup: Setup, system: str, backlog: int) -> dict:
    prefix = f"mrbench_{secrets.token_hex(4)}"
    try:
        setup.point_at(prefix)
        sent = produce(setup, prefix, 1e9, backlog)
        report = finish(start_consumer(setup, system, prefix, until_idle=2))
    finally:
        drop(prefix)
    return {"system": system, "entries": report["entries"], "sent": sent["entries"],
            "busy_seconds": report["busy_seconds"], "events_per_s": report["entries"] / report["busy_seconds"]}


def freshness(setup: Setup, system: str, rate: float, seconds: float) -> dict:
    prefix = f"mrbench_{secrets.token_hex(4)}"
    try:
        # idle long enough for the producer to read the example before its first entry
        proc = start_consumer(setup, system, prefix, until_idle=10)
        sent = produce(setup, prefix, rate, int(rate * seconds))
        report = finish(proc)
    finally:
        drop(prefix)
    if not report["entries"]:
        sys.exit(f"{system} at {rate:g}/s read no entries")
    return {"system": system, "rate": rate, "sent_rate": sent["rate"], "entries": report["entries"],
            "p50": report["freshness_p50_s"], "p99": report["freshness_p99_s"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rates", default="1000,2000,3000,4000,6000", help="Entries/s of the freshness runs.")
    parser.add_argument("--seconds", type=float, default=20.0, help="Length of each freshness run.")
    parser.add_argument("--backlog", type=int, default=100_004,
                        help="Entries of the throughput run (default: all of the example's).")
    parser.add_argument("--json", type=Path, help="Write every measurement here.")
    parser.add_argument("--plain-loop", metavar="STREAM", help=argparse.SUPPRESS)
    parser.add_argument("--until-idle", type=float, default=2.0, help=argparse.SUPPRESS)
    parser.add_argument("--movies", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out-prefix", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.plain_loop:
        print(json.dumps(plain_loop(args.plain_loop, "millrace", args.until_idle, args.movies, args.out_prefix)))
        return

    rates = [float(r) for r in args.rates.split(",")]
    with tempfile.TemporaryDirectory(prefix="millrace-bench-stream-") as tmp:
        setup = Setup(Path(tmp))
        runs = {"throughput": [throughput(setup, s, args.backlog) for s in ("millrace", "plain")],
                "freshness": [freshness(setup, s, r, args.seconds) for r in rates for s in ("millrace", "plain")]}
    mill, plain = runs["throughput"]
    print(f"throughput, {args.backlog:,} entries waiting: millrace {mill['events_per_s']:,.0f} events/s "
          f"({mill['busy_seconds']:.1f} s), plain loop {plain['events_per_s']:,.0f} events/s "
          f"({plain['busy_seconds']:.1f} s): {mill['events_per_s'] / plain['events_per_s']:.2f}x (target >= 0.5x)")
    print(f"\n{'rate/s':>7} {'sent/s':>7}  {'millrace p50':>12} {'p99':>6}   {'plain p50':>9} {'p99':>6}")
    met = []
    for i in range(0, len(runs["freshness"]), 2):
        m, p = runs["freshness"][i], runs["freshness"][i + 1]
        print(f"{m['rate']:>7,.0f} {m['sent_rate']:>7,.0f}  {m['p50']:>11.3f}s {m['p99']:>5.2f}s   "
              f"{p['p50']:>8.3f}s {p['p99']:>5.3f}s")
        if m["p99"] <= TARGET_P99:
            met.append(m["rate"])
    print(f"\nhighest rate with millrace's freshness p99 <= {TARGET_P99:g} s: "
          f"{f'{max(met):,.0f}/s' if met else 'none of those tried'}")
    if args.json:
        args.json.write_text(json.dumps(runs, indent=2))


if __name__ == "__main__":
    main()
