"""`--dashboard`: local Ray with its dashboard on 127.0.0.1, and the cases where it cannot be had."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from lodestore.sim import RunOptions
from lodestore.sim._cli import main
from lodestore.storage import ConfigError


def test_dashboard_needs_the_ray_engine_on_local_ray():
    with pytest.raises(ConfigError, match="--in-process") as exc:
        RunOptions(engine="in-process", dashboard=True)
    assert exc.value.field == "dashboard"
    with pytest.raises(ConfigError, match="cluster"):
        RunOptions(address="auto", dashboard=True)
    with pytest.raises(ConfigError, match="true or false"):
        RunOptions(dashboard="yes")


def test_simulate_refuses_dashboard_in_process_before_running(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["simulate", "examples/scenarios/quickstart.toml", "--in-process", "--dashboard", "--out", str(out)])
    assert code == 2
    assert "--dashboard" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.ray
def test_local_ray_dashboard_and_metrics_answer_on_loopback():
    """In a process of its own (the test session's Ray has no dashboard): the dashboard's URL and the node's
    metrics (Prometheus text) are on 127.0.0.1 and answer."""
    script = textwrap.dedent("""
        import json, urllib.request
        import ray
        from lodestore.storage._world import _ensure_ray
        from lodestore.storage import metrics_url
        url = _ensure_ray(None, dashboard=True)
        with urllib.request.urlopen(url + "/api/version", timeout=30) as r:
            version = json.loads(r.read())
        metrics = metrics_url()
        with urllib.request.urlopen(metrics, timeout=30) as r:
            text = r.read().decode()
        print(json.dumps({"url": url, "ray": version["ray_version"], "now": ray.__version__, "metrics": metrics,
                          "prometheus": "# TYPE" in text}))
        ray.shutdown()
    """)
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=180, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    assert answer["url"].startswith("http://127.0.0.1:")
    assert answer["ray"] == answer["now"]
    assert answer["metrics"].startswith("http://127.0.0.1:") and answer["prometheus"]
