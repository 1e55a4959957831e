//! Every config under `docs/recipes/` passes `ws-sidecar check-config` (the real binary), so a
//! recipe never documents a key the daemon refuses.

use std::process::Command;

#[test]
fn every_recipe_passes_check_config() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/recipes");
    let mut checked = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("docs/recipes exists") {
        let path = entry.expect("dir entry").path();
        if path.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        let out = Command::new(env!("CARGO_BIN_EXE_ws-sidecar"))
            .args(["check-config", "--config"])
            .arg(&path)
            .env_remove("WS_SIDECAR_CONFIG")
            .output()
            .expect("run check-config");
        assert!(
            out.status.success(),
            "{}: check-config exited with {}:\n{}{}",
            path.display(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        checked.push(path);
    }
    assert!(
        checked
            .iter()
            .any(|p| p.ends_with("slack-socket-mode.toml")),
        "recipes found: {checked:?}"
    );
}
