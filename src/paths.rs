//! Default places: the config file, the runtime directory (sockets) and the state directory
//! (store), for the daemon and for the clients that look for it.
//!
//! Under systemd the unit's `RuntimeDirectory=`/`StateDirectory=` arrive as `$RUNTIME_DIRECTORY`
//! and `$STATE_DIRECTORY` (systemd.exec(5)). Run as root or as the service account without
//! them, the FHS places (`/run/ws-sidecar`, `/var/lib/ws-sidecar`; see [`system_places`]). Run
//! by hand as anyone else, the XDG Base
//! Directory places (`$XDG_RUNTIME_DIR/ws-sidecar`, `$XDG_STATE_HOME/ws-sidecar`, config in
//! `$XDG_CONFIG_HOME/ws-sidecar/config.toml`), so `ws-sidecar run` works without privileges.
//!
//! Clients find the daemon the same way: `--grpc`, then the `grpc.listen` of a config file
//! (`--config`), `$WS_SIDECAR_GRPC`, `$WS_SIDECAR_CONFIG`, then the first socket that exists
//! among the places a daemon would have used by default ([`discover`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use toml::de::DeValue;

use crate::client::Target;

/// The system-wide config file a packaged install uses.
pub const SYSTEM_CONFIG: &str = "/etc/ws-sidecar/config.toml";
/// The system-wide runtime directory (`RuntimeDirectory=ws-sidecar`).
pub const SYSTEM_RUNTIME: &str = "/run/ws-sidecar";
/// The system-wide state directory (`StateDirectory=ws-sidecar`).
pub const SYSTEM_STATE: &str = "/var/lib/ws-sidecar";

/// Where the sockets and the store go when the config does not say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dirs {
    /// Parent of the default sockets (`grpc.sock`, `stream.sock`).
    pub runtime: PathBuf,
    /// Parent of the default store (`store`).
    pub state: PathBuf,
}

/// The process environment as a map; variables that are not Unicode are left out (they can be
/// neither config overrides nor paths this module reads).
pub fn process_env() -> HashMap<String, String> {
    std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect()
}

/// Whether this process uses the system places (`/etc`, `/run`, `/var/lib`) rather than the
/// XDG ones: root does, and so does the service account, the user whose home is
/// [`SYSTEM_STATE`] (as `systemd/ws-sidecar.sysusers.conf` creates it). So README's
/// `sudo -u ws-sidecar ws-sidecar check-config` shows the sockets and store the service uses,
/// not ones under that user's home.
pub fn system_places() -> bool {
    let uid = rustix::process::geteuid();
    uid.is_root() || crate::access::accounts().home_of(uid.as_raw()) == Some(SYSTEM_STATE)
}

/// The first absolute path in `var` (systemd passes one per configured directory,
/// colon-separated; the XDG variables must be absolute or be ignored).
fn absolute(env: &HashMap<String, String>, var: &str) -> Option<PathBuf> {
    env.get(var)?
        .split(':')
        .find(|s| s.starts_with('/'))
        .map(PathBuf::from)
}

/// `$XDG_STATE_HOME`, or its default `$HOME/.local/state`.
fn xdg_state_home(env: &HashMap<String, String>) -> Option<PathBuf> {
    absolute(env, "XDG_STATE_HOME").or_else(|| Some(absolute(env, "HOME")?.join(".local/state")))
}

/// `$XDG_CONFIG_HOME`, or its default `$HOME/.config`.
fn xdg_config_home(env: &HashMap<String, String>) -> Option<PathBuf> {
    absolute(env, "XDG_CONFIG_HOME").or_else(|| Some(absolute(env, "HOME")?.join(".config")))
}

impl Dirs {
    /// The default directories for a process with `env` that uses the system places (`root`:
    /// root or the service account, [`system_places`]) or not.
    ///
    /// Without `$XDG_RUNTIME_DIR` (no login session, e.g. `su` or cron) a non-root daemon keeps
    /// its sockets in its state directory: never a guessable path under `/tmp` that another
    /// user could create first.
    pub fn resolve(env: &HashMap<String, String>, root: bool) -> Dirs {
        let user_state = (!root)
            .then(|| xdg_state_home(env))
            .flatten()
            .map(|d| d.join("ws-sidecar"));
        let state = absolute(env, "STATE_DIRECTORY")
            .or_else(|| user_state.clone())
            .unwrap_or_else(|| PathBuf::from(SYSTEM_STATE));
        let runtime = absolute(env, "RUNTIME_DIRECTORY")
            .or_else(|| {
                if root {
                    return None;
                }
                absolute(env, "XDG_RUNTIME_DIR")
                    .map(|d| d.join("ws-sidecar"))
                    .or(user_state)
            })
            .unwrap_or_else(|| PathBuf::from(SYSTEM_RUNTIME));
        Dirs { runtime, state }
    }
}

/// Config files `run` and `check-config` try, in order, when neither `--config` nor
/// `$WS_SIDECAR_CONFIG` names one: the user's own (not for root), then the system's.
pub fn config_candidates(env: &HashMap<String, String>, root: bool) -> Vec<PathBuf> {
    let mut c = Vec::new();
    if !root {
        if let Some(d) = xdg_config_home(env) {
            c.push(d.join("ws-sidecar/config.toml"));
        }
    }
    c.push(PathBuf::from(SYSTEM_CONFIG));
    c
}

/// The config file to use: `arg`, else `$WS_SIDECAR_CONFIG`, else the first of
/// [`config_candidates`] that exists.
///
/// Errors: none exists; the message lists every place looked at.
pub fn config_file(
    arg: Option<&Path>,
    env: &HashMap<String, String>,
    root: bool,
) -> Result<PathBuf, String> {
    if let Some(p) = arg {
        return Ok(p.to_path_buf());
    }
    if let Some(p) = env.get("WS_SIDECAR_CONFIG").filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    let candidates = config_candidates(env, root);
    if let Some(p) = candidates.iter().find(|p| p.exists()) {
        return Ok(p.clone());
    }
    Err(format!(
        "no config file: looked for {}; pass --config FILE or set WS_SIDECAR_CONFIG \
         (config/example.toml is a start)",
        list(&candidates)
    ))
}

fn list(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(" and ")
}

/// Where a client should reach the daemon, and why there (for error messages).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub target: Target,
    /// e.g. `--grpc`, `grpc.listen in /etc/ws-sidecar/config.toml`, `the default`.
    pub from: String,
    /// When the search found no socket at all: every place it looked, in order (`target` is
    /// then the last of them). Empty otherwise.
    pub looked: Vec<PathBuf>,
}

impl Found {
    fn new(target: Target, from: impl Into<String>) -> Found {
        Found {
            target,
            from: from.into(),
            looked: Vec::new(),
        }
    }
}

/// The first candidate that exists (a TCP address counts as existing); else the last, with the
/// places looked at.
fn first_existing(mut candidates: Vec<Found>) -> Found {
    let i = candidates.iter().position(|f| match &f.target {
        Target::Unix(p) => p.exists(),
        Target::Tcp(_) => true,
    });
    if let Some(i) = i {
        return candidates.swap_remove(i);
    }
    let looked = candidates
        .iter()
        .filter_map(|f| match &f.target {
            Target::Unix(p) => Some(p.clone()),
            Target::Tcp(_) => None,
        })
        .collect();
    let mut last = candidates
        .pop()
        .expect("the system default is always a candidate");
    last.looked = looked;
    last
}

/// Finds the daemon's gRPC address for a client command.
///
/// Order: `grpc` (the `--grpc` flag); the first `grpc.listen` entry of `config` (`--config`;
/// its first Unix socket, else its first TCP address; the default socket if it sets none);
/// `$WS_SIDECAR_GRPC`; `$WS_SIDECAR_CONFIG` read like `--config` (but when that file cannot be
/// read or parsed, the search goes on); then the first that exists of
/// the user's config file's socket, `$RUNTIME_DIRECTORY/grpc.sock`, the user's default sockets
/// (`$XDG_RUNTIME_DIR/ws-sidecar/grpc.sock`, and the state directory's for a daemon started
/// without `$XDG_RUNTIME_DIR`), the system config's socket and `/run/ws-sidecar/grpc.sock`.
///
/// Errors: an address that does not parse, or a config file that cannot be read or parsed
/// (named in the message). Nothing existing among the defaults is no error: the last default
/// comes back with [`Found::looked`] listing every place tried, for the connect error.
pub fn discover(
    grpc: Option<&str>,
    config: Option<&Path>,
    env: &HashMap<String, String>,
    root: bool,
) -> Result<Found, String> {
    if let Some(s) = grpc {
        return parsed(s, "--grpc".into());
    }
    if let Some(p) = config {
        return from_config(p, env, root);
    }
    if let Some(s) = env.get("WS_SIDECAR_GRPC").filter(|s| !s.is_empty()) {
        return parsed(s, "$WS_SIDECAR_GRPC".into());
    }
    if let Some(p) = env.get("WS_SIDECAR_CONFIG").filter(|p| !p.is_empty()) {
        match from_config(Path::new(p), env, root) {
            Ok(found) => return Ok(found),
            // The variable is set for every command of a unit, and the unit's `ExecReload=`
            // runs `ws-sidecar reload` precisely when the file may be broken: the daemon still
            // listens where it did, so look in the default places rather than give up.
            Err(e) => {
                tracing::debug!(error = %e, "$WS_SIDECAR_CONFIG unreadable; trying the defaults")
            }
        }
    }
    let mut candidates: Vec<Found> = Vec::new();
    let configs = config_candidates(env, root);
    let (user_configs, system_config) = configs.split_at(configs.len() - 1);
    for c in user_configs {
        // A config file that cannot be read is not the daemon's: skip it.
        if let Ok(Some(f)) = listen_of(c) {
            candidates.push(f);
        }
    }
    candidates.extend(default_sockets(env, root));
    if let Some(Ok(Some(f))) = system_config.first().map(|c| listen_of(c)) {
        candidates.push(f);
    }
    candidates.push(Found::new(
        Target::Unix(Path::new(SYSTEM_RUNTIME).join("grpc.sock")),
        "the system default",
    ));
    Ok(first_existing(candidates))
}

fn parsed(s: &str, from: String) -> Result<Found, String> {
    let target = Target::parse(s).map_err(|e| format!("{from}: {e}"))?;
    Ok(Found::new(target, from))
}

/// The daemon's own default sockets for this environment: `$RUNTIME_DIRECTORY` (a client run by
/// a unit with the same `RuntimeDirectory=`), then a non-root user's: in `$XDG_RUNTIME_DIR`,
/// and in the state directory, where a daemon started without `$XDG_RUNTIME_DIR` (cron, `su`)
/// put it.
fn default_sockets(env: &HashMap<String, String>, root: bool) -> Vec<Found> {
    let mut v = Vec::new();
    if let Some(d) = absolute(env, "RUNTIME_DIRECTORY") {
        v.push(Found::new(
            Target::Unix(d.join("grpc.sock")),
            "$RUNTIME_DIRECTORY",
        ));
    }
    if !root {
        let mut user = env.clone();
        user.remove("RUNTIME_DIRECTORY");
        user.remove("STATE_DIRECTORY");
        let own = Dirs::resolve(&user, false).runtime.join("grpc.sock");
        user.remove("XDG_RUNTIME_DIR");
        let without = Dirs::resolve(&user, false).runtime.join("grpc.sock");
        if without != own {
            v.push(Found::new(
                Target::Unix(own),
                "the default for a daemon run by this user",
            ));
        }
        v.push(Found::new(
            Target::Unix(without),
            "the default for a daemon run by this user without $XDG_RUNTIME_DIR",
        ));
    }
    v
}

/// `config`'s gRPC address, or where its daemon put the default socket.
fn from_config(path: &Path, env: &HashMap<String, String>, root: bool) -> Result<Found, String> {
    if let Some(f) = listen_of(path)? {
        return Ok(f);
    }
    // No grpc.listen: the daemon used its runtime directory, which depends on how it ran.
    let mut defaults = default_sockets(env, root);
    defaults.push(Found::new(
        Target::Unix(Path::new(SYSTEM_RUNTIME).join("grpc.sock")),
        format!(
            "the default socket ({} sets no grpc.listen)",
            path.display()
        ),
    ));
    Ok(first_existing(defaults))
}

/// The first Unix socket of `grpc.listen` in the TOML file at `path` (else its first TCP
/// address); `None` when the file sets none. Only that key is read, so a client still finds a
/// daemon whose config has an error elsewhere.
fn listen_of(path: &Path) -> Result<Option<Found>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("{}: cannot read file: {e}", path.display()))?;
    let doc = toml::de::DeTable::parse(&text)
        .map_err(|e| format!("{}: {}", path.display(), e.message()))?;
    let listen = doc
        .get_ref()
        .get("grpc")
        .and_then(|g| match g.get_ref() {
            DeValue::Table(t) => t.get("listen"),
            _ => None,
        })
        .map(|l| match l.get_ref() {
            DeValue::String(s) => vec![s.to_string()],
            DeValue::Array(a) => a
                .iter()
                .filter_map(|v| match v.get_ref() {
                    DeValue::String(s) => Some(s.to_string()),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        })
        .unwrap_or_default();
    let from = format!("grpc.listen in {}", path.display());
    let targets: Vec<Target> = listen
        .iter()
        .map(|s| Target::parse(s).map_err(|e| format!("{from}: {e}")))
        .collect::<Result<_, _>>()?;
    let pick = targets
        .iter()
        .find(|t| matches!(t, Target::Unix(_)))
        .or(targets.first());
    Ok(pick.map(|t| Found::new(t.clone(), from)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn systemd_directories_win_for_anyone() {
        let e = env(&[
            ("RUNTIME_DIRECTORY", "/run/ws-sidecar:/run/other"),
            ("STATE_DIRECTORY", "/var/lib/ws-sidecar"),
            ("XDG_RUNTIME_DIR", "/run/user/1000"),
            ("HOME", "/home/ann"),
        ]);
        for root in [true, false] {
            let d = Dirs::resolve(&e, root);
            assert_eq!(d.runtime, Path::new("/run/ws-sidecar"));
            assert_eq!(d.state, Path::new("/var/lib/ws-sidecar"));
        }
    }

    #[test]
    fn root_by_hand_gets_the_system_places() {
        let e = env(&[("XDG_RUNTIME_DIR", "/run/user/0"), ("HOME", "/root")]);
        assert_eq!(
            Dirs::resolve(&e, true),
            Dirs {
                runtime: SYSTEM_RUNTIME.into(),
                state: SYSTEM_STATE.into()
            }
        );
    }

    #[test]
    fn a_user_by_hand_gets_the_xdg_places() {
        let e = env(&[("XDG_RUNTIME_DIR", "/run/user/1000"), ("HOME", "/home/ann")]);
        let d = Dirs::resolve(&e, false);
        assert_eq!(d.runtime, Path::new("/run/user/1000/ws-sidecar"));
        assert_eq!(d.state, Path::new("/home/ann/.local/state/ws-sidecar"));
        let e = env(&[
            ("XDG_RUNTIME_DIR", "/run/user/1000"),
            ("XDG_STATE_HOME", "/data/state"),
            ("HOME", "/home/ann"),
        ]);
        assert_eq!(
            Dirs::resolve(&e, false).state,
            Path::new("/data/state/ws-sidecar")
        );
    }

    #[test]
    fn without_a_runtime_dir_a_user_keeps_sockets_in_the_state_dir_not_in_tmp() {
        let e = env(&[
            ("HOME", "/home/ann"),
            ("XDG_RUNTIME_DIR", "relative/ignored"),
        ]);
        let d = Dirs::resolve(&e, false);
        assert_eq!(d.runtime, d.state);
        assert_eq!(d.state, Path::new("/home/ann/.local/state/ws-sidecar"));
    }

    #[test]
    fn the_config_file_is_the_flag_then_the_variable_then_the_first_existing() {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().to_str().unwrap();
        let e = env(&[("HOME", home)]);
        let err = config_file(None, &e, false).unwrap_err();
        assert!(
            err.contains(&format!("{home}/.config/ws-sidecar/config.toml")),
            "{err}"
        );
        assert!(err.contains(SYSTEM_CONFIG), "{err}");
        let user = dir.path().join(".config/ws-sidecar/config.toml");
        std::fs::create_dir_all(user.parent().unwrap()).unwrap();
        std::fs::write(&user, "").unwrap();
        assert_eq!(config_file(None, &e, false).unwrap(), user);
        // Root never reads a user's config by default.
        assert_ne!(config_file(None, &e, true).ok(), Some(user.clone()));
        let e = env(&[("HOME", home), ("WS_SIDECAR_CONFIG", "/x.toml")]);
        assert_eq!(config_file(None, &e, false).unwrap(), Path::new("/x.toml"));
        let flag = Path::new("/y.toml");
        assert_eq!(config_file(Some(flag), &e, false).unwrap(), flag);
    }

    #[test]
    fn a_client_reads_the_socket_from_a_config_file() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("c.toml");
        std::fs::write(
            &cfg,
            "[grpc]\nlisten = [\"127.0.0.1:7000\", \"unix:/x/g.sock\"]\n[oops\n",
        )
        .unwrap();
        // A TOML error elsewhere in the file is still an error: the file is not the daemon's.
        assert!(discover(None, Some(&cfg), &env(&[]), false).is_err());
        std::fs::write(
            &cfg,
            "[grpc]\nlisten = [\"127.0.0.1:7000\", \"unix:/x/g.sock\"]\n",
        )
        .unwrap();
        let f = discover(None, Some(&cfg), &env(&[]), false).unwrap();
        assert_eq!(f.target, Target::Unix("/x/g.sock".into()));
        assert!(f.from.contains("c.toml"), "{}", f.from);
        std::fs::write(&cfg, "[grpc]\nlisten = \"127.0.0.1:7000\"\n").unwrap();
        let f = discover(None, Some(&cfg), &env(&[]), false).unwrap();
        assert_eq!(f.target, Target::Tcp("127.0.0.1:7000".into()));
        // The flag beats the file; the file beats the variable.
        let e = env(&[("WS_SIDECAR_GRPC", "127.0.0.1:1")]);
        let f = discover(Some("unix:/a.sock"), Some(&cfg), &e, false).unwrap();
        assert_eq!(f.target, Target::Unix("/a.sock".into()));
        let f = discover(None, Some(&cfg), &e, false).unwrap();
        assert_eq!(f.target, Target::Tcp("127.0.0.1:7000".into()));
        let f = discover(None, None, &e, false).unwrap();
        assert_eq!(f.target, Target::Tcp("127.0.0.1:1".into()));
        assert!(discover(Some("nonsense"), None, &e, false).is_err());
    }

    /// A unit's `ExecReload=ws-sidecar reload` runs with `$WS_SIDECAR_CONFIG` set, when the file
    /// may be broken: the daemon is still found in `$RUNTIME_DIRECTORY`.
    #[test]
    fn a_broken_file_in_the_variable_does_not_stop_the_search() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("c.toml");
        std::fs::write(
            &cfg,
            "[grpc]\nlisten = \"unix:/x/g.sock\"\n[endpoints.broken\n",
        )
        .unwrap();
        let sock = dir.path().join("grpc.sock");
        std::fs::write(&sock, "").unwrap();
        let e = env(&[
            ("WS_SIDECAR_CONFIG", cfg.to_str().unwrap()),
            ("RUNTIME_DIRECTORY", dir.path().to_str().unwrap()),
        ]);
        let f = discover(None, None, &e, true).unwrap();
        assert_eq!(f.target, Target::Unix(sock));
        // Named with --config, the same file is an error: the user asked for that one.
        assert!(discover(None, Some(&cfg), &e, true).is_err());
    }

    #[test]
    fn by_default_a_client_takes_the_first_socket_that_exists() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("run");
        let e = env(&[
            ("HOME", dir.path().to_str().unwrap()),
            ("XDG_RUNTIME_DIR", run.to_str().unwrap()),
        ]);
        // Nothing exists: the system socket, with every place looked at for the connect error.
        let f = discover(None, None, &e, false).unwrap();
        let state_sock = dir.path().join(".local/state/ws-sidecar/grpc.sock");
        if !Path::new("/run/ws-sidecar/grpc.sock").exists() {
            assert_eq!(f.target, Target::Unix("/run/ws-sidecar/grpc.sock".into()));
            assert_eq!(
                f.looked,
                [
                    run.join("ws-sidecar/grpc.sock"),
                    state_sock.clone(),
                    "/run/ws-sidecar/grpc.sock".into()
                ]
            );
        }
        // A daemon started without $XDG_RUNTIME_DIR (cron, su) is found from a login shell.
        std::fs::create_dir_all(state_sock.parent().unwrap()).unwrap();
        std::fs::write(&state_sock, "").unwrap();
        let f = discover(None, None, &e, false).unwrap();
        assert_eq!(f.target, Target::Unix(state_sock.clone()));
        assert!(f.looked.is_empty());
        std::fs::remove_file(&state_sock).unwrap();
        let sock = run.join("ws-sidecar/grpc.sock");
        std::fs::create_dir_all(sock.parent().unwrap()).unwrap();
        std::fs::write(&sock, "").unwrap();
        assert_eq!(
            discover(None, None, &e, false).unwrap().target,
            Target::Unix(sock.clone())
        );
        // The user's config file names another socket: it comes first once it exists.
        let cfg = dir.path().join(".config/ws-sidecar/config.toml");
        std::fs::create_dir_all(cfg.parent().unwrap()).unwrap();
        let other = dir.path().join("other.sock");
        std::fs::write(
            &cfg,
            format!("[grpc]\nlisten = \"unix:{}\"\n", other.display()),
        )
        .unwrap();
        assert_eq!(
            discover(None, None, &e, false).unwrap().target,
            Target::Unix(sock)
        );
        std::fs::write(&other, "").unwrap();
        assert_eq!(
            discover(None, None, &e, false).unwrap().target,
            Target::Unix(other)
        );
    }
}
