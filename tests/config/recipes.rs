//! Every config under `docs/recipes/` passes `check-config` (the real binary), so a recipe
//! cannot drift from what the daemon accepts. New recipes are picked up without a change here.

use std::path::Path;
use std::process::Command;

#[test]
fn every_recipe_passes_check_config() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/recipes");
    let mut recipes: Vec<_> = std::fs::read_dir(&dir)
        .expect("docs/recipes exists")
        .map(|e| e.expect("read docs/recipes").path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    recipes.sort();
    assert!(!recipes.is_empty(), "no recipe in {}", dir.display());
    for recipe in recipes {
        let out = Command::new(env!("CARGO_BIN_EXE_ws-sidecar"))
            .args(["check-config", "--config"])
            .arg(&recipe)
            // Recipes name their secrets by reference; check-config must not need them.
            .env_clear()
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
