"""`lodestore serve`'s options, as plain Python: what it refuses before it starts anything. (Serving itself is what
the other tests of this folder drive through `create_app`.)"""

from __future__ import annotations

import socket

from lodestore.sim._cli import build_parser, main


def test_serve_defaults():
    args = build_parser().parse_args(["serve"])
    assert (args.world, args.port, args.host, args.api_key, args.universe_id, args.address) == \
        ("default", 8787, "127.0.0.1", None, 1, None)
    args = build_parser().parse_args(["serve", "--api-key", "a", "--api-key", "b:datastores.read", "--port", "9"])
    assert args.api_key == ["a", "b:datastores.read"] and args.port == 9


def test_serve_refuses_bad_options_before_starting_anything(capsys):
    assert main(["serve", "--api-key", "k:datastores.destroy"]) == 2
    assert "unknown permission" in capsys.readouterr().err
    assert main(["serve", "--universe-id", "0"]) == 2
    assert "--universe-id" in capsys.readouterr().err
    assert main(["serve", "--port", "70000"]) == 2


def test_serve_refuses_a_port_in_use(capsys):
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        assert main(["serve", "--port", str(port)]) == 2
    assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err
