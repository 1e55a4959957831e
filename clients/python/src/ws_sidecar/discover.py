"""Where the daemon's gRPC API is: the same search as the daemon's own CLI (src/paths.rs
`discover`), so an app finds the daemon wherever `ws-sidecar status` finds it.

Order: an explicit address; the `grpc.listen` of a config file the app names; `$WS_SIDECAR_GRPC`;
the `grpc.listen` of `$WS_SIDECAR_CONFIG`; then the first that exists of the user's config
file's socket (`$XDG_CONFIG_HOME/ws-sidecar/config.toml`, not for root),
`$RUNTIME_DIRECTORY/grpc.sock`, the sockets a daemon run by this user makes by default
(`$XDG_RUNTIME_DIR/ws-sidecar/grpc.sock`, and the XDG state directory's for one started without
`$XDG_RUNTIME_DIR`), the system config's socket (`/etc/ws-sidecar/config.toml`) and
`/run/ws-sidecar/grpc.sock`; when none exists, the last, with every place looked at.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Mapping

from .errors import DiscoveryError

#: The system-wide config file a packaged install uses.
SYSTEM_CONFIG = "/etc/ws-sidecar/config.toml"
#: The system-wide runtime directory (`RuntimeDirectory=ws-sidecar`).
SYSTEM_RUNTIME = "/run/ws-sidecar"


@dataclass(frozen=True)
class Found:
    """A daemon address and why it was chosen (for error messages)."""

    #: A Unix socket path, or None for TCP.
    unix: Path | None
    #: `HOST:PORT` for TCP, or None for a Unix socket.
    tcp: str | None
    #: e.g. ``$WS_SIDECAR_GRPC``, ``grpc.listen in /etc/ws-sidecar/config.toml``.
    found_from: str
    #: When the search found no socket at all: every place it looked, in order. Empty otherwise.
    looked: tuple[Path, ...] = ()

    @property
    def address(self) -> str:
        """The address as the daemon's config spells it: ``unix:PATH`` or ``HOST:PORT``."""
        return f"unix:{self.unix}" if self.unix is not None else str(self.tcp)

    @property
    def grpc_target(self) -> str:
        """The target string for `grpc.insecure_channel`."""
        return self.address

    def exists(self) -> bool:
        """Whether the socket file is there (a TCP address always counts as there)."""
        return self.unix is None or self.unix.exists()


def parse_address(s: str, found_from: str) -> Found:
    """Reads ``unix:PATH``, an absolute PATH, or ``HOST:PORT`` (the CLI's `--grpc` syntax)."""
    if s.startswith("unix:"):
        if not s[5:]:
            raise DiscoveryError(f"{found_from}: empty unix socket path")
        return Found(Path(s[5:]), None, found_from)
    if s.startswith("/"):
        return Found(Path(s), None, found_from)
    host, sep, port = s.rpartition(":")
    if sep and host and port.isascii() and port.isdigit() and int(port) <= 65535:
        return Found(None, s, found_from)
    raise DiscoveryError(f"{found_from}: expected unix:PATH or HOST:PORT, got {s!r}")


def _absolute(env: Mapping[str, str], var: str) -> Path | None:
    """The first absolute path in `var` (systemd passes several, colon-separated; the XDG
    variables must be absolute or be ignored)."""
    for part in env.get(var, "").split(":"):
        if part.startswith("/"):
            return Path(part)
    return None


def _xdg_home(env: Mapping[str, str], var: str, default: str) -> Path | None:
    p = _absolute(env, var)
    if p is not None:
        return p
    home = _absolute(env, "HOME")
    return home / default if home is not None else None


def user_runtime_dir(env: Mapping[str, str]) -> Path | None:
    """Where a daemon run by hand by this (non-root) user keeps its sockets: the daemon's
    `Dirs::resolve` without systemd's variables."""
    xdg = _absolute(env, "XDG_RUNTIME_DIR")
    if xdg is not None:
        return xdg / "ws-sidecar"
    return _user_state_dir(env)


def _user_state_dir(env: Mapping[str, str]) -> Path | None:
    # No login session: the daemon uses its state directory, never a guessable /tmp path.
    state = _xdg_home(env, "XDG_STATE_HOME", ".local/state")
    return state / "ws-sidecar" if state is not None else None


def config_candidates(env: Mapping[str, str], root: bool) -> list[Path]:
    """The config files a daemon tries by default: the user's own (not for root), the system's."""
    c = []
    if not root:
        d = _xdg_home(env, "XDG_CONFIG_HOME", ".config")
        if d is not None:
            c.append(d / "ws-sidecar" / "config.toml")
    c.append(Path(SYSTEM_CONFIG))
    return c


def listen_of(path: Path) -> Found | None:
    """The first Unix socket of `grpc.listen` in the TOML file at `path` (else its first TCP
    address); None when the file sets none. Only that key is read."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise DiscoveryError(f"{path}: cannot read file: {e}") from None
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise DiscoveryError(f"{path}: {e}") from None
    grpc = doc.get("grpc")
    listen = grpc.get("listen") if isinstance(grpc, dict) else None
    if isinstance(listen, str):
        entries = [listen]
    elif isinstance(listen, list):
        entries = [x for x in listen if isinstance(x, str)]
    else:
        entries = []
    found_from = f"grpc.listen in {path}"
    targets = [parse_address(s, found_from) for s in entries]
    for t in targets:
        if t.unix is not None:
            return t
    return targets[0] if targets else None


def _default_sockets(env: Mapping[str, str], root: bool) -> list[Found]:
    v = []
    rd = _absolute(env, "RUNTIME_DIRECTORY")
    if rd is not None:
        v.append(Found(rd / "grpc.sock", None, "$RUNTIME_DIRECTORY"))
    if not root:
        own = user_runtime_dir(env)
        without = _user_state_dir(env)
        if own is not None and own != without:
            v.append(Found(own / "grpc.sock", None, "the default for a daemon run by this user"))
        if without is not None:
            v.append(
                Found(
                    without / "grpc.sock",
                    None,
                    "the default for a daemon run by this user without $XDG_RUNTIME_DIR",
                )
            )
    return v


def _first_existing(candidates: list[Found]) -> Found:
    """The first candidate that exists; else the last, with every place looked at."""
    for c in candidates:
        if c.exists():
            return c
    looked = tuple(c.unix for c in candidates if c.unix is not None)
    return replace(candidates[-1], looked=looked)


def _system_default(found_from: str) -> Found:
    return Found(Path(SYSTEM_RUNTIME) / "grpc.sock", None, found_from)


def _from_config(path: Path, env: Mapping[str, str], root: bool) -> Found:
    f = listen_of(path)
    if f is not None:
        return f
    # No grpc.listen: the daemon used its runtime directory, which depends on how it ran.
    defaults = _default_sockets(env, root)
    defaults.append(_system_default(f"the default socket ({path} sets no grpc.listen)"))
    return _first_existing(defaults)


def discover(
    address: str | None = None,
    config: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    root: bool | None = None,
) -> Found:
    """Finds the daemon's gRPC address (see the module doc for the order).

    `env` defaults to the process environment and `root` to whether the effective uid is 0.
    Raises DiscoveryError for an address that does not parse or a config file that cannot be
    read or parsed. Nothing existing among the defaults is no error: the last default comes
    back, and connecting to it says what is missing.
    """
    env = os.environ if env is None else env
    root = os.geteuid() == 0 if root is None else root
    if address is not None:
        return parse_address(address, "the address given")
    if config is not None:
        return _from_config(Path(config), env, root)
    if env.get("WS_SIDECAR_GRPC"):
        return parse_address(env["WS_SIDECAR_GRPC"], "$WS_SIDECAR_GRPC")
    if env.get("WS_SIDECAR_CONFIG"):
        return _from_config(Path(env["WS_SIDECAR_CONFIG"]), env, root)
    candidates: list[Found] = []
    *user_configs, system_config = config_candidates(env, root)
    for c in user_configs:
        # A config file that cannot be read is not the daemon's: skip it.
        try:
            f = listen_of(c)
        except DiscoveryError:
            f = None
        if f is not None:
            candidates.append(f)
    candidates.extend(_default_sockets(env, root))
    try:
        f = listen_of(system_config)
    except DiscoveryError:
        f = None
    if f is not None:
        candidates.append(f)
    candidates.append(_system_default("the system default"))
    return _first_existing(candidates)
