"""The model card speaks of the project at hand and counts the examples dropped for a null label."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from millrace.training import registry


def test_card_names_the_project_and_counts_null_labels(tiny, tmp_path):
    rows = tiny.ratings.num_rows
    null = np.zeros(rows, bool)
    null[::10] = True  # every tenth example has no label
    ratings = tiny.ratings.set_column(tiny.ratings.schema.get_field_index("rating"), "rating",
                                      pc.if_else(pa.array(null), pa.nulls(rows, pa.float64()),
                                                 tiny.ratings.column("rating")))
    tiny.train("stars", ratings)
    folder = registry.download(registry.connect(tiny.project), registry.registered_name(tiny.project, "stars"),
                               "1", str(tmp_path))
    card = (tmp_path / "bundle" / "model_card.md").read_text()
    assert folder and card.startswith("# stars")
    assert f"Project: {tiny.project.name}\n" in card
    assert f"Dropped: {int(null.sum())} rows without a label or an event time" in card
    assert f"project '{tiny.project.name}'" in card.split("## Intended use")[1]
