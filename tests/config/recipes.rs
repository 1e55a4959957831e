//! Every commented config under docs/recipes/ passes `check-config`, as a user would run it.

use std::process::Command;

use super::*;

#[test]
fn every_recipe_passes_check_config() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/recipes");
    let mut recipes: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|ext| ext == "toml"))
        .collect();
    recipes.sort();
    assert!(!recipes.is_empty(), "no recipes in {}", dir.display());
    for recipe in recipes {
        let out = Command::new(env!("CARGO_BIN_EXE_ws-sidecar"))
            .args(["check-config", "--config"])
            .arg(&recipe)
            // What the recipe says, not what this machine's environment adds to it.
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .output()
            .expect("run check-config");
        assert_eq!(
            out.status.code(),
            Some(0),
            "{} fails check-config:\n{}",
            recipe.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
