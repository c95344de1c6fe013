//! `lantern new NAME`: a projection crate of its own, outside any workspace, ready to test, build
//! and deploy: a manifest with the SDK, a handler with a query, a native test, a README.

use std::path::{Path, PathBuf};

use anyhow::Context;

/// Where this build's SDK sits, if the binary runs from a Lantern checkout.
fn checkout_sdk() -> Option<PathBuf> {
    let sdk = Path::new(env!("CARGO_MANIFEST_DIR")).join("../guest-sdk");
    sdk.join("Cargo.toml")
        .exists()
        .then(|| sdk.canonicalize().ok())?
}

/// Writes the crate `name` into `parent/name`; returns its folder. `sdk` is the `guest-sdk`
/// folder of a Lantern checkout (by default the one this binary was built from).
pub fn new_projection(name: &str, parent: &Path, sdk: Option<&Path>) -> anyhow::Result<PathBuf> {
    crate::projection::validate_name(name)?;
    let sdk = match sdk {
        Some(sdk) => sdk
            .canonicalize()
            .with_context(|| format!("the SDK folder {}", sdk.display()))?,
        None => checkout_sdk().context(
            "this binary was not built from a Lantern checkout: pass --sdk PATH (the guest-sdk folder of one)",
        )?,
    };
    anyhow::ensure!(
        sdk.join("Cargo.toml").exists(),
        "{} is not the SDK (no Cargo.toml)",
        sdk.display()
    );
    let dir = parent.join(name);
    anyhow::ensure!(
        !dir.exists(),
        "{} exists already; choose another name or folder",
        dir.display()
    );
    std::fs::create_dir_all(dir.join("src"))
        .with_context(|| format!("creating {}", dir.display()))?;
    let crate_name = name.replace('-', "_");
    let files = [
        ("Cargo.toml", manifest(name, &sdk)),
        ("src/lib.rs", LIB.replace("{{name}}", name)),
        (
            "README.md",
            README
                .replace("{{name}}", name)
                .replace("{{crate}}", &crate_name),
        ),
        (".gitignore", "/target\n".to_owned()),
    ];
    for (path, text) in files {
        std::fs::write(dir.join(path), text)
            .with_context(|| format!("writing {}", dir.join(path).display()))?;
    }
    Ok(dir)
}

fn manifest(name: &str, sdk: &Path) -> String {
    // TOML basic strings escape backslashes and quotes.
    let sdk = sdk
        .display()
        .to_string()
        .replace('\\', "\\\\")
        .replace('"', "\\\"");
    format!(
        r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2024"
publish = false

[lib]
# cdylib: the WebAssembly component; rlib: the native tests.
crate-type = ["cdylib", "rlib"]

[dependencies]
lantern-sdk = {{ path = "{sdk}" }}
serde = {{ version = "1", features = ["derive"] }}

# A crate of its own, even inside another workspace's folder.
[workspace]

[profile.release]
strip = true
"#
    )
}

const LIB: &str = r#"//! The `{{name}}` projection: counts events per type.
//!
//! `type:<EventType>` holds `{"events": n}`. Query `count?type=OrderPlaced` returns that count.

use lantern_sdk::{Event, Params, Projection, QueryError, State, Subscription, Value, json};
use serde::{Deserialize, Serialize};

#[derive(Debug, Default, Serialize, Deserialize)]
struct Count {
    events: u64,
}

/// The projection.
pub struct Counter;

impl Projection for Counter {
    /// Which events reach `handle`: here, every event. Narrow it with `.category("order")`,
    /// `.stream("order-42")` or `.event_type("OrderPlaced")`.
    fn subscription() -> Subscription {
        Subscription::all()
    }

    /// Folds one event into the state. Reads see the state as of the batch's start plus the
    /// batch's own writes; if this returns an error, none of the batch's writes are kept.
    fn handle(event: &Event<'_>, state: &mut State) -> lantern_sdk::Result<()> {
        state.update(&format!("type:{}", event.event_type()), |count: &mut Count| {
            count.events += 1;
        })
    }

    /// Answers `GET /projections/{{name}}/query/{name}?...` with JSON.
    fn query(name: &str, params: &Params, state: &State) -> Result<Value, QueryError> {
        match name {
            "count" => {
                let event_type: String = params.parse_or("type", String::new())?;
                let count: Option<Count> = state.get(&format!("type:{event_type}"))?;
                Ok(json!({"type": event_type, "events": count.map_or(0, |c| c.events)}))
            }
            _ => Err(QueryError::NotFound),
        }
    }
}

lantern_sdk::export!(Counter);

#[cfg(test)]
mod tests {
    use lantern_sdk::json;
    use lantern_sdk::testing::Harness;

    use super::Counter;

    #[test]
    fn counts_events_per_type() {
        let mut harness = Harness::<Counter>::new();
        harness.append("order-1", "OrderPlaced", json!({"amount": 5})).unwrap();
        harness.append("order-2", "OrderPlaced", json!({"amount": 7})).unwrap();
        harness.append("order-1", "OrderShipped", json!({})).unwrap();
        assert_eq!(harness.get("type:OrderPlaced"), Some(json!({"events": 2})));
        assert_eq!(
            harness.query("count", &[("type", "OrderShipped")]).unwrap(),
            json!({"type": "OrderShipped", "events": 1})
        );
    }
}
"#;

const README: &str = r#"# {{name}}

A Lantern projection. Edit `src/lib.rs`; the test beside it runs natively:

```sh
cargo test
```

Build the WebAssembly component and deploy it to a running server:

```sh
rustup target add wasm32-wasip2      # once
cargo build --release --target wasm32-wasip2
lantern deploy {{name}} target/wasm32-wasip2/release/{{crate}}.wasm
lantern dev .                        # or: build and deploy again on every save
```

Then read it:

```sh
lantern status {{name}}
lantern query {{name}} --prefix type:
lantern query {{name}} --query count --param type=OrderPlaced
```

Deploying a changed module rebuilds the read model beside the serving one, which answers until the
new one has caught up.
"#;

/// What `lantern dev` builds in a projection crate: its name and where its module lands.
pub struct DevCrate {
    /// The crate's folder.
    pub dir: PathBuf,
    /// The package name (also the projection's name unless another is given).
    pub package: String,
    /// The module `cargo build --release --target wasm32-wasip2` makes.
    pub module: PathBuf,
}

impl DevCrate {
    /// Reads the crate's package name and target folder with `cargo metadata`.
    pub fn locate(dir: &Path) -> anyhow::Result<DevCrate> {
        let output = std::process::Command::new(cargo())
            .current_dir(dir)
            .args(["metadata", "--format-version", "1", "--no-deps"])
            .output()
            .context("running cargo metadata")?;
        anyhow::ensure!(
            output.status.success(),
            "{} is not a crate: {}",
            dir.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        );
        let metadata: serde_json::Value = serde_json::from_slice(&output.stdout)?;
        let manifest = dir.canonicalize()?.join("Cargo.toml");
        let package = metadata["packages"]
            .as_array()
            .and_then(|packages| {
                packages.iter().find(|p| {
                    p["manifest_path"]
                        .as_str()
                        .is_some_and(|path| Path::new(path) == manifest)
                })
            })
            .and_then(|p| p["name"].as_str())
            .context("cargo metadata names no package for this folder")?
            .to_owned();
        let target = metadata["target_directory"]
            .as_str()
            .context("cargo metadata has no target folder")?;
        let module = Path::new(target)
            .join("wasm32-wasip2/release")
            .join(format!("{}.wasm", package.replace('-', "_")));
        Ok(DevCrate {
            dir: dir.to_owned(),
            package,
            module,
        })
    }

    /// Builds the module; the compiler's messages go to the terminal. True if it built.
    pub async fn build(&self) -> anyhow::Result<bool> {
        let status = tokio::process::Command::new(cargo())
            .current_dir(&self.dir)
            .args(["build", "--release", "--target", "wasm32-wasip2"])
            .status()
            .await
            .context("running cargo build")?;
        Ok(status.success())
    }
}

fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}
