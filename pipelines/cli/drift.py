"""``millrace drift``: the Evidently drift report of each champion's inputs."""
from __future__ import annotations

from typing import Optional

import typer

from millrace.pipelines.cli import common

app = typer.Typer()


@app.command("drift")
def drift(date: Optional[str] = typer.Option(None, "--date", metavar="YYYY-MM-DD", help="Compare this day's partition "
                                            "(default: the newest committed one)."),
          model: Optional[list[str]] = typer.Option(None, "--model", "-m", help="Model to check (repeatable; "
                                                    "default: every model of models.yaml)."),
          as_json: bool = common.json_option()):
    """Drift of the newest partition's model inputs against each champion's training period: HTML and
    JSON reports under the state dir, logged to MLflow; a drift share over the model's threshold
    records a retraining trigger."""
    from millrace.pipelines.drift import drift as check

    console = common.console(as_json)
    day = common.date_range(date, None, None)[0]
    checked = check(common.project(), list(model) if model else None, day, say=console.print)
    if as_json:
        common.print_json([{"model": c.model, "skipped": c.why} if c.record is None else c.record for c in checked])
        return
    for c in checked:
        if c.record is None:
            console.print(f"{c.model}: skipped ({c.why})")
            continue
        r = c.record
        verdict = "[red]retraining triggered[/]" if r.triggered else "no retraining"
        console.print(f"{r.model} v{r.champion} on {r.date}: {len(r.drifted)} of {len(r.columns)} input columns "
                      f"drifted (share {r.share:.2f}, threshold {r.threshold:.2f}): {verdict}")
        for col in r.columns:
            mark = "drifted" if col.drifted else "stable "
            console.print(f"  {mark} {col.column}: {col.method} {col.score:.4f} (threshold {col.threshold:g})")
        if r.left_out:
            console.print(f"  not compared (lists): {', '.join(r.left_out)}")
        console.print(f"  report: {r.report_html}")
