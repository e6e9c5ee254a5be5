"""A tiny project for training tests: the example's contracts and features.yaml, synthetic ratings
with a learnable structure (each user likes one genre), feature views computed by the real
``compute_view`` and written to the offline store, and a small models.yaml."""
from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import yaml

from millrace.contracts.project import load_project
from millrace.features import offline
from millrace.features.compute import compute_view
from millrace.features.spec import load_features

GENRES = ["Action", "Comedy", "Drama", "Horror"]
START = dt.datetime(2020, 1, 1, tzinfo=dt.timezone.utc)

TINY_MODELS = {
    "models": {
        "retrieval": {
            "family": "two_tower",
            "examples": {"source": "ratings"},
            "label": {"column": "rating", "op": ">=", "value": 4},
            "split": {"holdout": 0.2},
            "user": {"key": "userId", "features": ["user_activity:rating_mean_all", "user_genres:top_genres_365d"],
                     "history": "user_activity:recent_movies"},
            "item": {"key": "movieId", "features": ["movie_popularity:popularity_30d", "movie_metadata:genre_list"]},
            "hyperparameters": {"embedding_dim": 8, "hidden": [32], "epochs": 3, "batch_size": 64, "seed": 3},
            "gates": {"beat_baseline": False},
            "quantization": {"method": "dynamic", "max_metric_drop": 0.5},
        },
        "likes": {
            "family": "tabular",
            "examples": {"source": "ratings"},
            "label": {"column": "rating", "op": ">=", "value": 4},
            "split": {"holdout": 0.2},
            "features": ["user_activity:rating_mean_all", "user_genres:top_genres_365d",
                         "movie_popularity:rating_mean_all", "movie_metadata:genre_list", "movie_metadata:title"],
            "hyperparameters": {"embedding_dim": 4, "hidden": [32], "epochs": 3, "batch_size": 128, "seed": 3},
            "gates": {"thresholds": {"auc": 0.5}},
            "quantization": {"method": "dynamic", "max_metric_drop": 0.05},
        },
        "stars": {
            "family": "tabular", "task": "regression",
            "examples": {"source": "ratings"},
            "label": {"column": "rating"},
            "features": ["user_activity:rating_mean_all", "movie_metadata:genre_list"],
            "hyperparameters": {"embedding_dim": 4, "hidden": [16], "epochs": 2, "batch_size": 128, "seed": 3},
            "quantization": {"method": "none"},
        },
    }
}


def synthetic(users: int = 40, movies: int = 60, ratings: int = 2400, days: int = 120, seed: int = 0):
    rng = np.random.default_rng(seed)
    movie_genre = rng.integers(0, len(GENRES), movies)
    user_genre = rng.integers(0, len(GENRES), users)
    u = rng.integers(0, users, ratings)
    # users mostly rate movies of their genre, and rate those highly
    likes = rng.random(ratings) < 0.7
    m = np.where(likes, [rng.choice(np.flatnonzero(movie_genre == user_genre[x])) if (movie_genre == user_genre[x]).any()
                         else rng.integers(0, movies) for x in u], rng.integers(0, movies, ratings))
    match = movie_genre[m] == user_genre[u]
    stars = np.clip(np.where(match, rng.normal(4.3, 0.5, ratings), rng.normal(2.5, 0.8, ratings)), 0.5, 5.0)
    stars = np.round(stars * 2) / 2
    seconds = np.sort(rng.integers(0, days * 86400, ratings))
    ts = pa.array([START + dt.timedelta(seconds=int(s)) for s in seconds], pa.timestamp("us", tz="UTC"))
    ratings_table = pa.table({"userId": pa.array(u + 1, pa.int64()), "movieId": pa.array(m + 1, pa.int64()),
                              "rating": pa.array(stars, pa.float64()), "timestamp": ts})
    movies_table = pa.table({"movieId": pa.array(np.arange(1, movies + 1), pa.int64()),
                             "title": [f"Movie {i}" for i in range(1, movies + 1)],
                             "year": pa.array(rng.integers(1950, 2020, movies), pa.int64()),
                             "genres": [f"{GENRES[g]}|{GENRES[(g + 1) % 4]}" if i % 3 == 0 else GENRES[g]
                                        for i, g in enumerate(movie_genre)]})
    return ratings_table, movies_table


def build_offline(project, features, ratings: pa.Table, movies: pa.Table) -> None:
    created = dt.datetime(2021, 1, 1, tzinfo=dt.timezone.utc)
    for name, view in features.views.items():
        events = movies if view.source == "movies" else ratings
        lookup = movies if view.enrich else None
        contract = project.contract(view.source)
        table = compute_view(view, features.join_key(name), contract.event_time, events.cast(_schema(events, contract)),
                             lookup, features.types[name], created)
        offline.write_view(project.offline, name, table, {"inputs": [], "features_yaml_sha256": "test"}, "test-run")


def _schema(table: pa.Table, contract) -> pa.Schema:
    from millrace.contracts.arrow import arrow_type

    types = {f.name: arrow_type(f) for f in contract.fields}
    return pa.schema([pa.field(n, types.get(n, table.schema.field(n).type)) for n in table.column_names])


class Tiny:
    def __init__(self, root: Path, ratings: pa.Table, movies: pa.Table):
        self.root, self.ratings, self.movies = root, ratings, movies
        self.project = load_project(root)
        self.features = load_features(self.project)

    def models(self, edit=None):
        from millrace.training.spec import load_models

        data = yaml.safe_load((self.root / "models.yaml").read_text())
        if edit:
            edit(data["models"])
            (self.root / "models.yaml").write_text(yaml.safe_dump(data))
        return load_models(self.project, self.features)

    def lineage(self, name: str):
        """What ``pipelines.train`` records, for examples given directly: the contract and each feature
        view the model reads, from the offline store's manifests."""
        from millrace.features.training_set import resolve_refs
        from millrace.training.lineage import ContractRef, ExamplesLineage, FeatureViewLineage, Lineage

        spec = self.models().get(name)
        refs = spec.features or (spec.user.features + spec.item.features)
        views = {}
        for view in resolve_refs(self.features, refs):
            m = offline.read_manifest(self.project.offline, view)
            views[view] = FeatureViewLineage(uri=f"file://{offline.data_path(self.project.offline, view)}",
                                             **{k: getattr(m, k) for k in ("sha256", "run_id", "rows", "built_at",
                                                                           "features_yaml_sha256")})
        ref = ContractRef(id="ratings", version="1.0.0")
        examples = ExamplesLineage(source="ratings", uri="file:///tiny/ratings", rows=self.ratings.num_rows,
                                   digest="tiny", contract=ref)
        return Lineage(examples=examples, contracts={"ratings": ref}, feature_views=views, git_sha="test")

    def train(self, name: str, examples: pa.Table | None = None, **kwargs):
        from millrace.training.run import train

        return train(self.project, self.features, self.models(), name,
                     self.ratings if examples is None else examples, "timestamp", self.lineage(name), **kwargs)


@pytest.fixture
def tiny(project_dir, monkeypatch) -> Tiny:
    (project_dir / "models.yaml").write_text(yaml.safe_dump(TINY_MODELS))
    monkeypatch.setenv("MILLRACE_USER", "tester")
    ratings, movies = synthetic()
    t = Tiny(project_dir, ratings, movies)
    build_offline(t.project, t.features, ratings, movies)
    return t
