"""cluster.yaml, the Ray cluster launcher config: Ray's own launcher validation accepts it, and its AWS example once
uncommented; every node installs lodestore from the mounted checkout, the head starts Ray and the workers join it.
Offline: nothing here starts Ray or opens a connection. Also `examples/cluster_run.py`, the `ray submit` entry."""

from __future__ import annotations

import os
import re
import runpy
import shlex
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

ROOT = Path(__file__).resolve().parent.parent
CLUSTER_YAML = ROOT / "cluster.yaml"
LODESTORE_RSYNC_EXCLUDES = {".venv", ".git", "lodestore-runs", "lodestore-data", "__pycache__"}


class _StrictLoader(yaml.SafeLoader):
    """yaml.safe_load, except that a key given twice in one mapping is an error (safe_load keeps the last one
    silently, so the AWS example uncommented over a still-present local block would pass unnoticed)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"key {key!r} given twice", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def _load(text: str) -> dict:
    config = yaml.load(text, Loader=_StrictLoader)
    assert isinstance(config, dict), f"cluster.yaml is not a mapping: {config!r}"
    return config


def _block(lines: list[str], name: str) -> tuple[int, int]:
    """Line indices of the `# BEGIN name` and `# END name` markers, each present once, in order."""
    begins = [i for i, line in enumerate(lines) if line.rstrip() == f"# BEGIN {name}"]
    ends = [i for i, line in enumerate(lines) if line.rstrip() == f"# END {name}"]
    assert len(begins) == 1 and len(ends) == 1 and begins[0] < ends[0], f"cluster.yaml: BEGIN/END {name} markers"
    return begins[0], ends[0]


def _aws_variant(text: str) -> str:
    """What a user gets by following the file's instructions: local block deleted, aws-example block uncommented."""
    lines = text.splitlines()
    start, end = _block(lines, "aws-example")
    uncommented = []
    for line in lines[start + 1:end]:
        assert line.startswith("# ") or line == "#", f"aws-example line is not commented out: {line!r}"
        uncommented.append(line[2:])
    lines[start + 1:end] = uncommented
    start, end = _block(lines, "local")
    del lines[start:end + 1]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def text() -> str:
    return CLUSTER_YAML.read_text()


@pytest.fixture(scope="module")
def config(text) -> dict:
    return _load(text)


@pytest.fixture(scope="module")
def prepared(config) -> dict:
    """The config as `ray up` sees it: defaults merged, setup commands merged per node kind, node types filled in."""
    prepared = prepare_config(config)
    validate_config(prepared)
    return prepared


def _ray_start(commands: list[str]) -> str:
    starts = [c for c in commands if re.search(r"\bray start\b", c)]
    assert len(starts) == 1, f"expected one `ray start` command, got {commands}"
    return starts[0]


def _head_port(prepared: dict) -> int:
    match = re.search(r"--port[= ](\d+)", _ray_start(prepared["head_start_ray_commands"]))
    return int(match.group(1)) if match else 6379


def _mount_target(config: dict) -> str:
    """The node path the checkout is copied to: the one mount whose source is the checkout root."""
    targets = [t for t, source in config["file_mounts"].items() if (ROOT / source).resolve() == ROOT]
    assert len(targets) == 1, f"file_mounts must copy the checkout root once: {config['file_mounts']}"
    return targets[0].rstrip("/")


def _lodestore_installs(commands: list[str], target: str) -> list[list[str]]:
    """The `pip install [-e] <target>` commands among `commands`, as words."""
    found = []
    for command in commands:
        for part in re.split(r"&&|\|\||;", command):
            words = shlex.split(part)
            if len(words) >= 3 and Path(words[0]).name == "pip" and words[1] == "install" and target in words[2:]:
                found.append(words)
    return found


def test_ray_launcher_accepts_the_config(prepared, config):
    node_types = prepared["available_node_types"]
    workers = [t for name, t in node_types.items() if name != prepared["head_node_type"]] or list(node_types.values())
    assert all(t["max_workers"] == len(config["provider"]["worker_ips"]) for t in workers)


def test_local_provider_names_head_and_workers(config):
    provider = config["provider"]
    assert provider["type"] == "local"
    assert provider["head_ip"] and provider["worker_ips"]
    assert provider["head_ip"] not in provider["worker_ips"]
    assert len(set(provider["worker_ips"])) == len(provider["worker_ips"])
    assert config["max_workers"] == len(provider["worker_ips"])
    assert config["cluster_name"] == "lodestore"
    assert config["auth"]["ssh_user"]


def test_the_checkout_is_copied_without_local_state(config):
    target = _mount_target(config)
    assert target.startswith("~/")
    assert LODESTORE_RSYNC_EXCLUDES <= set(config["rsync_exclude"])


@pytest.mark.parametrize("kind", ["head_setup_commands", "worker_setup_commands"])
def test_every_node_installs_lodestore_from_the_mount(prepared, config, kind):
    installs = _lodestore_installs(prepared[kind], _mount_target(config))
    assert installs, f"no `pip install ... {_mount_target(config)}` in {kind}: {prepared[kind]}"


def test_ray_runs_from_the_environment_lodestore_is_installed_in(prepared, config):
    """`ray start` (and `ray submit`'s python) must be the one that can import lodestore: the pip that installs it
    is either the PATH's own or a venv's, and then login shells activate that venv."""
    (pip, *_), = _lodestore_installs(prepared["setup_commands"], _mount_target(config))
    if pip != "pip":
        venv = str(Path(pip).parent.parent)
        activate = f"source {venv}/bin/activate"
        assert any(activate in c and ">> ~/.bashrc" in c for c in prepared["setup_commands"]), \
            f"{venv} is not activated in ~/.bashrc"
        assert any(f"venv {venv}" in c for c in prepared["setup_commands"]), f"{venv} is never created"


def test_head_starts_ray_with_the_autoscaler(prepared):
    commands = prepared["head_start_ray_commands"]
    start = _ray_start(commands)
    assert "--head" in start
    assert "--autoscaling-config=~/ray_bootstrap_config.yaml" in start   # the head's autoscaler sets up the workers
    assert commands.index(start) > commands.index("ray stop")


def test_workers_join_the_heads_address(prepared):
    commands = prepared["worker_start_ray_commands"]
    start = _ray_start(commands)
    assert re.search(rf"--address[= ]\$RAY_HEAD_IP:{_head_port(prepared)}\b", start), start
    assert "--head" not in start
    assert commands.index(start) > commands.index("ray stop")


@pytest.mark.parametrize("kind", ["head_start_ray_commands", "worker_start_ray_commands"])
def test_ray_starts_without_token_auth(prepared, kind):
    start = _ray_start(prepared[kind])
    assert re.search(r"\bexport RAY_AUTH_MODE=disabled\b.*\bray start\b", start), start


def test_aws_example_once_uncommented_is_valid(text, config):
    aws = _load(_aws_variant(text))
    assert aws["provider"]["type"] == "aws"
    assert aws["head_node_type"] in aws["available_node_types"]
    assert len(aws["available_node_types"]) >= 2
    prepared = prepare_config(aws)
    validate_config(prepared)
    for key in ("file_mounts", "rsync_exclude", "setup_commands", "head_start_ray_commands",
                "worker_start_ray_commands"):
        assert aws[key] == config[key], f"the AWS example must share {key} with the local config"
    for kind in ("head_setup_commands", "worker_setup_commands"):
        assert _lodestore_installs(prepared[kind], _mount_target(aws)), kind
    assert any("boto3" in c for c in prepared["head_setup_commands"])


def test_uncommenting_aws_over_the_local_block_is_refused(text):
    lines = text.splitlines()
    start, end = _block(lines, "aws-example")
    lines[start + 1:end] = [line[2:] for line in lines[start + 1:end]]
    with pytest.raises(yaml.constructor.ConstructorError, match="given twice"):
        _load("\n".join(lines))


@pytest.mark.parametrize("breakage", [
    lambda c: c.update(setup_command=c.pop("setup_commands")),                 # a misspelt key
    lambda c: c.update(head_start_ray_commands="ray start --head"),            # a string, not a list
    lambda c: c["auth"].update(ssh_key="~/.ssh/id_rsa"),                        # not an auth field
])
def test_the_validation_used_here_catches_broken_configs(config, breakage):
    broken = yaml.safe_load(yaml.safe_dump(config))
    breakage(broken)
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(broken))


def test_cluster_run_is_lodestore_simulate_on_the_cluster(monkeypatch, tmp_path):
    import lodestore.sim as cli

    calls = []

    def fake_main(argv):
        calls.append((argv, Path(os.getcwd())))
        return 1

    monkeypatch.setattr(cli, "main", fake_main)
    monkeypatch.chdir(tmp_path)   # `ray submit` runs it from the home directory; restored afterwards
    monkeypatch.setattr(sys, "argv", ["cluster_run.py", "examples/scenarios/quickstart.toml", "--players", "50"])
    with pytest.raises(SystemExit) as exit_:
        runpy.run_path(str(ROOT / "examples" / "cluster_run.py"), run_name="__main__")
    assert exit_.value.code == 1
    assert calls == [(["simulate", "--address", "auto", "examples/scenarios/quickstart.toml", "--players", "50"],
                      ROOT)]
