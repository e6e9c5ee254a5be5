"""The composite ``recommender`` model: a user id in, the top k items and their scores out.

    online features (user) -> user encoder -> FAISS search (over-fetch) -> drop seen items
      -> online features (candidates) + ranking model, when it fits the deadline -> top k

Every input of a bundle part names where its value comes from (``InputInfo.source``: a feature
'view:feature', an entity key 'key:<column>', or 'request:<column>', which a recommender request
does not carry: null, as training saw for a missing value). Features are read with
``features.online`` (the reader materialization's encoding was tested against) and fed through
``training.feeds`` (the encoding training used), so a served answer is the one the models were
evaluated on.

Nothing a well-formed request asks for is an error: each degraded path answers and is named in the
response parameters (``fallback``) and counted (``millrace_serving_fallbacks_total``):

    unknown_user       the online store has no feature row of the user -> the popularity list
    online_store_down  the online store cannot be read -> the popularity list (before retrieval)
                       or retrieval order (when only the candidates' features could not be read)
    ranker_late        ranking would not fit the deadline (or the ranking budget) -> retrieval order
    ranker_overloaded  the ranking model's queue is full -> retrieval order
    ranker_failed      the ranking model raised -> retrieval order (logged with its traceback)
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from millrace.features.errors import NothingBuilt, StoreUnavailable
from millrace.serving.batching import Batcher
from millrace.serving.errors import DeadlineExceeded, InvalidInput, Overloaded, ReleaseRefused
from millrace.serving.tensors import TensorSpec
from millrace.training.feeds import raw_inputs

NAME = "recommender"
STAGES = ("features", "encoder", "search", "ranking")
UNKNOWN_USER, STORE_DOWN = "unknown_user", "online_store_down"
RANKER_LATE, RANKER_OVERLOADED, RANKER_FAILED = "ranker_late", "ranker_overloaded", "ranker_failed"
SAFETY_S = 0.001  # left for encoding the answer when the ranker's budget is the client's deadline
log = logging.getLogger("millrace.serving")

_KEY_DATATYPES = {pa.int64(): "INT64", pa.int32(): "INT64", pa.string(): "BYTES"}


@dataclass(frozen=True)
class Answer:
    item_ids: np.ndarray
    scores: np.ndarray
    fallback: str            # "" when every stage answered
    ranked: bool
    stages: dict[str, float]  # seconds per stage of the pass that answered it (shared by its batch)


@dataclass(frozen=True)
class Part:
    """A served ONNX part and the inputs its manifest describes (with their sources)."""

    model: object            # repository.ServedModel (its batcher runs it)
    inputs: tuple            # training.bundle.InputInfo


@dataclass(frozen=True)
class Popularity:
    item_ids: np.ndarray
    scores: np.ndarray
    source: str              # 'view:feature' it was ordered by


class Recommender:
    platform = "ensemble"  # ModelMetadata: a composite of the release's models, as Triton calls one

    def __init__(self, *, version: str, user: Part, index, ranker: Part | None, reader, features, user_key: str,
                 item_key: str, seen: str | None, popularity: Popularity, config, metrics=None, batching=None):
        self.name, self.version = NAME, version
        self.user, self.index, self.ranker = user, index, ranker
        self.reader, self.features = reader, features
        self.user_key, self.item_key, self.seen = user_key, item_key, seen
        self.popularity, self.config, self.metrics = popularity, config, metrics
        self.item_type = index.ids.type
        self.user_type = next(features.key_types(v)[user_key] for v in features.views
                              if features.join_keys(v) == [user_key])
        self.inputs = (TensorSpec("user_id", _KEY_DATATYPES.get(self.user_type, "BYTES"), (1,)),
                       TensorSpec("k", "INT32", (1,), optional=True))
        self.outputs = (TensorSpec("item_ids", _KEY_DATATYPES.get(self.item_type, "BYTES"), (-1,)),
                        TensorSpec("scores", "FP32", (-1,)))
        self._rank_seconds = 0.0  # a moving average: whether the ranker fits a budget is judged by it
        self._views = _views_of(user.inputs, ranker.inputs if ranker else ())  # every feature of either model
        if seen:
            view, feature = seen.split(":", 1)
            self._views.setdefault(view, set()).add(feature)
        self._user_views = {v: sorted(f) for v, f in self._views.items() if features.join_keys(v) == [user_key]}
        self._item_views = {v: sorted(f) for v, f in self._views.items() if features.join_keys(v) == [item_key]}
        keys = index.ids.to_numpy(zero_copy_only=False)
        self._item_keys = keys.astype(np.int64) if pa.types.is_integer(index.ids.type) else keys.astype(object)
        if ranker is not None:
            item_side = {f"key:{item_key}"} | {f"{v}:{f}" for v, fs in self._item_views.items() for f in fs}
            self._item_side = tuple(i for i in ranker.inputs if i.source in item_side)
            self._user_side = tuple(i for i in ranker.inputs if i.source not in item_side)
            self._items = ItemCache(config.item_cache_seconds)
            self._items.current(self)  # read now (warm), not on the first request
        # concurrent requests share one pass of the path (one read per view, one run of each model)
        self._batcher = None if batching is None else Batcher(
            NAME, self._run, batching.max_batch_size, batching.max_queue_delay_ms, batching.max_queue, metrics,
            batching.parallel_runs)

    # -- the protocol model interface -----------------------------------------------------------

    def infer(self, feed: dict[str, np.ndarray], wanted: list[str] | None = None,
              deadline: float | None = None) -> tuple[dict[str, np.ndarray], dict[str, str]]:
        names = [o.name for o in self.outputs]
        unknown = [w for w in (wanted or []) if w not in names]
        if unknown:
            raise InvalidInput(f"model '{self.name}' has no output {unknown[0]!r} (it has {names})")
        k = int(feed["k"].reshape(-1)[0]) if "k" in feed else self.config.k
        if not 1 <= k <= self.config.max_k:
            raise InvalidInput(f"input 'k': {k}, the recommender answers 1 to {self.config.max_k} items "
                               f"(serving.recommender.max_k)")
        request = {"user_id": feed["user_id"].reshape(1), "k": np.array([k], np.int64),
                   "deadline": np.array([np.inf if deadline is None else deadline])}
        out = self._batcher.infer(request, deadline) if self._batcher is not None else self._run(request)
        count = int(out["count"][0])
        outputs = {"item_ids": out["item_ids"][0][:count], "scores": out["scores"][0][:count]}
        parameters = {"ranked": "true" if out["ranked"][0] else "false"}
        if out["fallback"][0]:
            parameters["fallback"] = str(out["fallback"][0])
        return {n: outputs[n] for n in (wanted or names)}, parameters

    def _run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """A batch of requests (the batcher stacked them) through one pass of the path."""
        deadline = float(feed["deadline"].min())
        users = [u.item() if hasattr(u, "item") else u for u in feed["user_id"]]
        if self.user_type == pa.string():
            users = [u.decode() if isinstance(u, bytes) else str(u) for u in users]
        answers = self.recommend_many(users, [int(k) for k in feed["k"]], None if np.isinf(deadline) else deadline)
        width = max(len(a.item_ids) for a in answers)
        ids = np.zeros((len(answers), width), self._answer_ids(np.zeros(0, np.int64)).dtype)
        scores = np.zeros((len(answers), width), np.float32)
        for row, answer in enumerate(answers):
            ids[row, :len(answer.item_ids)], scores[row, :len(answer.scores)] = answer.item_ids, answer.scores
        return {"item_ids": ids, "scores": scores, "count": np.array([len(a.item_ids) for a in answers]),
                "ranked": np.array([a.ranked for a in answers]),
                "fallback": np.array([a.fallback for a in answers], dtype=object)}

    def close(self) -> None:
        if self._batcher is not None:
            self._batcher.close()

    def warm(self) -> None:
        """Run each stage once, uncounted: the first run of a session or a store connection pays its set-up."""
        metrics, self.metrics = self.metrics, None
        try:
            user = 0 if pa.types.is_integer(self.user_type) else ""
            columns, _ = self._read_users([user])
            table = self._table(self.user.inputs, columns, {self.user_key: pa.array([user], self.user_type)}, 1)
            vector = self.user.model.run_batched(raw_inputs(table, self.user.inputs))
            self.index.index.search(np.ascontiguousarray(vector, dtype=np.float32), 1)
            if self.ranker is not None:
                rows = np.arange(min(2, self.index.index.ntotal))
                self._rank([user], columns, [rows], time.monotonic() + 60)
        except (StoreUnavailable, NothingBuilt) as exc:  # serving starts: requests take the fallback meanwhile
            log.warning("recommender warm-up: %s", exc)
        finally:
            self.metrics = metrics
            self._rank_seconds = 0.0

    # -- the path -------------------------------------------------------------------------------

    def recommend(self, user_id, k: int, deadline: float | None = None) -> Answer:
        return self.recommend_many([user_id], [k], deadline)[0]

    def recommend_many(self, users: list, ks: list[int], deadline: float | None = None) -> list[Answer]:
        """One answer per user: each stage runs once for all of them (one read per feature view,
        one encoder run, one FAISS search, one ranker run), so concurrent requests share its cost."""
        started = time.monotonic()
        stages = dict.fromkeys(STAGES, 0.0)
        try:
            columns, known = self._read_users(users)
        except (StoreUnavailable, NothingBuilt) as exc:  # down, or never materialized
            log.warning("recommender: %s", exc)
            return self._done([self._popular(k, STORE_DOWN) for k in ks], stages)
        stages["features"] = time.monotonic() - started
        answers: list[Answer | None] = [None if ok else self._popular(k, UNKNOWN_USER) for ok, k in zip(known, ks)]
        live = [i for i, ok in enumerate(known) if ok]
        if not live:
            return self._done(answers, stages)
        if len(live) < len(users):
            take = pa.array(live)
            columns = {ref: column.take(take) for ref, column in columns.items()}
        users, ks = [users[i] for i in live], [ks[i] for i in live]

        at = time.monotonic()
        table = self._table(self.user.inputs, columns, {self.user_key: pa.array(users, self.user_type)}, len(users))
        vectors = self.user.model.run_batched(raw_inputs(table, self.user.inputs), deadline)
        stages["encoder"] = time.monotonic() - at

        at = time.monotonic()
        seen = self._seen(columns, len(users))
        wanted = min(self.index.index.ntotal, max(k * self.config.over_fetch + len(s) for k, s in zip(ks, seen)))
        all_scores, all_rows = self.index.index.search(np.ascontiguousarray(vectors, dtype=np.float32), wanted)
        candidates, retrieval = [], []
        for row, user_seen in enumerate(seen):
            rows, scores = all_rows[row], all_scores[row].astype(np.float32)
            keep = rows >= 0
            if user_seen:
                keep &= ~np.isin(self._item_keys[np.maximum(rows, 0)],
                                 np.array(sorted(user_seen), dtype=self._item_keys.dtype))
            candidates.append(rows[keep])
            retrieval.append(scores[keep])
        stages["search"] = time.monotonic() - at

        fallback, ranked = "", None
        if self.ranker is not None and sum(len(c) for c in candidates) > len(candidates):
            at = time.monotonic()
            fallback, ranked = self._rank(users, columns, candidates, deadline)
            stages["ranking"] = time.monotonic() - at
        for i, (rows, k) in enumerate(zip(candidates, ks)):
            scores = ranked[i] if ranked is not None else retrieval[i]
            order = np.argsort(-scores, kind="stable")[:k]
            answers[live[i]] = Answer(self._answer_ids(rows[order]), scores[order], fallback, ranked is not None,
                                      stages)
        return self._done(answers, stages)

    def _rank(self, users: list, user_columns, candidates: list[np.ndarray],
              deadline: float | None) -> tuple[str, list[np.ndarray] | None]:
        """The ranker's scores of each user's candidates (index rows), or the fallback that stopped it."""
        now = time.monotonic()
        budget_end = deadline - SAFETY_S if deadline is not None else now + self.config.ranking_budget_ms / 1000
        if self._rank_seconds > budget_end - now:
            self._rank_seconds *= 0.9  # forget a slow spell: the ranker is tried again soon
            return RANKER_LATE, None
        items = self._items.current(self)
        if items is None:
            return STORE_DOWN, None
        counts = np.array([len(c) for c in candidates])
        rows = np.concatenate(candidates)
        try:
            at = time.monotonic()
            table = self._table(self._user_side, user_columns, {self.user_key: pa.array(users, self.user_type)},
                                len(users))
            feed = {name: np.repeat(array, counts, axis=0) for name, array in raw_inputs(table, self._user_side).items()}
            feed.update({name: array[rows] for name, array in items.items()})
            out = self.ranker.model.run_batched(feed, budget_end)
        except DeadlineExceeded:
            self._rank_seconds = max(self._rank_seconds, budget_end - at)
            return RANKER_LATE, None
        except Overloaded:
            return RANKER_OVERLOADED, None
        except Exception:
            log.exception("recommender: the ranking model failed; answering in retrieval order")
            return RANKER_FAILED, None
        took = time.monotonic() - at
        self._rank_seconds = took if not self._rank_seconds else 0.8 * self._rank_seconds + 0.2 * took
        # one score per row, or (for two class probabilities) the positive class's
        scores = np.asarray(out, dtype=np.float32).reshape(len(rows), -1)[:, -1]
        return "", np.split(scores, np.cumsum(counts)[:-1])

    def _answer_ids(self, rows: np.ndarray) -> np.ndarray:
        return self._item_keys[rows] if self._item_keys.dtype != object else \
            np.array([str(v).encode() for v in self._item_keys[rows]], dtype=object)

    def read_items(self) -> dict[str, np.ndarray]:
        """The ranker's item-side inputs for every catalogue item, aligned with the index rows (read
        from the online store and encoded once: a request then only gathers its candidates' rows)."""
        columns = self._read(self._item_views, self.index.ids)
        table = self._table(self._item_side, columns, {self.item_key: self.index.ids}, len(self.index.ids))
        return raw_inputs(table, self._item_side)

    def _popular(self, k: int, reason: str) -> Answer:
        return Answer(self.popularity.item_ids[:k], self.popularity.scores[:k], reason, False, {})

    def _done(self, answers: list[Answer], stages: dict[str, float]) -> list[Answer]:
        if self.metrics is not None:
            for stage, seconds in stages.items():
                if seconds:
                    self.metrics.stage(stage, seconds)
            for answer in answers:
                if answer.fallback:
                    self.metrics.fallback(answer.fallback)
        return answers

    # -- features ------------------------------------------------------------------------------

    def _read_users(self, users: list) -> tuple[dict[str, pa.Array], list[bool]]:
        """The users' features by 'view:feature', and per user whether the store holds any row of them."""
        columns, known = {}, [False] * len(users)
        for view, names in self._user_views.items():
            table, status = self.reader.read_with_status(view, users, names)
            known = [k or s == "found" for k, s in zip(known, status)]
            columns.update({f"{view}:{name}": table.column(name).combine_chunks() for name in names})
        return columns, known

    def _read(self, views: dict[str, list[str]], keys: pa.Array) -> dict[str, pa.Array]:
        columns = {}
        for view, names in views.items():
            table = self.reader.read(view, keys, names)
            columns.update({f"{view}:{name}": table.column(name).combine_chunks() for name in names})
        return columns

    def _table(self, inputs, columns: dict[str, pa.Array], keys: dict[str, pa.Array], rows: int) -> pa.Table:
        out = {}
        for info in inputs:
            kind, _, ref = info.source.partition(":")
            if kind == "key" and ref in keys:
                out[info.name] = keys[ref]
            elif info.source in columns:
                out[info.name] = columns[info.source]
            else:  # a request-time input: the recommender's request does not carry it
                out[info.name] = pa.nulls(rows)
        return pa.table(out)

    def _seen(self, columns: dict[str, pa.Array], rows: int) -> list[set]:
        if not self.seen or self.seen not in columns:
            return [set() for _ in range(rows)]
        return [set(v) if isinstance(v, list) else set() for v in columns[self.seen].to_pylist()]


class ItemCache:
    """The catalogue's item-side ranker inputs, re-read in the background every ``seconds`` (item
    features change when materialization runs, not per request). None while the online store
    could not be read: the ranker then waits (``online_store_down``, retrieval order)."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self._arrays: dict[str, np.ndarray] | None = None
        self._read_at = float("-inf")
        self._lock = threading.Lock()
        self._refreshing = False

    def current(self, recommender: "Recommender") -> dict[str, np.ndarray] | None:
        if self._arrays is None and self._read_at == float("-inf"):
            self._refresh(recommender)  # the first read, at load: in the caller's thread
        elif time.monotonic() - self._read_at > self.seconds:
            with self._lock:
                start, self._refreshing = not self._refreshing, True
            if start:
                threading.Thread(target=self._refresh, args=(recommender,), daemon=True).start()
        return self._arrays

    def _refresh(self, recommender: "Recommender") -> None:
        try:
            self._arrays = recommender.read_items()
        except (StoreUnavailable, NothingBuilt) as exc:
            log.warning("recommender: item features not refreshed: %s", exc)
        finally:
            self._read_at = time.monotonic()
            self._refreshing = False


def build(*, version: str, user: Part, item_inputs, index, ranker: Part | None, reader, features, config,
          offline: str, metrics=None, batching=None) -> Recommender:
    """The recommender over a release's retrieval part, index and (optional) ranking part; the
    popularity list is read once here, from the offline table (the online store cannot list items)."""
    import faiss

    # a request's search is a few queries: OpenMP's threads would only spin against the handlers'
    faiss.omp_set_num_threads(1)
    item_key = _single_key(features, item_inputs, "item")
    user_key = _single_key(features, user.inputs, "user")
    seen = config.seen or _default_seen(user.inputs, index.ids.type)
    popularity = load_popularity(features, offline, config.popularity or _default_popularity(features, item_key),
                                 config.max_k)
    return Recommender(version=version, user=user, index=index, ranker=ranker, reader=reader, features=features,
                       user_key=user_key, item_key=item_key, seen=seen, popularity=popularity, config=config,
                       metrics=metrics, batching=batching)


def load_popularity(features, offline: str, source: str, limit: int) -> Popularity:
    """The ``limit`` items with the highest newest value of ``source`` ('view:feature')."""
    from millrace.features.errors import FeatureError
    from millrace.features.offline import read_view

    view, _, feature = source.partition(":")
    try:
        key = features.join_key(view)
        table = read_view(offline, view).select([key, "event_timestamp", feature])
    except (FeatureError, KeyError) as exc:
        raise ReleaseRefused(f"recommender: cannot read the popularity feature '{source}' ({exc}) "
                             f"(fix: build the feature views, or set serving.recommender.popularity)") from None
    table = table.sort_by([(key, "ascending"), ("event_timestamp", "ascending")])
    keys = table.column(key).combine_chunks()
    last = np.ones(len(keys), bool)  # the newest row of each key: the last of its run
    if len(keys) > 1:
        last[:-1] = pc.not_equal(keys.slice(1), keys.slice(0, len(keys) - 1)).to_numpy(zero_copy_only=False)
    newest = table.filter(pa.array(last))
    values = pc.fill_null(pc.cast(newest.column(feature), pa.float64()), 0).to_numpy()
    order = np.argsort(-values, kind="stable")[:limit]
    return Popularity(_numpy(newest.column(key).combine_chunks().take(pa.array(order))),
                      values[order].astype(np.float32), source)


def _numpy(array: pa.Array) -> np.ndarray:
    if pa.types.is_integer(array.type):
        return array.to_numpy(zero_copy_only=False).astype(np.int64)
    return np.array([str(v).encode() for v in array.to_pylist()], dtype=object)


def _views_of(*input_groups) -> dict[str, set[str]]:
    """The features the inputs read, by view (over every group: a view two models read is read once)."""
    views: dict[str, set[str]] = {}
    for info in (i for group in input_groups for i in group):
        kind, _, feature = info.source.partition(":")
        if info.source and kind not in ("key", "request"):
            views.setdefault(kind, set()).add(feature)
    return views


def _single_key(features, inputs, role: str) -> str:
    """The one key column of the entity an encoder's features are about."""
    keys = {tuple(features.join_keys(v)) for v in _views_of(inputs)}
    keys |= {(i.source[4:],) for i in inputs if i.source.startswith("key:")}
    if len(keys) != 1 or len(next(iter(keys))) != 1:
        raise ReleaseRefused(f"recommender: the {role} encoder's features are keyed on {sorted(keys)}; the "
                             f"recommender needs one {role} key of one column")
    return next(iter(keys))[0]


def _default_seen(inputs, item_type: pa.DataType) -> str | None:
    dtype = "int64" if pa.types.is_integer(item_type) else "string"
    for info in inputs:
        if info.kind == "multi" and info.dtype == dtype and info.source.count(":") == 1 \
                and not info.source.startswith(("key:", "request:")):
            return info.source
    return None


def _default_popularity(features, item_key: str) -> str:
    counts = [(a.window != "all", f"{name}:{a.name}") for name, view in features.views.items()
              if features.join_keys(name) == [item_key] for a in view.aggregations if a.function == "count"]
    if counts:  # an all-time count first: a trailing window's count is noisy at its edge
        return sorted(counts, key=lambda c: c[0])[0][1]
    raise ReleaseRefused(f"recommender: no count feature of an item view to order the popularity list by "
                         f"(fix: set serving.recommender.popularity to 'view:feature')")
