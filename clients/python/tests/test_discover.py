"""connect() finds the daemon like the CLI (src/paths.rs `discover`): the same order, checked
on the search itself and against a real daemon reached through a config file, the variables
and the default socket."""

from __future__ import annotations

import os
import pathlib

import pytest
from conftest import feed_config

import ws_sidecar
from ws_sidecar.discover import discover


def unix(p: str | pathlib.Path) -> ws_sidecar.Found:
    return ws_sidecar.Found(pathlib.Path(p), None, "")


def target(f: ws_sidecar.Found) -> str:
    return f.address


def test_the_order_is_address_config_variable_config_variable_then_defaults(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('[grpc]\nlisten = ["127.0.0.1:7000", "unix:/x/g.sock"]\n[oops\n')
    # A TOML error elsewhere in the file is still an error: the file is not the daemon's.
    with pytest.raises(ws_sidecar.DiscoveryError, match="c.toml"):
        discover(config=cfg, env={}, root=False)
    cfg.write_text('[grpc]\nlisten = ["127.0.0.1:7000", "unix:/x/g.sock"]\n')
    f = discover(config=cfg, env={}, root=False)
    assert target(f) == "unix:/x/g.sock" and "c.toml" in f.found_from
    cfg.write_text('[grpc]\nlisten = "127.0.0.1:7000"\n')
    assert target(discover(config=cfg, env={}, root=False)) == "127.0.0.1:7000"
    env = {"WS_SIDECAR_GRPC": "127.0.0.1:1", "WS_SIDECAR_CONFIG": "/nonexistent.toml"}
    assert target(discover("unix:/a.sock", cfg, env, False)) == "unix:/a.sock"
    assert target(discover(None, cfg, env, False)) == "127.0.0.1:7000"
    assert target(discover(None, None, env, False)) == "127.0.0.1:1"
    del env["WS_SIDECAR_GRPC"]
    with pytest.raises(ws_sidecar.DiscoveryError, match="nonexistent.toml: cannot read"):
        discover(None, None, env, False)
    env["WS_SIDECAR_CONFIG"] = str(cfg)
    assert target(discover(None, None, env, False)) == "127.0.0.1:7000"
    for bad in ("nonsense", "unix:", "host:99999"):
        with pytest.raises(
            ws_sidecar.DiscoveryError, match="expected unix:PATH or HOST:PORT|empty"
        ):
            discover(bad, env={}, root=False)
    assert target(discover("/abs.sock", env={}, root=False)) == "unix:/abs.sock"


def test_by_default_the_first_socket_that_exists(tmp_path):
    run = tmp_path / "run"
    env = {"HOME": str(tmp_path), "XDG_RUNTIME_DIR": str(run)}
    state_sock = tmp_path / ".local" / "state" / "ws-sidecar" / "grpc.sock"
    sock = run / "ws-sidecar" / "grpc.sock"
    if not pathlib.Path("/run/ws-sidecar/grpc.sock").exists():
        f = discover(env=env, root=False)
        assert target(f) == "unix:/run/ws-sidecar/grpc.sock"
        # Nothing exists: every place looked at, for the error.
        assert f.looked == (sock, state_sock, pathlib.Path("/run/ws-sidecar/grpc.sock"))
    # A daemon started without XDG_RUNTIME_DIR (cron, su) is found from a login shell.
    state_sock.parent.mkdir(parents=True)
    state_sock.write_text("")
    assert target(discover(env=env, root=False)) == f"unix:{state_sock}"
    assert discover(env=env, root=False).looked == ()
    state_sock.unlink()
    sock.parent.mkdir(parents=True)
    sock.write_text("")
    assert target(discover(env=env, root=False)) == f"unix:{sock}"
    # The user's config file names another socket: it comes first once it exists.
    cfg = tmp_path / ".config" / "ws-sidecar" / "config.toml"
    cfg.parent.mkdir(parents=True)
    other = tmp_path / "other.sock"
    cfg.write_text(f'[grpc]\nlisten = "unix:{other}"\n')
    assert target(discover(env=env, root=False)) == f"unix:{sock}"
    other.write_text("")
    assert target(discover(env=env, root=False)) == f"unix:{other}"
    # Root never reads a user's config, nor the user's runtime directory.
    assert target(discover(env=env, root=True)) != f"unix:{other}"
    # systemd's RuntimeDirectory comes before the user's places.
    rd = tmp_path / "rd"
    rd.mkdir()
    (rd / "grpc.sock").write_text("")
    other.unlink()
    env["RUNTIME_DIRECTORY"] = f"{rd}:/run/else"
    assert target(discover(env=env, root=False)) == f"unix:{rd}/grpc.sock"
    # Without XDG_RUNTIME_DIR a user's daemon keeps its sockets in its state directory.
    env = {"HOME": str(tmp_path), "XDG_STATE_HOME": str(tmp_path / "st")}
    st = tmp_path / "st" / "ws-sidecar" / "grpc.sock"
    st.parent.mkdir(parents=True)
    st.write_text("")
    assert target(discover(env=env, root=False)) == f"unix:{st}"


def test_connect_reaches_a_real_daemon_through_config_variables_and_defaults(
    upstream, make_daemon, tmp_path, monkeypatch
):
    d = make_daemon(feed_config(upstream.url))
    for k in list(os.environ):
        if k.startswith("WS_SIDECAR") or k in ("RUNTIME_DIRECTORY", "XDG_RUNTIME_DIR"):
            monkeypatch.delenv(k)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))

    def endpoints(**kw) -> list[str]:
        with ws_sidecar.connect(**kw) as sc:
            return list(sc.status())

    assert endpoints(config=d.config) == ["feed"]
    monkeypatch.setenv("WS_SIDECAR_CONFIG", str(d.config))
    assert endpoints() == ["feed"]
    monkeypatch.setenv("WS_SIDECAR_GRPC", d.address)
    monkeypatch.setenv("WS_SIDECAR_CONFIG", "/nonexistent.toml")  # the address comes first
    assert endpoints() == ["feed"]
    monkeypatch.delenv("WS_SIDECAR_GRPC")
    monkeypatch.delenv("WS_SIDECAR_CONFIG")
    # A daemon run by hand as a user makes $XDG_RUNTIME_DIR/ws-sidecar/grpc.sock (tests and CI
    # may run as root, whose defaults are the system places: be a user here).
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(d.dir))
    os.rename(d.run, d.dir / "ws-sidecar")
    try:
        assert endpoints() == ["feed"]
    finally:
        os.rename(d.dir / "ws-sidecar", d.run)
    # Nothing there: the error names the place and what to do.
    monkeypatch.setenv("WS_SIDECAR_GRPC", f"unix:{tmp_path}/none.sock")
    with pytest.raises(
        ws_sidecar.Unreachable, match=r"no ws-sidecar socket at .*none.sock \(\$WS_SIDECAR_GRPC\)"
    ):
        ws_sidecar.connect()
    # A socket that is not the gRPC API (the NDJSON one) does not pass the check.
    with pytest.raises(ws_sidecar.Unreachable, match="does not answer at"):
        ws_sidecar.connect(f"unix:{d.run / 'stream.sock'}", timeout=3)
    assert ws_sidecar.connect(f"unix:{tmp_path}/none.sock", check=False) is not None
