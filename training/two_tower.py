"""two_tower retrieval: a user tower and an item tower trained with in-batch softmax negatives.

Positives are the training examples whose label holds. Each batch scores every user against every
item of the batch; the other items are the negatives. Popular items show up as negatives more
often, so each logit is corrected by the log of its item's share of positives (sampled-softmax
"logQ" correction): the towers then learn p(item | user), popularity included, rather than
learning to avoid popular items. Other rows of the same item are masked out as negatives.

Evaluation on the time-split holdout: one query per user and holdout day with positives, asked
with the user's features as of the start of that day; candidates are every known item with its
features as of the split time; items the user rated before that day are excluded; relevant = that
day's positives. The popularity baseline ranks the same candidates by their number of training
positives, with the same exclusions.
"""
from __future__ import annotations

from dataclasses import replace
from itertools import chain

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from millrace.contracts.project import Project
from millrace.features.offline import read_view
from millrace.features.spec import Features
from millrace.features.training_set import resolve_refs, training_set
from millrace.training import loop, metrics
from millrace.training.data import Split
from millrace.training.encode import UNSEEN, encode, fit_inputs, key_input
from millrace.training.errors import EmptyTrainingSet
from millrace.training.families import Fitted, Part, Runner, columns_of, spread, with_sources
from millrace.training.spec import ModelSpec

K = 10


def fit(project: Project, features: Features, spec: ModelSpec, split: Split, time: str, name: str,
        progress: loop.Progress | None = None) -> Fitted:
    import torch

    from millrace.training.nets import FeatureMLP, device, tensors

    hp, user, item = spec.hyperparameters, spec.user, spec.item
    user_refs = resolve_refs(features, user.features) if user.features else {}
    item_refs = resolve_refs(features, item.features) if item.features else {}
    user_features = user.features + ([user.history] if user.history else [])
    positives = split.train.filter(split.train.column("label")).select([user.key, item.key, time])
    table = _with_features(project, features, positives, user_features + item.features, time)

    item_specs = [key_input(table, item.key, hp.max_vocabulary)] + fit_inputs(table, columns_of(item_refs),
                                                                              hp.max_vocabulary)
    user_specs = [key_input(table, user.key, hp.max_vocabulary)] + fit_inputs(table, columns_of(user_refs),
                                                                              hp.max_vocabulary)
    if user.history:  # same vocabulary as the item ids, so both towers share one embedding table
        user_specs.append(replace(item_specs[0], name=user.history.replace(":", "__"), kind="multi"))
    item_specs = with_sources(item_specs, item_refs, keys=[item.key])
    user_specs = with_sources(user_specs, resolve_refs(features, user_features) if user_features else {},
                              keys=[user.key])
    users, items = encode(table, user_specs), encode(table, item_specs)
    _, item_ids, item_counts = np.unique(items.raw[item.key], return_inverse=True, return_counts=True)
    log_q = np.log(item_counts[item_ids] / len(item_ids)).astype(np.float32)

    loop.seed_everything(hp.seed)
    dev = device()
    item_net = FeatureMLP(item_specs, hp.hidden, hp.embedding_dim, hp.embedding_dim).to(dev)
    shared = {user_specs[-1].name: item_net.embeddings[0]} if user.history else None
    user_net = FeatureMLP(user_specs, hp.hidden, hp.embedding_dim, hp.embedding_dim, shared=shared).to(dev)
    u_all, i_all = tensors(users.indexed, dev), tensors(items.indexed, dev)
    ids, lq = torch.from_numpy(item_ids).to(dev), torch.from_numpy(log_q).to(dev)

    def loss_of(rows: np.ndarray):
        r = torch.from_numpy(rows).to(dev)
        u = user_net(_drop_ids(u_all[0][r], hp.id_dropout), *[t[r] for t in u_all[1:]])
        v = item_net(_drop_ids(i_all[0][r], hp.id_dropout), *[t[r] for t in i_all[1:]])
        logits = (u @ v.T) / hp.temperature - lq[r].unsqueeze(0)
        same = ids[r].unsqueeze(0) == ids[r].unsqueeze(1)
        same.fill_diagonal_(False)
        logits = logits.masked_fill(same, float("-inf"))
        return torch.nn.functional.cross_entropy(logits, torch.arange(len(rows), device=dev))

    if positives.num_rows < 2:
        raise EmptyTrainingSet(f"model '{name}': {positives.num_rows} training positive(s); in-batch negatives "
                               f"need at least 2 (fix: land more history or loosen the label)")
    user_net.train(), item_net.train()
    losses = loop.fit(chain(user_net.parameters(), item_net.parameters()), positives.num_rows, loss_of, hp,
                      progress, drop_last=True)
    user_net.eval(), item_net.eval()

    holdout = _Holdout(project, features, spec, split, time, positives, name)
    queries = encode(holdout.query_table, user_specs)
    candidates = encode(holdout.candidate_table, item_specs)

    def evaluate(run: Runner) -> dict[str, float]:
        return holdout.score(run("user_encoder", queries), run("item_encoder", candidates))

    return Fitted(
        parts={"user_encoder": Part(user_net, user_specs, "embedding", queries),
               "item_encoder": Part(item_net, item_specs, "embedding", candidates)},
        evaluate=evaluate,
        baseline=holdout.popularity_baseline(),
        losses=losses,
        sizes={"training_positives": positives.num_rows, "holdout_queries": len(holdout.relevant),
               "candidates": holdout.candidate_table.num_rows},
        calibration={"user_encoder": users.take(spread(users.rows, spec.quantization.calibration_examples)),
                     "item_encoder": items.take(spread(items.rows, spec.quantization.calibration_examples))},
    )


def _drop_ids(ids, rate: float):
    """Replace a share of id indices with the "unseen" index, so the towers learn a cold-start
    embedding for users and items that training never saw (otherwise it stays random)."""
    import torch

    if rate <= 0:
        return ids
    return torch.where(torch.rand(ids.shape, device=ids.device) < rate, torch.full_like(ids, UNSEEN), ids)


def _with_features(project: Project, features: Features, spine: pa.Table, refs: list[str], time: str) -> pa.Table:
    return training_set(project, features, spine, refs, time) if refs else spine


class _Holdout:
    """Queries, candidates, exclusions and relevant items of the time-split holdout.

    One query per user and holdout day with positives, asked at the start of that day (so with the
    features of the days before, as a nightly-refreshed serving tier would); relevant = that day's
    positives; excluded = everything the user rated before that day."""

    def __init__(self, project: Project, features: Features, spec: ModelSpec, split: Split, time: str,
                 positives: pa.Table, name: str):
        user, item = spec.user, spec.item
        candidates = self._candidates(project, features, spec, split)
        time_type = split.train.schema.field(time).type
        cut = pa.scalar(split.cut, time_type)
        self.candidate_table = _with_features(
            project, features, pa.table({item.key: candidates, time: pa.repeat(cut, len(candidates))}),
            item.features, time)
        history = pa.concat_tables([split.train.select([user.key, item.key, time]),
                                    split.holdout.select([user.key, item.key, time])])
        by_user = _history(history, user.key, item.key, time, candidates)
        hold = split.holdout.filter(split.holdout.column("label"))
        days = pc.floor_temporal(hold.column(time), unit="day")
        idx = pc.index_in(hold.column(item.key), value_set=candidates)
        daily = pa.table({"u": hold.column(user.key), "d": days, "i": idx}).filter(pc.is_valid(idx))
        daily = daily.group_by(["u", "d"]).aggregate([("i", "distinct")]).sort_by([("d", "ascending"), ("u", "ascending")])
        keep: list[int] = []
        self.relevant, self.excluded = [], []
        day_ticks = pc.cast(pc.cast(daily.column("d"), time_type), pa.int64()).to_numpy()
        for n, (u, items) in enumerate(zip(daily.column("u").to_pylist(), daily.column("i_distinct").to_pylist())):
            ticks, seen_items = by_user.get(u, (np.zeros(0, np.int64), np.zeros(0, np.int64)))
            seen = np.unique(seen_items[ticks < day_ticks[n]])
            rel = np.setdiff1d(np.asarray(items, np.int64), seen)
            if rel.size:
                keep.append(n)
                self.relevant.append(rel)
                self.excluded.append(seen)
        if not keep:
            raise EmptyTrainingSet(f"model '{name}': no holdout day has a positive the user had not seen before "
                                   f"(fix: land more history or change split.holdout)")
        rows = daily.take(pa.array(keep))
        spine = pa.table({user.key: rows.column("u"), time: pc.cast(rows.column("d"), time_type)})
        self.query_table = _with_features(project, features, spine, spec.user.features +
                                          ([spec.user.history] if spec.user.history else []), time)
        counts = pc.value_counts(positives.column(item.key).combine_chunks())
        pos = pc.index_in(counts.field("values"), value_set=candidates)
        ok = pc.is_valid(pos).to_numpy(zero_copy_only=False)
        self.popularity = np.zeros(len(candidates))
        self.popularity[pos.drop_null().to_numpy()] = counts.field("counts").to_numpy()[ok]

    @staticmethod
    def _candidates(project: Project, features: Features, spec: ModelSpec, split: Split) -> pa.Array:
        key = spec.item.key
        keys = [split.train.column(key).combine_chunks(), split.holdout.column(key).combine_chunks()]
        for view in (resolve_refs(features, spec.item.features) if spec.item.features else {}):
            keys.append(pc.cast(read_view(project.offline, view).column(features.join_key(view)),
                                keys[0].type).combine_chunks())
        return pc.unique(pa.chunked_array(keys)).drop_null()

    def score(self, query_vectors: np.ndarray, candidate_vectors: np.ndarray) -> dict[str, float]:
        return self._ranking(lambda rows: query_vectors[rows] @ candidate_vectors.T)

    def popularity_baseline(self) -> dict[str, float]:
        return self._ranking(lambda rows: np.broadcast_to(self.popularity, (len(rows), len(self.popularity))))

    def _ranking(self, scores_of, chunk: int = 1024) -> dict[str, float]:
        """Metrics over all queries, scored ``chunk`` queries at a time (bounded memory)."""
        totals: dict[str, float] = {}
        n = len(self.relevant)
        for start in range(0, n, chunk):
            rows = np.arange(start, min(n, start + chunk))
            scores = np.array(scores_of(rows), dtype=np.float64)
            for r, i in enumerate(rows):
                scores[r, self.excluded[i]] = -np.inf
            part = metrics.ranking(scores, [self.relevant[i] for i in rows], K)
            for key, value in part.items():
                totals[key] = totals.get(key, 0.0) + value * len(rows)
        return {key: value / n for key, value in totals.items()}


def _history(table: pa.Table, user: str, item: str, time: str, candidates: pa.Array) -> dict:
    """{user key: (event times as int64, candidate indices)} of every example."""
    idx = pc.index_in(table.column(item), value_set=candidates)
    table = pa.table({"u": table.column(user), "t": pc.cast(table.column(time), pa.int64()), "i": idx})
    table = table.filter(pc.is_valid(idx)).sort_by([("u", "ascending"), ("t", "ascending")])
    u = table.column("u").to_numpy()
    t, i = table.column("t").to_numpy(), table.column("i").to_numpy()
    bounds = np.flatnonzero(np.diff(u)) + 1
    out = {}
    for start, stop in zip(np.concatenate([[0], bounds]), np.concatenate([bounds, [len(u)]])):
        if stop > start:
            out[u[start].item()] = (t[start:stop], i[start:stop].astype(np.int64))
    return out
