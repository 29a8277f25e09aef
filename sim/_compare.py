"""`lodestore compare`: the same scenario and seed once per design, and one report side by side; and the figures
a scenario's `[thresholds]` bound, for `simulate` and `compare` alike.

Owns: `compare` (each design run with `simulate` into its own directory, then `compare.json`,
`compare.html` and the comparison's plots) and `compare_table` (the text table the command prints).

What a design loses is a result, not a crash: a design that fails a checker shows its counterexample in the table.
Where a design has no transactions, its trades are two separate updates (the report says so per design).

Never does: run a design differently from `lodestore simulate` (every run is exactly what `simulate` would do with
`[store] design` set), or judge a run by anything but its checkers and the scenario's thresholds.
"""

from __future__ import annotations

import dataclasses
import html
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence, TextIO

from lodestore.sim._runner import RunOptions, RunResult, _say_dashboard, simulate
from lodestore.sim._scenario import Scenario
from lodestore.sim.designs import DESIGNS
from lodestore.storage import ConfigError

__all__ = ["compare", "compare_table", "write_comparison", "CompareResult"]


# ------------------------------------------------------------------------------------------------- comparing

@dataclass
class CompareResult:
    """What `compare` produced: the comparison (`compare.json`'s content), each design's run, and the files."""

    report: dict
    runs: dict[str, RunResult]
    files: dict[str, Path]

    @property
    def exit_status(self) -> int:
        """0 when every design met every threshold (a failing checker with no threshold on it is a result, not a
        failure of the comparison); 1 when one did not; 130 when stopped early by Ctrl-C."""
        if any(r.report["run"]["stopped_early"] for r in self.runs.values()):
            return 130
        return 0 if self.report["thresholds_ok"] else 1


def _designs(names: Sequence[str]) -> list[str]:
    if not names:
        raise ConfigError("--designs: name at least one design")
    unknown = [n for n in names if n not in DESIGNS]
    if unknown:
        raise ConfigError(f"--designs: unknown design {unknown[0]!r} (known: {', '.join(DESIGNS)})")
    if len(set(names)) != len(names):
        raise ConfigError(f"--designs: a design is named twice in {','.join(names)}")
    return list(names)


def compare(scenario: Scenario, designs: Sequence[str], options: RunOptions = RunOptions(),
            stream: TextIO | None = None) -> CompareResult:
    """Run `scenario` once per design (same seed, same plan, same faults) with `options`, each into
    `options.out/<design>`, and write the comparison into `options.out` (default: lodestore-runs/<time>-<name>-compare).
    """
    from lodestore.sim._runner import _default_out, _out_dir
    names = _designs(designs)
    stream = stream or options.stream or sys.stdout
    if options.out is not None:
        out = options.out
    else:
        default = _default_out(scenario)
        out = default.with_name(default.name + "-compare")
    _out_dir(out)
    started_ray = _ensure_ray(options)
    runs: dict[str, RunResult] = {}
    try:
        for name in names:
            stream.write(f"== design {name}\n")
            stream.flush()
            one = dataclasses.replace(scenario, store=dataclasses.replace(scenario.store, design=name),
                                      world=dataclasses.replace(scenario.world, path=None))
            runs[name] = simulate(one, dataclasses.replace(options, out=out / name, stream=stream))
            if runs[name].report["run"]["stopped_early"]:
                break
    finally:
        if started_ray:
            import ray
            ray.shutdown()
    report = _comparison(scenario, runs, out)
    files = write_comparison(report, out)
    stream.write(compare_table(report) + "\n")
    stream.write(f"comparison: {files['html']}\n")
    stream.flush()
    return CompareResult(report, runs, files)


def _ensure_ray(options: RunOptions) -> bool:
    """Start Ray once for every design's run (each would start and stop it otherwise); True when started here."""
    if options.engine != "ray":
        return False
    import ray

    from lodestore.storage import virtual
    if ray.is_initialized():
        return False
    url = virtual.ensure_ray(options.address, dashboard=options.dashboard)
    if url is not None:
        _say_dashboard(options, url)
    return options.address is None


def _comparison(scenario: Scenario, runs: Mapping[str, RunResult], out: Path) -> dict:
    designs = []
    for name, result in runs.items():
        report = result.report
        designs.append({
            "name": name,
            "design": report.get("design", {}),
            "verdict": report.get("verdict"),
            "checks": [{"name": c.name, "ok": c.ok, "counterexample": c.counterexample} for c in result.checks],
            "metrics": report.get("metrics", {}),
            "thresholds": report.get("thresholds", []),
            "requests": report.get("requests", {}),
            "storage": report.get("storage", {}),
            "player_hours": report["run"]["player_hours"],
            "wall_s": report["run"]["wall_s"],
            "digest": report.get("digest"),
            "report": str((out / name / "report.html").relative_to(out)) if result.out else None,
        })
    return {"format": 1, "scenario": {"name": scenario.world.name, "source": scenario.source,
                                      "seed": scenario.world.seed, "duration_s": scenario.world.duration},
            "designs": designs, "thresholds": dict(scenario.thresholds),
            "thresholds_ok": all(t["ok"] for d in designs for t in d["thresholds"])}


# --------------------------------------------------------------------------------------------------- output

_ROWS = (
    ("checks failed", "failed_checks"), ("writes lost", "lost_writes"), ("writes duplicated", "duplicated_writes"),
    ("items duplicated", "duplicated_items"), ("coins created", "coins_created"),
    ("coins destroyed", "coins_destroyed"), ("negative balances", "negative_balances"),
    ("overlapping sessions", "overlapping_sessions"), ("load failures", "load_failures"),
    ("data at risk (player-s)", "data_at_risk_player_s"), ("calls throttled", "throttled"),
    ("DataStore requests", "datastore_requests"), ("MemoryStore requests", "memorystore_requests"),
    ("p50 load (ms)", "p50_load_ms"), ("p99 load (ms)", "p99_load_ms"), ("p50 save (ms)", "p50_save_ms"),
    ("p99 save (ms)", "p99_save_ms"), ("p50 trade (ms)", "p50_trade_ms"), ("p99 trade (ms)", "p99_trade_ms"),
)


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and not math.isfinite(value):
        return "-"
    if isinstance(value, float):
        return f"{value:,.1f}" if value != int(value) else f"{int(value):,}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _rows(report: Mapping[str, Any]) -> tuple[list[str], list[tuple[str, list[str]]]]:
    designs = report["designs"]
    header = [d["name"] for d in designs]
    rows = [("verdict", [str(d["verdict"]).upper() for d in designs]),
            ("trades", ["2PC" if d["design"].get("transactions") else "two updates" for d in designs]),
            ("lock", [d["design"].get("lock", "?") for d in designs])]
    rows += [(label, [_fmt(d["metrics"].get(key)) for d in designs]) for label, key in _ROWS]
    rows.append(("DataStore bytes", [_fmt(d["storage"].get("datastore_bytes")) for d in designs]))
    rows.append(("DataStore req / player-hour",
                 [_fmt(round(d["metrics"].get("datastore_requests", 0) / d["player_hours"], 1))
                  if d["player_hours"] else "-" for d in designs]))
    return header, rows


def compare_table(report: Mapping[str, Any]) -> str:
    """The comparison as a text table (a column per design), then each failing checker's counterexample and each
    threshold that did not hold."""
    header, rows = _rows(report)
    width = max(len(label) for label, _ in rows) + 2
    cols = [max([len(h)] + [len(cells[i]) for _, cells in rows]) + 2 for i, h in enumerate(header)]
    lines = [" " * width + "".join(h.rjust(c) for h, c in zip(header, cols))]
    lines += [label.ljust(width) + "".join(v.rjust(c) for v, c in zip(cells, cols)) for label, cells in rows]
    for d in report["designs"]:
        for c in d["checks"]:
            if not c["ok"]:
                lines.append(f"{d['name']}: FAIL {c['name']}: {c['counterexample']}")
        for t in d["thresholds"]:
            if not t["ok"]:
                lines.append(f"{d['name']}: threshold {t['metric']} <= {_fmt(t['at_most'])} not met: "
                             f"{_fmt(t['value'])}")
    if report["thresholds"]:
        lines.append("thresholds: " + ("all met" if report["thresholds_ok"] else "NOT met"))
    return "\n".join(lines)


def write_comparison(report: dict, out: Path) -> dict[str, Path]:
    """`compare.json`, `compare.html` and the comparison's plot (`compare.png`) in `out`."""
    files = {"json": out / "compare.json", "html": out / "compare.html"}
    files["json"].write_text(json.dumps(report, indent=2), encoding="utf-8")
    plot = _plot(report, out / "compare.png")
    if plot is not None:
        files["plot"] = plot
    files["html"].write_text(_html(report, plot), encoding="utf-8")
    return files


_PLOTTED = (("lost_writes", "writes lost"), ("duplicated_items", "items duplicated"),
            ("coins_destroyed", "coins destroyed"), ("overlapping_sessions", "overlapping sessions"),
            ("data_at_risk_player_s", "data at risk (player-s)"), ("datastore_requests", "DataStore requests"),
            ("p99_load_ms", "p99 load (ms)"), ("p99_save_ms", "p99 save (ms)"))
_BAD = ("lost_writes", "duplicated_items", "coins_destroyed", "overlapping_sessions")   # red when not 0


def _plot(report: Mapping[str, Any], path: Path) -> Path | None:
    designs = report["designs"]
    if not designs:
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [d["name"] for d in designs]
    fig, axes = plt.subplots(2, 4, figsize=(15, 6), layout="constrained")
    try:
        for ax, (key, title) in zip(axes.flat, _PLOTTED):
            values = [d["metrics"].get(key) or 0 for d in designs]
            bars = ax.bar(names, values, color=["#cf222e" if v else "#1a7f37" for v in values]
                          if key in _BAD else "#0969da")
            ax.set_title(title)
            ax.tick_params(axis="x", labelrotation=30)
            ax.bar_label(bars, labels=[_fmt(v) for v in values], fontsize=8)
        fig.suptitle(f"{report['scenario']['name']}: the same storm against each design")
        fig.savefig(path, dpi=90)
    finally:
        plt.close(fig)
    return path


def _html(report: Mapping[str, Any], plot: Path | None) -> str:
    esc = lambda v: html.escape(str(v), quote=True)   # noqa: E731
    header, rows = _rows(report)
    head = "".join(f"<th>{esc(h)}</th>" for h in ["", *header])
    body = "".join("<tr><td>" + esc(label) + "</td>" + "".join(f'<td class="num">{esc(v)}</td>' for v in cells)
                   + "</tr>" for label, cells in rows)
    links = "".join(f'<li><a href="{esc(d["report"])}">{esc(d["name"])}</a>: {esc(d["design"].get("summary", ""))}; '
                    f'trades: {esc(d["design"].get("trades", ""))}</li>' for d in report["designs"] if d["report"])
    failures = "".join(f"<li><b>{esc(d['name'])}</b> FAIL {esc(c['name'])}: <code>{esc(c['counterexample'])}</code>"
                       f"</li>" for d in report["designs"] for c in d["checks"] if not c["ok"])
    breaches = "".join(f"<li><b>{esc(d['name'])}</b>: {esc(t['metric'])} = {esc(_fmt(t['value']))}, at most "
                       f"{esc(_fmt(t['at_most']))}</li>" for d in report["designs"] for t in d["thresholds"]
                       if not t["ok"])
    parts = [f"<h1>lodestore compare: {esc(report['scenario']['name'])}</h1>",
             f"<p>The same scenario and seed ({esc(report['scenario']['seed'])}) against each design.</p>",
             f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"]
    if failures:
        parts.append(f"<h2>Counterexamples</h2><ul>{failures}</ul>")
    if report["thresholds"]:
        verdict = "all met" if report["thresholds_ok"] else "NOT met"
        parts.append(f"<h2>Thresholds: {verdict}</h2><ul>{breaches}</ul>")
    if plot is not None:
        parts.append(f'<img src="{esc(plot.name)}" alt="comparison plot">')
    parts.append(f"<h2>Each design's report</h2><ul>{links}</ul>")
    css = ("body{font-family:system-ui,sans-serif;margin:2em auto;max-width:80em;padding:0 1em}"
           "table{border-collapse:collapse}th,td{border:1px solid #ccc;padding:.25em .6em}"
           "td.num{text-align:right;font-variant-numeric:tabular-nums}img{max-width:100%}")
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>lodestore compare: "
            f"{esc(report['scenario']['name'])}</title><style>{css}</style></head><body>\n" + "\n".join(parts)
            + "\n</body></html>\n")
