"""tabular: an MLP over numeric and categorical features, a classifier or a regressor.

Each example gets its features as of its own event time (point-in-time), so training sees what
serving would have seen. Classification exports a probability, regression the predicted value.
"""
from __future__ import annotations

import numpy as np

from millrace.contracts.project import Project
from millrace.features.spec import Features
from millrace.features.training_set import resolve_refs, training_set
from millrace.training import loop, metrics
from millrace.training.data import Split
from millrace.training.encode import encode, fit_inputs
from millrace.training.families import Fitted, Part, Runner, columns_of, spread, with_sources
from millrace.training.spec import ModelSpec


def fit(project: Project, features: Features, spec: ModelSpec, split: Split, time: str, name: str,
        progress: loop.Progress | None = None) -> Fitted:
    import torch

    from millrace.training.nets import FeatureMLP, device, tensors

    hp = spec.hyperparameters
    classify = spec.task == "classification"
    refs = resolve_refs(features, spec.features)
    columns = columns_of(refs) + list(spec.request)  # request inputs: the example row's own columns
    train = training_set(project, features, split.train, spec.features, time)
    hold = training_set(project, features, split.holdout, spec.features, time)
    specs = with_sources(fit_inputs(train, columns, hp.max_vocabulary), refs, spec.request)
    x, x_hold = encode(train, specs), encode(hold, specs)
    y = train.column("label").to_numpy(zero_copy_only=False).astype(np.float32)
    y_hold = hold.column("label").to_numpy(zero_copy_only=False)

    loop.seed_everything(hp.seed)
    dev = device()
    net = FeatureMLP(specs, hp.hidden, 1, hp.embedding_dim).to(dev)
    with torch.no_grad():  # start from the base rate (or mean): fewer epochs to a sane model
        base = float(y.mean())
        net.mlp[-1].bias.fill_(float(np.log(base / (1 - base))) if classify and 0 < base < 1 else base)
    inputs, target = tensors(x.indexed, dev), torch.from_numpy(y).to(dev)
    criterion = torch.nn.BCEWithLogitsLoss() if classify else torch.nn.MSELoss()

    def loss_of(rows: np.ndarray):
        r = torch.from_numpy(rows).to(dev)
        return criterion(net(*[t[r] for t in inputs]).squeeze(-1), target[r])

    net.train()
    losses = loop.fit(net.parameters(), train.num_rows, loss_of, hp, progress)
    net.eval()
    net.squash = classify  # the exported graph returns a probability

    def evaluate(run: Runner) -> dict[str, float]:
        out = run("model", x_hold).reshape(-1)
        return metrics.classification(y_hold, out) if classify else metrics.regression(y_hold, out)

    if classify:
        baseline = metrics.classification(y_hold, np.full(len(y_hold), y.mean()))
    else:
        baseline = metrics.regression(y_hold, np.full(len(y_hold), y.mean()))
    return Fitted(
        parts={"model": Part(net, specs, "probability" if classify else "prediction", x_hold)},
        evaluate=evaluate, baseline=baseline, losses=losses,
        sizes={"training_examples": train.num_rows, "holdout_examples": hold.num_rows},
        calibration={"model": x.take(spread(x.rows, spec.quantization.calibration_examples))},
    )
