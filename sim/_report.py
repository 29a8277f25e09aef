"""Rendering of a finished simulation run: report.json, PNG plots, report.html and the terminal summary.

Owns: the on-disk form of a run's report (`write_report`) and the plain-text summary printed at the end of
`lodestore simulate` (`summary_table`). The runner builds the report dict; this module only renders it. The page
links the timelines of the keys the failing checkers name (`sim._timeline.timeline_href`; the runner writes them).

Never does: run a simulation, read the world or a store, mutate the report, or compute a verdict (it shows the
one it is given). matplotlib is imported lazily, inside the plotting code, so importing this module is cheap.

The report dict (the contract of report.json, ``"format": 1``) is plain JSON-compatible data::

    {
     "format": 1,
     "scenario": {"name": str, "source": str, "seed": int, "duration_s": float, "time_scale": float,
                  ...more, free-form},
     "run": {"started_at": ISO-8601 str, "engine": "ray" | "in-process", "wall_s": float, "simulated_s": float,
             "stopped_early": bool, "player_hours": float, "player_hours_per_s": float},
     "totals": {
        "ops_by_kind": {op: {"ok": int, "failed": int, "unknown": int}},   # op: mint, grant, purchase, trade, hot
        "errors_by_code": {code: int},                                     # e.g. "DataStoreError 502": 4
        "tx": {"committed": int, "aborted": int, "unknown": int},
        "locks": {"acquired": int, "waits": int, "steals": int, "lost": int},
        "throttled": int,
        "servers": {"started": int, "stopped": int, "crashed": int, "stalled": int, "lost_with_node": int,
                    "peak": int, "key_actors": int},   # key_actors: started (per-key placement: one per load)
        "players": {"joins": int, "leaves": int, "teleports": int, "peak_online": int, "load_failures": int,
                    "loads_cancelled": int},
     },
     "latency_ms": {op: {"count": int, "p50": float, "p90": float, "p99": float, "max": float}},  # op incl. load
     "design": {"name": str, "summary": str, "options": dict, "transactions": bool, "lock": str, "trades": str},
     "requests": {"datastore": {request type: int}, "datastore_total": int, "memorystore": {operation: int},
                  "memorystore_total": int},                  # what the run asked (the final read excluded)
     "storage": {"datastore_bytes": int, "memorystore_bytes": int,   # datastore_bytes: current values, uncompressed
                 "storage_bytes": int, "lifetime_users": int, "storage_limit_bytes": int, "over_limit": bool,
                 "estimated_monthly_cost_usd": float},   # Roblox's limit (storage.StorageUsage); users: population
     "metrics": {metric: number or None},   # what [thresholds] bound (sim._metrics.metrics)
     "thresholds": [{"metric": str, "at_most": float, "value": number or None, "ok": bool}],
     "series": {
        "bucket_s": float,                    # simulated seconds per bucket
        "t": [float],                         # bucket starts, simulated seconds; every list below is as long
        "ops_per_s": {op: [float]},           # operations per simulated second in that bucket
        "latency_ms": {op: {"p50": [float | None], "p99": [float | None]}},
        "errors": {code: [int]},
        "tx": {"committed": [int], "aborted": [int], "unknown": [int]},
        "locks": {"waits": [int], "steals": [int], "lost": [int]},
        "throttled": [int],
        "budget_tokens_min": [float | None], "budget_tokens_median": [float | None],
        "servers_online": [int], "players_online": [int],
     },
     "checks": [{"name": str, "ok": bool, "counterexample": str | None, "details": dict}],
     "health": {"ok": bool, "problems": [str], "notes": [str], ...figures},   # did the harness keep up?
     "verdict": "pass" | "fail" | "inconclusive",   # inconclusive: the checks passed, the health did not
    }

Every key but "format" and "verdict" may be missing (a run stopped at once, a partial report): what exists is
written, what does not is left out. None, NaN and infinite points in series are skipped in plots.
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

__all__ = ["REPORT_FORMAT", "PLOT_NAMES", "write_report", "summary_table"]

REPORT_FORMAT = 1
"""Version of the report dict this module renders (``report["format"]``)."""

_MISSING = "-"
_LOG_SPAN = 100.0          # a log y axis once the positive values span more than two decades
_DPI = 100
_FIGSIZE = (9.0, 4.8)      # inches
_MARKED_POINTS = 60        # lines with at most this many points get a dot on each
_LABEL_WIDTH = 26          # width of the label column of the terminal summary


# ---------------------------------------------------------------------------------------------------------------
# Reading the report leniently
# ---------------------------------------------------------------------------------------------------------------

def _section(data: Any, key: str) -> dict[str, Any]:
    """``data[key]`` if it is a dict, else an empty dict (missing or malformed sections render as absent)."""
    value = data.get(key) if isinstance(data, Mapping) else None
    return value if isinstance(value, dict) else {}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _fmt(value: Any, digits: int = 1) -> str:
    """A figure as text: ints with thousands separators, floats with ``digits`` decimals, missing as ``-``."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return _MISSING
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def _duration(seconds: Any) -> str:
    """Seconds as ``"600.0 s (10.0 min)"``; the bracket only once it helps."""
    if not _is_number(seconds):
        return _MISSING
    text = f"{seconds:,.1f} s"
    if seconds >= 3600:
        return f"{text} ({seconds / 3600:.2f} h)"
    if seconds >= 60:
        return f"{text} ({seconds / 60:.1f} min)"
    return text


def _verdict(report: Mapping[str, Any]) -> str:
    """``"PASS"``, ``"FAIL"``, ``"INCONCLUSIVE"`` or ``"UNKNOWN"`` (a missing or unexpected verdict is shown, never
    guessed)."""
    verdict = report.get("verdict")
    return verdict.upper() if verdict in ("pass", "fail", "inconclusive") else "UNKNOWN"


def _health_lines(report: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    """The health section's problems (why a run is inconclusive) and notes, as one-line texts."""
    health = _section(report, "health")

    def texts(key: str) -> list[str]:
        values = health.get(key)
        return [_one_line(str(v)) for v in values] if isinstance(values, list) else []
    return texts("problems"), texts("notes")


def _checks(report: Mapping[str, Any]) -> list[dict[str, Any]]:
    checks = report.get("checks")
    return [check for check in checks if isinstance(check, dict)] if isinstance(checks, list) else []


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _counts(section: Mapping[str, Any], keys: Sequence[str]) -> str:
    """``"committed 10, aborted 2, unknown 0"`` for the keys of ``section``, in order."""
    return ", ".join(f"{key} {_fmt(section.get(key))}" for key in keys)


def _design(report: Mapping[str, Any]) -> str:
    design = _section(report, "design")
    if not design:
        return "lyra"
    options = ", ".join(f"{k}={v}" for k, v in sorted(_section(design, "options").items()))
    return f"{design.get('name')} ({options})" if options else str(design.get("name"))


def _headline_rows(report: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The headline figures as (label, value) pairs, shared by the terminal summary and the html page."""
    scenario, run, totals = _section(report, "scenario"), _section(report, "run"), _section(report, "totals")
    rows = [
        ("scenario", _fmt(scenario.get("name"))),
        ("design", _design(report)),
        ("seed", _fmt(scenario.get("seed"))),
        ("engine", _fmt(run.get("engine"))),
        ("started at", _fmt(run.get("started_at"))),
        ("simulated time", _duration(run.get("simulated_s"))),
        ("wall time", _duration(run.get("wall_s"))),
        ("stopped early", _fmt(run.get("stopped_early"))),
        ("player-hours", _fmt(run.get("player_hours"), 2)),
        ("player-hours per wall s", _fmt(run.get("player_hours_per_s"), 3)),
    ]
    if "tx" in totals:
        rows.append(("transactions", _counts(_section(totals, "tx"), ("committed", "aborted", "unknown"))))
    if "locks" in totals:
        rows.append(("locks", _counts(_section(totals, "locks"), ("acquired", "waits", "steals", "lost"))))
    if "throttled" in totals:
        rows.append(("throttled calls", _fmt(totals.get("throttled"))))
    if "data_at_risk_player_s" in totals:
        rows.append(("data at risk (player-s)", _fmt(totals.get("data_at_risk_player_s"))))
    requests = _section(report, "requests")
    if requests:
        rows.append(("requests", f"DataStore {_fmt(requests.get('datastore_total'))}, MemoryStore "
                                 f"{_fmt(requests.get('memorystore_total'))}"))
    if "servers" in totals:
        servers = _section(totals, "servers")
        rows.append(("servers", _counts(servers, ("started", "stopped", "crashed", "stalled", "lost_with_node",
                                                  "peak"))))
    if "players" in totals:
        players = _section(totals, "players")
        rows.append(("players", _counts(players, ("joins", "leaves", "teleports", "peak_online", "load_failures",
                                                  "loads_cancelled"))))
    served = _section(report, "open_cloud")
    if served:
        rows.append(("open cloud", _served_line(served)))
        writes = _section(served, "writes")
        if writes:
            rows.append(("open cloud writes", _outside_line(writes)))
    return rows


def _served_line(served: Mapping[str, Any]) -> str:
    """What came in from outside: the run's own server's requests (`[serve]`), and the storage calls that came in
    through the run's ingress from any outside caller (that server, `lodestore serve --world`, `World.connect`)."""
    parts = [] if served.get("total") is None else [f"requests {_fmt(served.get('total'))}"]
    if served.get("outside_calls") is not None:
        parts.append(f"storage calls from outside {_fmt(served.get('outside_calls'))}")
    return ", ".join(parts) or "-"


def _outside_line(writes: Mapping[str, Any]) -> str:
    """What became of the acknowledged writes that came in through Open Cloud (`sim._outside`), in one line."""
    return (f"{_fmt(writes.get('writes'))}: kept {_fmt(writes.get('kept'))}, replaced by a game server "
            f"{_fmt(writes.get('replaced'))} ({_fmt(writes.get('replaced_unseen'))} unread); to keys a session held "
            f"{_fmt(writes.get('held'))}, {_fmt(writes.get('held_replaced'))} of them replaced")


_OUTCOMES = ("ok", "failed", "unknown")
_LATENCY_COLUMNS = ("count", "p50", "p90", "p99", "max")


def _ops_rows(report: Mapping[str, Any]) -> list[tuple[str, list[str]]]:
    ops = _section(_section(report, "totals"), "ops_by_kind")
    return [(str(op), [_fmt(_section(ops, op).get(outcome)) for outcome in _OUTCOMES]) for op in ops]


def _latency_rows(report: Mapping[str, Any]) -> list[tuple[str, list[str]]]:
    latency = _section(report, "latency_ms")
    return [(str(op), [_fmt(_section(latency, op).get(column)) for column in _LATENCY_COLUMNS]) for op in latency]


def _error_rows(report: Mapping[str, Any]) -> list[tuple[str, str]]:
    errors = _section(_section(report, "totals"), "errors_by_code")
    return [(str(code), _fmt(count)) for code, count in errors.items()]


# ---------------------------------------------------------------------------------------------------------------
# Terminal summary
# ---------------------------------------------------------------------------------------------------------------

def _table(title: str, columns: Sequence[str], rows: list[tuple[str, list[str]]]) -> list[str]:
    """A fixed-width table: the row label left-aligned, the figures right-aligned under their column names."""
    widths = [max([len(column)] + [len(cells[i]) for _, cells in rows]) for i, column in enumerate(columns)]
    label_width = max([_LABEL_WIDTH - 2] + [len(label) + 2 for label, _ in rows])

    def line(label: str, cells: Sequence[str]) -> str:
        return (label.ljust(label_width + 2) + "  ".join(c.rjust(w) for c, w in zip(cells, widths))).rstrip()

    return [line(title, columns)] + [line("  " + label, cells) for label, cells in rows]


def summary_table(report: dict) -> str:
    """The plain-text summary printed at the end of `lodestore simulate` (fixed width, no colour codes).

    Headline figures, ops by kind, errors by code, latency per op, then one ``PASS name`` or
    ``FAIL name: counterexample`` line per checker, and the verdict on the last line::

        print(summary_table(report))
    """
    lines = [f"{label:<{_LABEL_WIDTH}}{value}" for label, value in _headline_rows(report)]
    ops = _ops_rows(report)
    if ops:
        lines += [""] + _table("operations", _OUTCOMES, ops)
    errors = _error_rows(report)
    if errors:
        lines += [""] + _table("errors by code", ("count",), [(code, [count]) for code, count in errors])
    latency = _latency_rows(report)
    if latency:
        lines += [""] + _table("latency (ms)", _LATENCY_COLUMNS, latency)
    checks = _checks(report)
    if checks:
        lines += ["", "checks"] + [f"  {_check_line(check)}" for check in checks]
    problems, notes = _health_lines(report)
    if problems or notes:
        lines += ["", "health"] + [f"  PROBLEM {p}" for p in problems] + [f"  note {n}" for n in notes]
    lines += ["", f"VERDICT: {_verdict(report)}"]
    return "\n".join(lines)


def _check_line(check: Mapping[str, Any]) -> str:
    name = _one_line(str(check.get("name", "?")))
    if check.get("ok") is True:
        return f"PASS {name}"
    counterexample = check.get("counterexample")
    return f"FAIL {name}: {_one_line(str(counterexample))}" if counterexample else f"FAIL {name}"


# ---------------------------------------------------------------------------------------------------------------
# Plots
# ---------------------------------------------------------------------------------------------------------------

def _points(minutes: Sequence[float], values: Any) -> tuple[list[float], list[float]]:
    """The (x, y) pairs of a series, skipping None, NaN and anything else that is not a number."""
    if not isinstance(values, list):
        return [], []
    pairs = [(x, float(y)) for x, y in zip(minutes, values) if _is_number(y)]
    return [x for x, _ in pairs], [y for _, y in pairs]


def _wants_log_scale(values: Sequence[float]) -> bool:
    """True if the positive values span more than two decades."""
    positive = [v for v in values if v > 0]
    return bool(positive) and max(positive) / min(positive) > _LOG_SPAN


def _per_bucket(series: Mapping[str, Any]) -> str:
    bucket_s = series.get("bucket_s")
    return f"per {bucket_s:g} s bucket" if _is_number(bucket_s) else "per bucket"


def _finish(ax: Any, title: str, ylabel: str, labelled: bool, empty_text: str = "no data") -> None:
    """Title and labels; a legend if any line is labelled, else a note saying the plot is empty."""
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    if labelled:
        ax.legend(loc="upper left", fontsize="small")
    else:
        ax.text(0.5, 0.5, empty_text, transform=ax.transAxes, ha="center", va="center", color="grey")


def _line(ax: Any, xs: Sequence[float], ys: Sequence[float], **style: Any) -> Any:
    """A line; with dots on its points while they are few, so an isolated point between gaps still shows."""
    marker = "." if len(xs) <= _MARKED_POINTS else None
    (line,) = ax.plot(xs, ys, marker=marker, **style)
    return line


def _plot_lines(ax: Any, minutes: Sequence[float], named_values: Mapping[str, Any]) -> bool:
    """One line per named series; returns whether any was drawn."""
    for name, values in named_values.items():
        _line(ax, *_points(minutes, values), label=str(name))
    return bool(named_values)


def _draw_ops(axes: Sequence[Any], series: Mapping[str, Any], minutes: Sequence[float]) -> None:
    drawn = _plot_lines(axes[0], minutes, _section(series, "ops_per_s"))
    _finish(axes[0], "Operations per second", "ops per wall second", drawn)


def _draw_latency(axes: Sequence[Any], series: Mapping[str, Any], minutes: Sequence[float]) -> None:
    ax = axes[0]
    latency = _section(series, "latency_ms")
    points = {op: {q: _points(minutes, _section(latency, op).get(q)) for q in ("p50", "p99")} for op in latency}
    log = _wants_log_scale([y for by_q in points.values() for _, ys in by_q.values() for y in ys])
    for op, by_q in points.items():
        xs, ys = _keep_positive(*by_q["p50"]) if log else by_q["p50"]
        line = _line(ax, xs, ys, label=f"{op} p50")
        xs, ys = _keep_positive(*by_q["p99"]) if log else by_q["p99"]
        _line(ax, xs, ys, linestyle="--", color=line.get_color(), label=f"{op} p99")
    if log:
        ax.set_yscale("log")
    _finish(ax, "Latency p50 (solid) and p99 (dashed)", "latency (ms)", bool(points))


def _keep_positive(xs: list[float], ys: list[float]) -> tuple[list[float], list[float]]:
    pairs = [(x, y) for x, y in zip(xs, ys) if y > 0]
    return [x for x, _ in pairs], [y for _, y in pairs]


def _draw_budget(axes: Sequence[Any], series: Mapping[str, Any], minutes: Sequence[float]) -> None:
    tokens = {"min across servers": series.get("budget_tokens_min"),
              "median across servers": series.get("budget_tokens_median")}
    _plot_lines(axes[0], minutes, tokens)
    _finish(axes[0], "DataStore request budget left", "tokens", True)
    _line(axes[1], *_points(minutes, series.get("throttled")), color="tab:red", label="throttled calls")
    _finish(axes[1], "Throttled calls", f"calls {_per_bucket(series)}", True)


def _draw_locks(axes: Sequence[Any], series: Mapping[str, Any], minutes: Sequence[float]) -> None:
    locks = _section(series, "locks")
    drawn = _plot_lines(axes[0], minutes, {kind: locks.get(kind) for kind in ("waits", "steals", "lost")})
    _finish(axes[0], "Session locks: waits, steals and losses", f"events {_per_bucket(series)}", drawn)


def _draw_tx(axes: Sequence[Any], series: Mapping[str, Any], minutes: Sequence[float]) -> None:
    tx = _section(series, "tx")
    drawn = _plot_lines(axes[0], minutes, {outcome: tx.get(outcome) for outcome in ("committed", "aborted", "unknown")})
    _finish(axes[0], "Transactions by outcome", f"transactions {_per_bucket(series)}", drawn)


def _draw_errors(axes: Sequence[Any], series: Mapping[str, Any], minutes: Sequence[float]) -> None:
    errors = _section(series, "errors")
    seen = {code: values for code, values in errors.items() if any(_points(minutes, values)[1])}
    drawn = _plot_lines(axes[0], minutes, seen)
    _finish(axes[0], "Errors by code", f"errors {_per_bucket(series)}", drawn, empty_text="no errors")


def _draw_population(axes: Sequence[Any], series: Mapping[str, Any], minutes: Sequence[float]) -> None:
    _line(axes[0], *_points(minutes, series.get("servers_online")), label="servers online")
    _finish(axes[0], "Servers online", "servers", True)
    _line(axes[1], *_points(minutes, series.get("players_online")), color="tab:green", label="players online")
    _finish(axes[1], "Players online", "players", True)


_Draw = Callable[[Sequence[Any], Mapping[str, Any], Sequence[float]], None]

_PLOTS: tuple[tuple[str, tuple[str, ...], int, _Draw], ...] = (
    # (file stem, series keys it draws -- drawn if any is present, number of stacked axes, drawing function)
    ("ops", ("ops_per_s",), 1, _draw_ops),
    ("latency", ("latency_ms",), 1, _draw_latency),
    ("budget", ("budget_tokens_min", "budget_tokens_median", "throttled"), 2, _draw_budget),
    ("locks", ("locks",), 1, _draw_locks),
    ("tx", ("tx",), 1, _draw_tx),
    ("errors", ("errors",), 1, _draw_errors),
    ("population", ("servers_online", "players_online"), 2, _draw_population),
)

PLOT_NAMES: tuple[str, ...] = tuple(name for name, _, _, _ in _PLOTS)
"""Names of the plots `write_report` can write, as ``<name>.png``, in page order."""


def _minutes(series: Mapping[str, Any]) -> list[float] | None:
    """Bucket starts in simulated minutes, or None if the series has no time axis (then nothing is plotted)."""
    t = series.get("t")
    if not isinstance(t, list):
        return None
    return [x / 60.0 if _is_number(x) else math.nan for x in t]


def _write_plots(series: Mapping[str, Any], out_dir: Path) -> dict[str, Path]:
    """Each plot whose data is in ``series``, as ``out_dir/<name>.png``; every figure is closed."""
    minutes = _minutes(series)
    wanted = [plot for plot in _PLOTS if minutes is not None and any(key in series for key in plot[1])]
    if not wanted:
        return {}
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written: dict[str, Path] = {}
    for name, _, rows, draw in wanted:
        fig, axes = plt.subplots(rows, 1, sharex=True, squeeze=False, figsize=_FIGSIZE, layout="constrained")
        try:
            column = [row[0] for row in axes]
            draw(column, series, minutes)
            column[-1].set_xlabel("simulated time (min)")
            path = out_dir / f"{name}.png"
            fig.savefig(path, dpi=_DPI)
            written[name] = path
        finally:
            plt.close(fig)
    return written


# ---------------------------------------------------------------------------------------------------------------
# HTML page
# ---------------------------------------------------------------------------------------------------------------

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 70em; padding: 0 1em; color: #222; }
h1 { margin-bottom: 0.2em; }
.verdict { font-size: 4em; font-weight: bold; margin: 0.1em 0 0.3em; }
.pass { color: #1a7f37; } .fail { color: #cf222e; } .unknown { color: #777; } .inconclusive { color: #9a6700; }
.warning { background: #fff3cd; border: 1px solid #e0c36a; padding: 0.5em 1em; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.failed td { background: #ffebe9; }
.cx { white-space: pre-wrap; font-family: ui-monospace, monospace; }
pre { margin: 0.3em 0; white-space: pre-wrap; }
img { max-width: 100%; display: block; margin: 0.5em 0 1.5em; border: 1px solid #eee; }
"""


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _html_table(headers: Sequence[str], rows: list[list[str]], numeric_from: int = 1,
                row_classes: Sequence[str] | None = None) -> str:
    """A table of already-escaped cells; columns from ``numeric_from`` on are right-aligned."""
    head = "".join(f"<th>{_esc(h)}</th>" for h in headers)
    body = []
    for index, cells in enumerate(rows):
        css = f' class="{row_classes[index]}"' if row_classes and row_classes[index] else ""
        tds = "".join(f'<td class="num">{c}</td>' if i >= numeric_from else f"<td>{c}</td>"
                      for i, c in enumerate(cells))
        body.append(f"<tr{css}>{tds}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _html_checks(checks: list[dict[str, Any]]) -> str:
    rows, classes = [], []
    for check in checks:
        ok = check.get("ok") is True
        counterexample = check.get("counterexample")
        details = check.get("details")
        details_html = (f"<details><summary>details</summary><pre>{_esc(json.dumps(details, indent=2, default=str))}"
                        f"</pre></details>") if details else ""
        rows.append([_esc(check.get("name", "?")), "PASS" if ok else "FAIL",
                     f'<div class="cx">{_esc(counterexample) if counterexample else ""}</div>{details_html}'])
        classes.append("" if ok else "failed")
    return _html_table(("checker", "ok", "counterexample"), rows, numeric_from=3, row_classes=classes)


def _html_page(report: Mapping[str, Any], plots: Mapping[str, Path]) -> str:
    name = _section(report, "scenario").get("name", "(unnamed scenario)")
    verdict = _verdict(report)
    parts = [f"<h1>lodestore simulation: {_esc(name)}</h1>",
             f'<div class="verdict {verdict.lower()}">{verdict}</div>']
    if _section(report, "run").get("stopped_early") is True:
        parts.append('<p class="warning">The run stopped early: figures cover only the part that ran.</p>')
    problems, notes = _health_lines(report)
    parts += [f'<p class="warning">Inconclusive: {_esc(p)}</p>' for p in problems]
    parts += [f"<p>Note: {_esc(n)}</p>" for n in notes]
    parts += ["<h2>Summary</h2>",
              _html_table(("figure", "value"), [[_esc(k), _esc(v)] for k, v in _headline_rows(report)], 2)]
    sections = [
        ("Operations", ("operation",) + _OUTCOMES, _ops_rows(report)),
        ("Latency (ms)", ("operation",) + _LATENCY_COLUMNS, _latency_rows(report)),
        ("Errors by code", ("code", "count"), [(code, [count]) for code, count in _error_rows(report)]),
    ]
    for title, headers, rows in sections:
        if rows:
            parts += [f"<h2>{_esc(title)}</h2>",
                      _html_table(headers, [[_esc(label)] + [_esc(c) for c in cells] for label, cells in rows])]
    checks = _checks(report)
    if checks:
        parts += ["<h2>Checkers</h2>", _html_checks(checks)]
    parts += _html_timelines(checks)
    parts += _html_open_cloud(_section(report, "open_cloud"))
    if plots:
        parts.append("<h2>Plots</h2>")
        parts += [f'<img src="{_esc(path.name)}" alt="{_esc(plot)} plot">' for plot, path in plots.items()]
    parts += ["<h2>Scenario</h2>", _html_scenario(_section(report, "scenario"))]
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>lodestore report: {_esc(name)} ({verdict})</title>\n<style>{_CSS}</style>\n</head>\n"
            "<body>\n" + "\n".join(parts) + "\n</body>\n</html>\n")


def _html_timelines(checks: list[dict[str, Any]]) -> list[str]:
    """Links to the timelines of the keys the failing checkers name (`sim._timeline`, which the run writes next to
    the report, the first `MAX_REPORT_TIMELINES` of them); the others with the command that makes them."""
    from lodestore.sim._timeline import MAX_REPORT_TIMELINES, keys_named, timeline_href
    keys = keys_named(checks)
    if not keys:
        return []
    items = [f'<li><a href="{_esc(timeline_href(key))}">{_esc(key)}</a></li>' for key in keys[:MAX_REPORT_TIMELINES]]
    items += [f"<li>{_esc(key)}: <code>lodestore timeline RUN_DIR {_esc(key)}</code></li>"
              for key in keys[MAX_REPORT_TIMELINES:]]
    return ["<h2>Timelines of the keys the checkers name</h2>", f"<ul>{''.join(items)}</ul>"]


def _html_open_cloud(served: Mapping[str, Any]) -> list[str]:
    """A served run's Open Cloud requests by endpoint and status, and what became of the writes (`sim._outside`),
    with the first edits that the session holding the key wrote over, each linked to the key's timeline."""
    from lodestore.sim._timeline import timeline_href
    if not served:
        return []
    requests = _section(served, "requests")
    statuses = sorted({status for by in requests.values() for status in by})
    where = f"Served at {_esc(served.get('url'))}" if served.get("url") else "Joined from outside the run"
    parts = ["<h2>Open Cloud</h2>", f"<p>{where}: {_esc(_served_line(served))}.</p>"]
    if requests:
        parts.append(_html_table(("endpoint",) + tuple(statuses),
                                 [[_esc(e)] + [_esc(_fmt(by.get(s, 0))) for s in statuses]
                                  for e, by in sorted(requests.items())]))
    writes = _section(served, "writes")
    if writes:
        parts.append(f"<p>Writes: {_esc(_outside_line(writes))}.</p>")
        examples = writes.get("examples") or []
        if examples:
            rows = [[f'<a href="{_esc(timeline_href(x["key"]))}">{_esc(x["key"])}</a>', _esc(x["store"]),
                     _esc(x["version"]), _esc(x["t_ms"] / 1000), _esc(x["held_by"]), _esc(x["replaced_by"]),
                     _esc(x["replaced_at_ms"] / 1000), "yes" if x.get("seen") else "no"]
                    for x in examples]
            parts += ["<p>Edits a session's save replaced while it held the key (the first of them):</p>",
                      _html_table(("key", "data store", "version", "at (s)", "held by", "replaced by", "at (s)",
                                   "read the edit"), rows, numeric_from=2)]
    return parts


def _html_scenario(scenario: Mapping[str, Any]) -> str:
    rows = [[_esc(key), _esc(value if isinstance(value, str) else json.dumps(value, default=str))]
            for key, value in scenario.items()]
    return _html_table(("setting", "value"), rows, numeric_from=2) if rows else "<p>No scenario recorded.</p>"


# ---------------------------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------------------------

def write_report(report: dict, out_dir: str | Path) -> dict[str, Path]:
    """Write a run's report files into ``out_dir`` (created with its parents) and return their paths.

    Writes ``report.json`` first (``json.dumps(report, indent=2, sort_keys=True)``, so the data survives even if
    plotting fails), then one ``<name>.png`` per plot whose series exist (see `PLOT_NAMES`), then ``report.html``,
    a self-contained page that shows the PNGs by relative path. Returns ``{"json": path, "html": path,
    "<plot name>": path, ...}``::

        paths = write_report(report, "runs/cart-rush")
        print(summary_table(report))
        print("open", paths["html"])
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / "report.json"
    json_path.write_text(json.dumps(report, indent=2, sort_keys=True), encoding="utf-8")
    plots = _write_plots(_section(report, "series"), out)
    html_path = out / "report.html"
    html_path.write_text(_html_page(report, plots), encoding="utf-8")
    return {"json": json_path, "html": html_path, **plots}
