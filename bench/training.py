"""Model serving speed: torch eager vs onnxruntime FP32 vs INT8 (dynamic and static) on the example's models.

    .venv/bin/python bench/training.py                          # both models; ~3 min once the state exists
    .venv/bin/python bench/training.py --state /tmp/ml-state    # reuse a state dir (else: temp dir + nightly)
    .venv/bin/python bench/training.py --models will_like --json out.json

Fits each model of examples/movielens/models.yaml once (its own seed), exports every part to ONNX
FP32 and quantizes it both ways, then measures side by side, 2 threads for every engine, at batch
1, 32 and 256: median latency and rows/s of torch eager, onnxruntime FP32, INT8 dynamic and INT8
static, and the primary metrics of each on the holdout. Targets: INT8 >= 1.5x FP32 rows/s at batch
256 with <= 1 point of metric loss; ORT FP32 >= torch eager. The figures in docs come from this script.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# This file is named like the `training` package: keep its folder off the import path.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

# Two known, harmless root-logger warnings: apache_beam's (no GCP client libraries) and
# onnxruntime.quantization's advice to pre-process every model it quantizes.
logging.getLogger().addFilter(lambda r: not r.getMessage().startswith(("apitools not found", "Please consider")))

# Import everything before timing, so import cost counts for no engine.
import numpy as np
import onnxruntime
import onnxruntime.quantization  # noqa: F401
import torch

from millrace.contracts.project import load_project
from millrace.features.spec import load_features
from millrace.pipelines.train import examples_and_lineage
from millrace.training import export, gates
from millrace.training.data import split as split_examples
from millrace.training.nets import tensors
from millrace.training.quantize import quantize
from millrace.training.run import family
from millrace.training.spec import load_models

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "movielens"
THREADS = 2
BATCHES = (1, 32, 256)
ENGINES = ("torch", "fp32", "int8_dynamic", "int8_static")
LABELS = {"torch": "torch eager", "fp32": "ORT FP32", "int8_dynamic": "ORT INT8 dynamic",
          "int8_static": "ORT INT8 static"}
METHODS = ("dynamic", "static")
CPU = torch.device("cpu")


# -- state ---------------------------------------------------------------------------------------

def ensure_state(state: Path) -> None:
    """The example's lake and offline features under ``state``; `millrace nightly --no-train` if missing."""
    os.environ["MILLRACE_STATE_DIR"] = str(state)
    if any((state / "lake").glob("*")) and any((state / "offline").glob("*")):
        return
    cli = Path(sys.executable).parent / "millrace"
    command = [str(cli) if cli.exists() else "millrace", "--project", str(EXAMPLE), "nightly", "--no-train"]
    print(f"no lake under {state}: running {' '.join(command)} (about 1.5 min)", flush=True)
    started = time.perf_counter()
    subprocess.run(command, check=True, env=os.environ | {"MILLRACE_STATE_DIR": str(state)},
                   stdout=subprocess.DEVNULL)
    print(f"state ready in {time.perf_counter() - started:.0f} s", flush=True)


# -- fit, export, quantize -----------------------------------------------------------------------

def build(project, features, models, name: str) -> tuple:
    """(fitted, {engine: {part: onnx model}}, facts) of model ``name``."""
    spec = models.get(name)
    table, time_column, lineage = examples_and_lineage(project, features, models, name)
    split = split_examples(table, spec, time_column, name)
    started = time.perf_counter()
    fitted = family(spec).fit(project, features, spec, split, time_column, name)
    fit_s = time.perf_counter() - started
    started = time.perf_counter()
    onnx = {"fp32": {p: export.export(part.module, part.specs, part.sample, part.output, f"{name} {p}")
                     for p, part in fitted.parts.items()}}
    export_s = time.perf_counter() - started
    quant_s = {}
    for method in METHODS:
        started = time.perf_counter()
        onnx[f"int8_{method}"] = {p: quantize(m, method, fitted.calibration.get(p)) for p, m in onnx["fp32"].items()}
        quant_s[method] = round(time.perf_counter() - started, 2)
    for part in fitted.parts.values():
        part.module.cpu().eval()
    facts = {"family": spec.family, "primary": spec.primary, "seed": spec.hyperparameters.seed,
             "train_examples": split.train.num_rows, "holdout_examples": split.holdout.num_rows,
             "sizes": fitted.sizes, "losses": [round(x, 4) for x in fitted.losses], "fit_s": round(fit_s, 1),
             "export_s": round(export_s, 2), "quantize_s": quant_s, "git_sha": lineage.git_sha,
             "onnx_bytes": {p: {e: len(onnx[e][p].SerializeToString()) for e in onnx} for p in fitted.parts}}
    print(f"{name} ({spec.family}, seed {spec.hyperparameters.seed}): fitted on {split.train.num_rows:,} examples in "
          f"{fit_s:.1f} s (loss per epoch {facts['losses']}), exported in {export_s:.1f} s, quantized in "
          f"{quant_s['dynamic']:.1f} s (dynamic) / {quant_s['static']:.1f} s (static); sizes {fitted.sizes}", flush=True)
    return fitted, onnx, facts


# -- quality -------------------------------------------------------------------------------------

def torch_runner(fitted):
    return lambda part, encoded: export.torch_outputs(fitted.parts[part].module, encoded)


def onnx_runner(models: dict):
    sessions = {p: export.session(m, THREADS) for p, m in models.items()}
    return lambda part, encoded: export.run(sessions[part], encoded)


def quality(name: str, spec, fitted, onnx: dict) -> dict:
    """Metrics of every engine on the holdout, INT8 deltas vs FP32 in points, torch/ORT parity."""
    reported = ["recall_at_10", "ndcg_at_10"] if spec.family == "two_tower" else [spec.primary]
    scores = {"torch": fitted.evaluate(torch_runner(fitted))}
    scores |= {e: fitted.evaluate(onnx_runner(onnx[e])) for e in ENGINES[1:]}
    parity = {p: float(np.max(np.abs(export.torch_outputs(part.module, part.sample) -
                                      export.run(export.session(onnx["fp32"][p], THREADS), part.sample))))
              for p, part in fitted.parts.items()}
    out = {"metrics": {e: {m: s[m] for m in reported} for e, s in scores.items()},
           "delta_points": {e: {m: 100 * (scores[e][m] - scores["fp32"][m]) for m in reported}
                            for e in ENGINES[2:]},
           "loss_points": {e: 100 * gates.int8_drop(spec, scores["fp32"], scores[e]) for e in ENGINES[2:]},
           "baseline": {m: fitted.baseline.get(m) for m in reported}, "parity_max_abs_diff": parity}
    print(f"\n{name}: holdout metrics (popularity/base-rate baseline: "
          f"{', '.join(f'{m} {v:.4f}' for m, v in out['baseline'].items() if v is not None)})")
    print(f"  {'metric':<14}" + "".join(f"{LABELS[e]:>18}" for e in ENGINES)
          + "".join(f"{'Δ ' + e.removeprefix('int8_') + ' (pt)':>16}" for e in ENGINES[2:]))
    for m in reported:
        print(f"  {m:<14}" + "".join(f"{scores[e][m]:>18.4f}" for e in ENGINES)
              + "".join(f"{out['delta_points'][e][m]:>+16.2f}" for e in ENGINES[2:]))
    print(f"  torch vs ORT FP32 max abs diff: {', '.join(f'{p} {d:.2e}' for p, d in parity.items())}", flush=True)
    return out


# -- speed ---------------------------------------------------------------------------------------

def runners(part, models: dict, batch: int) -> dict:
    """One zero-argument call per engine running ``batch`` rows of the part's holdout sample
    (rows cycled when the sample is smaller)."""
    sample = part.sample.take(np.arange(batch) % part.sample.rows)
    module = part.module

    def eager(indexed=sample.indexed):
        with torch.inference_mode():
            return module(*tensors(indexed, CPU))

    out = {"torch": eager}
    for engine in ENGINES[1:]:
        sess = export.session(models[engine], THREADS)
        feed = {i.name: sample.raw[i.name] for i in sess.get_inputs()}
        out[engine] = lambda sess=sess, feed=feed: sess.run(None, feed)
    return out


def measure(calls: dict, seconds: float, min_runs: int, slice_s: float) -> dict:
    """Per-call seconds of each engine, interleaved: engines take turns in slices of ``slice_s``
    (order rotating each turn; the first call of a slice is untimed, it warms the caches) until each
    has ``seconds`` of timed runs and at least ``min_runs``, so load swings hit all engines alike."""
    times: dict = {e: [] for e in calls}
    turn = 0
    while any(sum(times[e]) < seconds or len(times[e]) < min_runs for e in calls):
        order = list(calls)[turn % len(calls):] + list(calls)[:turn % len(calls)]
        for engine in order:
            fn, started = calls[engine], time.perf_counter()
            fn()
            while True:
                t = time.perf_counter()
                fn()
                times[engine].append(time.perf_counter() - t)
                if time.perf_counter() - started >= slice_s:
                    break
        turn += 1
    return {e: np.asarray(x) for e, x in times.items()}


def speed(name: str, fitted, onnx: dict, seconds: float, rounds: int, min_runs: int, warmup: int,
          slice_s: float) -> dict:
    """Per part and batch: ``rounds`` interleaved measurements of every engine. Per engine the best
    of its round medians is its latency (the quietest moment of a shared machine); ratios between
    engines are the median over rounds of the ratio *within* a round (both measured in the same
    seconds), which a load swing between rounds cannot bias."""
    out: dict = {}
    print(f"\n{name}: latency, {THREADS} threads, best of {rounds} rounds of >= {seconds:g} s / >= {min_runs} runs "
          f"per engine, engines interleaved in {slice_s * 1e3:g} ms slices; torch takes vocabulary indices "
          f"(looked up beforehand, untimed), ORT the raw values (looked up in the graph)")
    print(f"  {'part':<13} {'batch':>5}  {'engine':<17} {'median ms':>10} {'rows/s':>12} {'vs FP32':>8}  "
          f"{'round medians ms':<24} {'load':>5}")
    for p, part in fitted.parts.items():
        out[p] = {}
        models = {e: onnx[e][p] for e in ENGINES[1:]}
        for batch in BATCHES:
            calls = runners(part, models, batch)
            for fn in calls.values():
                for _ in range(warmup):
                    fn()
            medians: dict = {e: [] for e in ENGINES}
            runs = dict.fromkeys(ENGINES, 0)
            for _ in range(rounds):
                for engine, times in measure(calls, seconds, min_runs, slice_s).items():
                    medians[engine].append(float(np.median(times)))
                    runs[engine] += len(times)
            load = round(os.getloadavg()[0], 2)
            cell = {e: {"ms": min(m) * 1e3, "rows_per_s": batch / min(m), "round_ms": [x * 1e3 for x in m],
                        "runs": runs[e],
                        "speed_vs": {o: float(np.median(np.asarray(medians[o]) / np.asarray(m))) for o in ENGINES}}
                    for e, m in medians.items()}
            for e in ENGINES:
                c = cell[e]
                rounds_text = " ".join(f"{x:.3f}" for x in c["round_ms"])
                print(f"  {p:<13} {batch:>5}  {LABELS[e]:<17} {c['ms']:>10.3f} {c['rows_per_s']:>12,.0f} "
                      f"{c['speed_vs']['fp32']:>7.2f}x  {rounds_text:<24} {load:>5}",
                      flush=True)
            out[p][batch] = cell | {"load_average": load}
    return out


# -- report --------------------------------------------------------------------------------------

def ratios(latency: dict) -> dict:
    """Per part: INT8/FP32 rows/s at batch 256, ORT FP32/torch eager rows/s at each batch (paired
    within rounds, median over rounds)."""
    out = {}
    for p, cells in latency.items():
        r = {f"{e}/fp32@256": cells[256][e]["speed_vs"]["fp32"] for e in ENGINES[2:]}
        r |= {f"fp32/torch@{b}": cells[b]["fp32"]["speed_vs"]["torch"] for b in BATCHES}
        out[p] = r
    return out


def report(summary: dict) -> None:
    """The headline ratios, then each target, met or not."""
    print("\nheadline ratios (rows/s)")
    checks = []
    for name, m in summary["models"].items():
        primary = m["primary"]
        for p, r in m["ratios"].items():
            print(f"  {name + '/' + p:<29} INT8 dynamic/FP32 @256 {r['int8_dynamic/fp32@256']:5.2f}x   "
                  f"INT8 static/FP32 @256 {r['int8_static/fp32@256']:5.2f}x   ORT FP32/torch eager "
                  + "  ".join(f"@{b} {r[f'fp32/torch@{b}']:.2f}x" for b in BATCHES))
            for e in ENGINES[2:]:
                ratio, loss = r[f"{e}/fp32@256"], m["quality"]["loss_points"][e]
                checks.append((f"{name}/{p} {e.replace('_', ' ')}/FP32 @256, {primary} loss",
                               f"{ratio:.2f}x, {loss:.2f} pt", ">= 1.5x, <= 1 pt", ratio >= 1.5 and loss <= 1.0))
            for b in BATCHES:
                ratio = r[f"fp32/torch@{b}"]
                checks.append((f"{name}/{p} ORT FP32/torch eager @{b}", f"{ratio:.2f}x", ">= 1x", ratio >= 1.0))
    print(f"\n{'check':<62} {'figure':>16} {'target':>17}  result")
    for check, figure, target, ok in checks:
        print(f"{check:<62} {figure:>16} {target:>17}  {'PASS' if ok else 'MISS'}")
    summary["targets"] = {check: {"figure": figure, "target": target, "pass": ok}
                          for check, figure, target, ok in checks}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--state", help="state dir with the example's lake and offline features (default: a temp dir, "
                                    "filled by `millrace nightly --no-train` and removed at the end)")
    ap.add_argument("--models", default="movie_retrieval,will_like", help="comma list of models.yaml names")
    ap.add_argument("--seconds", type=float, default=1.0, help="time budget of one measurement")
    ap.add_argument("--min-runs", type=int, default=20, help="runs of one measurement at least")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved measurements per cell; ratios are paired "
                                                          "within a round, median over rounds")
    ap.add_argument("--warmup", type=int, default=5, help="untimed runs of each engine before a cell's rounds")
    ap.add_argument("--slice", type=float, default=0.2, help="seconds an engine runs before the next takes its turn")
    ap.add_argument("--json", help="write every figure to this file")
    args = ap.parse_args()
    state = Path(args.state or tempfile.mkdtemp(prefix="millrace-training-bench-")).resolve()
    torch.set_num_threads(THREADS)
    try:
        ensure_state(state)
        project = load_project(EXAMPLE)
        features = load_features(project)
        models = load_models(project, features)
        load = round(os.getloadavg()[0], 2)
        summary: dict = {"threads": THREADS, "batches": list(BATCHES), "seconds": args.seconds,
                         "min_runs": args.min_runs, "rounds": args.rounds, "slice_s": args.slice,
                         "warmup": args.warmup, "load_average_before": load,
                         "versions": {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__},
                         "cpu_count": os.cpu_count(), "models": {}}
        print(f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, {THREADS} threads, "
              f"{os.cpu_count()} CPUs, load average {load:.2f}, state {state}", flush=True)
        for name in filter(None, args.models.split(",")):
            spec = models.get(name)
            fitted, onnx, facts = build(project, features, models, name)
            facts["quality"] = quality(name, spec, fitted, onnx)
            facts["latency"] = speed(name, fitted, onnx, args.seconds, args.rounds, args.min_runs, args.warmup,
                                     args.slice)
            facts["ratios"] = ratios(facts["latency"])
            summary["models"][name] = facts
        summary["load_average_after"] = round(os.getloadavg()[0], 2)
        report(summary)
        if args.json:
            Path(args.json).write_text(json.dumps(summary, indent=1, default=str))
            print(f"\nall figures in {args.json}")
    finally:
        if not args.state:
            shutil.rmtree(state, ignore_errors=True)


if __name__ == "__main__":
    main()
