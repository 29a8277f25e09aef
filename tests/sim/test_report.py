"""Run reports: report.json round-trips, the plots are real PNGs, the html page and the terminal summary show
every headline figure, checker and the verdict, and partial or empty reports still render."""

from __future__ import annotations

import copy
import json
import math
import re
import warnings
from pathlib import Path

import pytest

from lodestore.sim._report import PLOT_NAMES, _wants_log_scale, summary_table, write_report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
XSS = "<script>alert('dup')</script>"
OPS = ("mint", "grant", "purchase", "trade", "hot")


def _report(buckets: int = 4) -> dict:
    """A realistic finished run: 4 buckets of 30 s, five ops, two error codes, one failing checker."""
    t = [30.0 * i for i in range(buckets)]
    return {
        "format": 1,
        "scenario": {"name": "cart rush & trade", "source": "examples/cart_rush.toml", "seed": 7,
                     "duration_s": 120.0, "time_scale": 10.0, "servers": {"count": 3}},
        "run": {"started_at": "2025-01-02T03:04:05+00:00", "engine": "in-process", "wall_s": 12.5,
                "simulated_s": 120.0, "stopped_early": False, "player_hours": 4.25, "player_hours_per_s": 0.34},
        "totals": {
            "ops_by_kind": {"mint": {"ok": 1234, "failed": 3, "unknown": 1},
                            "grant": {"ok": 400, "failed": 0, "unknown": 0},
                            "purchase": {"ok": 87, "failed": 5, "unknown": 2},
                            "trade": {"ok": 61, "failed": 9, "unknown": 4},
                            "hot": {"ok": 9000, "failed": 11, "unknown": 0}},
            "errors_by_code": {"KeyNotLoadedError": 6, "DataStoreError 502": 19},
            "tx": {"committed": 61, "aborted": 9, "unknown": 4},
            "locks": {"acquired": 150, "waits": 23, "steals": 2, "lost": 1},
            "throttled": 77,
            "servers": {"started": 4, "stopped": 1, "crashed": 1, "stalled": 0, "peak": 3},
            "players": {"joins": 310, "leaves": 250, "teleports": 12, "peak_online": 120, "load_failures": 2},
        },
        "latency_ms": {"load": {"count": 310, "p50": 41.5, "p90": 88.0, "p99": 240.25, "max": 1210.0},
                       "mint": {"count": 1238, "p50": 12.0, "p90": 30.5, "p99": 95.0, "max": 400.0}},
        "series": {
            "bucket_s": 30.0,
            "t": t,
            "ops_per_s": {op: [float(10 * (i + 1) + k) for i in range(buckets)] for k, op in enumerate(OPS)},
            "latency_ms": {"load": {"p50": [40.0, None, 45.0, 41.0][:buckets],
                                    "p99": [200.0, 5000.0, float("nan"), 240.0][:buckets]},
                           "mint": {"p50": [1.0] * buckets, "p99": [9.0] * buckets}},
            "errors": {"KeyNotLoadedError": [0, 2, 4, 0][:buckets], "DataStoreError 502": [0, 0, 10, 9][:buckets]},
            "tx": {"committed": [10, 20, 20, 11][:buckets], "aborted": [0, 3, 6, 0][:buckets],
                   "unknown": [0, 0, 4, 0][:buckets]},
            "locks": {"waits": [1, 10, 10, 2][:buckets], "steals": [0, 1, 1, 0][:buckets],
                      "lost": [0, 0, 1, 0][:buckets]},
            "throttled": [0, 20, 50, 7][:buckets],
            "budget_tokens_min": [None, 12.0, 0.0, 3.5][:buckets],
            "budget_tokens_median": [300.0, 180.0, 40.0, 90.0][:buckets],
            "servers_online": [3, 3, 2, 3][:buckets],
            "players_online": [60, 120, 110, 90][:buckets],
        },
        "checks": [
            {"name": "conservation", "ok": True, "counterexample": None, "details": {"minted": 5000}},
            {"name": "acknowledged_writes", "ok": True, "counterexample": None, "details": {}},
            {"name": "no_duplicate_items", "ok": False,
             "counterexample": f"item sword#1 in p1 and p2 {XSS}", "details": {"duplicates": ["sword#1"]}},
        ],
        "verdict": "fail",
    }


def _zeroed(report: dict, buckets: int) -> dict:
    """``report`` with every series ``buckets`` long and all zero (None for latency), no errors at all."""
    zeroed = copy.deepcopy(report)
    series = zeroed["series"]
    series["t"] = [30.0 * i for i in range(buckets)]
    for key in ("throttled", "budget_tokens_min", "budget_tokens_median", "servers_online", "players_online"):
        series[key] = [0] * buckets
    for key in ("ops_per_s", "tx", "locks"):
        series[key] = {name: [0] * buckets for name in series[key]}
    series["latency_ms"] = {op: {"p50": [None] * buckets, "p99": [None] * buckets} for op in series["latency_ms"]}
    series["errors"] = {}
    return zeroed


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> tuple[dict, dict[str, Path]]:
    report = _report()
    return report, write_report(report, tmp_path_factory.mktemp("report") / "runs" / "cart")


@pytest.fixture(scope="module")
def page(written) -> str:
    return written[1]["html"].read_text(encoding="utf-8")


def _assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, path
    assert len(data) > 1000, path


def test_writes_json_html_and_every_plot_as_png(written):
    report, paths = written
    assert set(paths) == {"json", "html", *PLOT_NAMES}
    assert set(PLOT_NAMES) == {"ops", "latency", "budget", "locks", "tx", "errors", "population"}
    out_dir = paths["json"].parent
    for name in PLOT_NAMES:
        assert paths[name] == out_dir / f"{name}.png"
        _assert_png(paths[name])
    assert paths["html"] == out_dir / "report.html"


def test_report_json_loads_back_equal_and_is_sorted_indented(written):
    report, paths = written
    text = paths["json"].read_text(encoding="utf-8")
    loaded = json.loads(text)
    nan_free = copy.deepcopy(loaded)
    assert math.isnan(nan_free["series"]["latency_ms"]["load"]["p99"].pop(2))   # NaN != NaN: compare the rest
    expected = copy.deepcopy(report)
    expected["series"]["latency_ms"]["load"]["p99"].pop(2)
    assert nan_free == expected
    assert text == json.dumps(report, indent=2, sort_keys=True)


def test_html_shows_verdict_checkers_and_escapes_data(page):
    assert re.search(r'class="verdict fail">FAIL<', page)
    for name in ("conservation", "acknowledged_writes", "no_duplicate_items"):
        assert name in page
    assert "item sword#1 in p1 and p2 &lt;script&gt;alert(&#x27;dup&#x27;)&lt;/script&gt;" in page
    assert "<script" not in page
    assert "cart rush &amp; trade" in page and "cart rush & trade" not in page


def test_html_shows_headline_figures_and_latency(page):
    for figure in ("1,234", "9,000", "DataStoreError 502", "240.2", "1,210.0", "4.25", "0.340", "in-process"):
        assert figure in page, figure


def test_html_is_self_contained_and_its_images_exist(written, page):
    _, paths = written
    sources = re.findall(r'<img src="([^"]+)"', page)
    assert sorted(sources) == sorted(f"{name}.png" for name in PLOT_NAMES)
    for source in sources:
        _assert_png(paths["html"].parent / source)
    assert "http://" not in page and "https://" not in page and "<link" not in page
    assert "<style>" in page


def test_summary_table_shows_each_headline_figure(written):
    table = summary_table(written[0])
    lines = table.splitlines()
    assert "\x1b" not in table
    for figure in ("cart rush & trade", "120.0 s (2.0 min)", "12.5 s", "4.25", "0.340",
                   "committed 61, aborted 9, unknown 4", "acquired 150, waits 23, steals 2, lost 1"):
        assert figure in table, figure
    assert re.search(r"^throttled calls\s+77$", table, re.M)
    assert re.search(r"^\s+mint\s+1,234\s+3\s+1$", table, re.M)
    assert re.search(r"^\s+hot\s+9,000\s+11\s+0$", table, re.M)
    assert re.search(r"^\s+DataStoreError 502\s+19$", table, re.M)
    assert re.search(r"^\s+load\s+310\s+41.5\s+88.0\s+240.2\s+1,210.0$", table, re.M)
    assert "  PASS conservation" in lines
    assert f"  FAIL no_duplicate_items: item sword#1 in p1 and p2 {XSS}" in lines
    assert lines[-1] == "VERDICT: FAIL"


def test_summary_table_columns_line_up(written):
    lines = summary_table(written[0]).splitlines()
    ops_header = next(line for line in lines if line.startswith("operations"))
    mint = next(line for line in lines if line.strip().startswith("mint "))
    assert len(ops_header) == len(mint)                     # right-aligned under the "unknown" column


def test_summary_flattens_a_multi_line_counterexample():
    report = {"format": 1, "checks": [{"name": "single_holder", "ok": False,
                                       "counterexample": "p1 held by\n s1 and s2", "details": {}}], "verdict": "fail"}
    assert "  FAIL single_holder: p1 held by s1 and s2" in summary_table(report).splitlines()


def test_minimal_report_writes_json_and_html_only(tmp_path):
    report = {"format": 1, "verdict": "pass"}
    paths = write_report(report, tmp_path / "minimal")
    assert set(paths) == {"json", "html"}
    assert json.loads(paths["json"].read_text()) == report
    assert 'class="verdict pass">PASS<' in paths["html"].read_text()
    table = summary_table(report)
    assert table.splitlines()[-1] == "VERDICT: PASS"
    assert "PASS " not in table.replace("VERDICT: PASS", "")   # no checker lines invented


def test_a_served_runs_report_says_what_came_in_and_which_edits_were_written_over(tmp_path):
    example = {"store": "lodestore/records/players", "scope": "global", "key": "player_00004", "version": 4,
               "t_ms": 46_750, "held_by": "server_0001", "replaced_by": "server_0001", "replaced_at_ms": 61_070,
               "replacing_version": 5, "seen": True}
    writes = {"writes": 3, "kept": 1, "replaced": 2, "replaced_unseen": 1, "held": 1, "held_replaced": 1,
              "by_store": {}, "examples": [example]}
    served = {"url": "http://127.0.0.1:8787/", "total": 7, "outside_calls": 9, "writes": writes,
              "requests": {"GET /cloud/v2/universes/{universe}/data-stores": {"200": 2, "403": 1}}}
    page = write_report({"format": 1, "verdict": "pass", "open_cloud": served}, tmp_path / "served")["html"]
    html = page.read_text()
    assert '<a href="timelines/player_00004.html">player_00004</a>' in html
    assert "Served at http://127.0.0.1:8787/: requests 7, storage calls from outside 9." in html
    table = summary_table({"format": 1, "verdict": "pass", "open_cloud": served})
    assert ("open cloud writes         3: kept 1, replaced by a game server 2 (1 unread); to keys a session held 1, "
            "1 of them replaced") in table.splitlines()
    joined = {"url": None, "total": None, "requests": {}, "outside_calls": 4, "writes": {**writes, "examples": []}}
    assert "open cloud                storage calls from outside 4" in summary_table({"open_cloud": joined})
    html = write_report({"format": 1, "verdict": "pass", "open_cloud": joined}, tmp_path / "joined")["html"]
    assert "Joined from outside the run: storage calls from outside 4." in html.read_text()


def test_partial_series_plots_only_what_exists(tmp_path):
    report = {"format": 1, "series": {"bucket_s": 10.0, "t": [0.0, 10.0], "players_online": [5, 7]},
              "totals": {"ops_by_kind": {}}, "verdict": "pass"}
    paths = write_report(report, tmp_path)
    assert set(paths) == {"json", "html", "population"}
    _assert_png(paths["population"])
    assert re.findall(r'<img src="([^"]+)"', paths["html"].read_text()) == ["population.png"]


@pytest.mark.filterwarnings("error")
@pytest.mark.parametrize("buckets", [3, 0], ids=["all-zero", "no-buckets"])
def test_all_zero_or_empty_series_render_every_plot_without_warnings(tmp_path, buckets):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        paths = write_report(_zeroed(_report(), buckets), tmp_path)
    assert set(paths) == {"json", "html", *PLOT_NAMES}
    for name in PLOT_NAMES:
        _assert_png(paths[name])


def test_latency_goes_log_only_beyond_two_decades():
    assert _wants_log_scale([1.0, 50.0, 101.0])
    assert not _wants_log_scale([1.0, 50.0, 100.0])
    assert not _wants_log_scale([0.0, 0.0])
    assert not _wants_log_scale([])
