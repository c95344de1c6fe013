//! `lantern new NAME`: a projection crate of its own, outside any workspace, ready to test, build
//! and deploy: a manifest with the SDK, a handler with a query, a native test, a README. With
//! `--ts`, the same as an npm package in TypeScript (`@lantern/sdk`, a `node --test` test,
//! `lantern-build`). `lantern dev` builds and deploys either kind (`DevProject`).

use std::path::{Path, PathBuf};

use anyhow::Context;

/// The language of a new projection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Language {
    /// A crate with `lantern-sdk` (the `guest-sdk` folder; `Cargo.toml` marks it).
    Rust,
    /// An npm package with `@lantern/sdk` (the `guest-sdk-js` folder; `package.json` marks it).
    TypeScript,
}

impl Language {
    fn sdk_folder(self) -> (&'static str, &'static str) {
        match self {
            Language::Rust => ("guest-sdk", "Cargo.toml"),
            Language::TypeScript => ("guest-sdk-js", "package.json"),
        }
    }
}

/// Where this build's SDK for `language` sits, if the binary runs from a Lantern checkout.
fn checkout_sdk(language: Language) -> Option<PathBuf> {
    let (folder, manifest) = language.sdk_folder();
    let sdk = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(folder);
    sdk.join(manifest)
        .exists()
        .then(|| sdk.canonicalize().ok())?
}

/// Writes the projection `name` into `parent/name`; returns its folder. `sdk` is the SDK folder
/// of a Lantern checkout for `language` (by default the one this binary was built from).
pub fn new_projection(
    name: &str,
    parent: &Path,
    sdk: Option<&Path>,
    language: Language,
) -> anyhow::Result<PathBuf> {
    crate::projection::validate_name(name)?;
    let (folder, manifest) = language.sdk_folder();
    let sdk = match sdk {
        Some(sdk) => sdk
            .canonicalize()
            .with_context(|| format!("the SDK folder {}", sdk.display()))?,
        None => checkout_sdk(language).with_context(|| {
            format!("this binary was not built from a Lantern checkout: pass --sdk PATH (the {folder} folder of one)")
        })?,
    };
    anyhow::ensure!(
        sdk.join(manifest).exists(),
        "{} is not the SDK (no {manifest}; --sdk names the {folder} folder)",
        sdk.display()
    );
    let dir = parent.join(name);
    anyhow::ensure!(
        !dir.exists(),
        "{} exists already; choose another name or folder",
        dir.display()
    );
    let files = match language {
        Language::Rust => rust_files(name, &sdk),
        Language::TypeScript => typescript_files(name, &sdk)?,
    };
    for (path, text) in files {
        let path = dir.join(path);
        std::fs::create_dir_all(path.parent().expect("a file in the folder"))
            .with_context(|| format!("creating {}", dir.display()))?;
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(dir)
}

fn rust_files(name: &str, sdk: &Path) -> Vec<(&'static str, String)> {
    let crate_name = name.replace('-', "_");
    vec![
        ("Cargo.toml", manifest(name, sdk)),
        ("src/lib.rs", LIB.replace("{{name}}", name)),
        (
            "README.md",
            (README.to_owned() + README_TAIL)
                .replace("{{name}}", name)
                .replace("{{crate}}", &crate_name),
        ),
        (".gitignore", "/target\n".to_owned()),
    ]
}

fn typescript_files(name: &str, sdk: &Path) -> anyhow::Result<Vec<(&'static str, String)>> {
    // The SDK's own versions of the compiler and node's types: what its tests pass with.
    let sdk_manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(sdk.join("package.json")).context("reading the SDK's package.json")?,
    )
    .context("the SDK's package.json is not JSON")?;
    let dev_dependencies = sdk_manifest["devDependencies"].clone();
    anyhow::ensure!(
        dev_dependencies.is_object(),
        "the SDK's package.json has no devDependencies"
    );
    let module = format!("dist/{name}.wasm");
    let package = serde_json::json!({
        "name": name,
        "version": "0.1.0",
        "private": true,
        "type": "module",
        "scripts": {
            "build": format!("tsc -p . && lantern-build src/index.ts -o {module}"),
            "test": "tsc -p . && node --test dist/test/",
        },
        // Where `npm run build` puts the module: `lantern dev` deploys it from there.
        "lantern": { "module": module },
        "dependencies": { "@lantern/sdk": format!("file:{}", sdk.display()) },
        "devDependencies": dev_dependencies,
    });
    Ok(vec![
        (
            "package.json",
            serde_json::to_string_pretty(&package).expect("JSON") + "\n",
        ),
        ("tsconfig.json", TSCONFIG.to_owned()),
        ("src/index.ts", INDEX_TS.replace("{{name}}", name)),
        ("test/index.test.ts", TEST_TS.to_owned()),
        (
            "README.md",
            (README_TS.to_owned() + README_TAIL).replace("{{name}}", name),
        ),
        (".gitignore", "/node_modules\n/dist\n".to_owned()),
    ])
}

const TSCONFIG: &str = r#"{
  "compilerOptions": {
    "target": "ES2022",
    "module": "NodeNext",
    "moduleResolution": "NodeNext",
    "lib": ["ES2022"],
    "types": ["node"],
    "strict": true,
    "skipLibCheck": true,
    "outDir": "dist",
    "rootDir": "."
  },
  "include": ["src", "test"]
}
"#;

const INDEX_TS: &str = r#"// The `{{name}}` projection: counts events per type.
//
// `type:<EventType>` holds `{"events": n}`. Query `count?type=OrderPlaced` returns that count.

import { type Event, QueryNotFound, type State, defineProjection } from "@lantern/sdk";

interface Count {
  events: number;
}

export default defineProjection({
  // Which events reach `handle`: here, every event. Narrow it with `categories: ["order"]`,
  // `streams: ["order-42"]` or `types: ["OrderPlaced"]`.
  subscription: {},

  // Folds one event into the state. Reads see the state as of the batch's start plus the batch's
  // own writes; if this throws, none of the batch's writes are kept.
  handle(event: Event, state: State) {
    state.update<Count>(`type:${event.type}`, { events: 0 }, (count) => {
      count.events += 1;
    });
  },

  // Answers `GET /projections/{{name}}/query/NAME?...` with JSON.
  query(name, params, state) {
    if (name !== "count") throw new QueryNotFound(name);
    const type = params.type ?? "";
    return { type, events: state.get<Count>(`type:${type}`)?.events ?? 0 };
  },
});
"#;

const TEST_TS: &str = r#"import assert from "node:assert/strict";
import { test } from "node:test";

import { testing } from "@lantern/sdk";

import projection from "../src/index.js";

test("counts events per type", () => {
  const harness = new testing.Harness(projection);
  harness.append("order-1", "OrderPlaced", { amount: 5 });
  harness.append("order-2", "OrderPlaced", { amount: 7 });
  harness.append("order-1", "OrderShipped", {});
  assert.deepEqual(harness.get("type:OrderPlaced"), { events: 2 });
  assert.deepEqual(harness.query("count", { type: "OrderShipped" }), { type: "OrderShipped", events: 1 });
});
"#;

const README_TS: &str = r#"# {{name}}

A Lantern projection in TypeScript (`@lantern/sdk`'s README describes the model, the harness and
the build). Edit `src/index.ts`; the test beside it runs under node:

```sh
npm install
npm test
```

Build the WebAssembly component and deploy it to a running server:

```sh
npm run build                        # dist/{{name}}.wasm, with lantern-build
lantern deploy {{name}} dist/{{name}}.wasm
lantern dev .                        # or: build and deploy again on every save
```

"#;

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

/// The end of both READMEs: how to read the projection.
const README_TAIL: &str = r#"Then read it:

```sh
lantern status {{name}}
lantern query {{name}} --prefix type:
lantern query {{name}} --query count --param type=OrderPlaced
```

Deploying a changed module rebuilds the read model beside the serving one, which answers until the
new one has caught up.
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

"#;

/// What `lantern dev` builds: a projection crate (`Cargo.toml`) or npm package (`package.json`),
/// its name, where its module lands, and the files whose change means a new build.
pub struct DevProject {
    /// The project's folder.
    pub dir: PathBuf,
    /// The package name (also the projection's name unless another is given).
    pub package: String,
    /// The module a build makes.
    pub module: PathBuf,
    /// The manifest (`Cargo.toml` or `package.json`); `src/` is watched as well.
    pub manifest: PathBuf,
    npm: bool,
}

impl DevProject {
    /// A crate (its package name and target folder from `cargo metadata`) or, without a
    /// `Cargo.toml`, an npm package (its name, and the module from its `lantern.module` field).
    pub fn locate(dir: &Path) -> anyhow::Result<DevProject> {
        if !dir.join("Cargo.toml").exists() && dir.join("package.json").exists() {
            return Self::locate_npm(dir);
        }
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
        Ok(DevProject {
            dir: dir.to_owned(),
            package,
            module,
            manifest,
            npm: false,
        })
    }

    fn locate_npm(dir: &Path) -> anyhow::Result<DevProject> {
        let manifest = dir.join("package.json");
        let package: serde_json::Value = serde_json::from_slice(
            &std::fs::read(&manifest).with_context(|| format!("reading {}", manifest.display()))?,
        )
        .with_context(|| format!("{} is not JSON", manifest.display()))?;
        let name = package["name"]
            .as_str()
            .with_context(|| format!("{} has no name", manifest.display()))?;
        let module = package["lantern"]["module"].as_str().with_context(|| {
            format!(
                "{} has no \"lantern\": {{\"module\": \"PATH\"}}: the module `npm run build` makes",
                manifest.display()
            )
        })?;
        Ok(DevProject {
            dir: dir.to_owned(),
            package: name.to_owned(),
            module: dir.join(module),
            manifest,
            npm: true,
        })
    }

    /// Builds the module (`cargo build --release --target wasm32-wasip2`, or `npm run build`);
    /// the compiler's messages go to the terminal. True if it built.
    pub async fn build(&self) -> anyhow::Result<bool> {
        let mut command = if self.npm {
            let mut npm = tokio::process::Command::new("npm");
            npm.args(["run", "build"]);
            npm
        } else {
            let mut cargo = tokio::process::Command::new(cargo());
            cargo.args(["build", "--release", "--target", "wasm32-wasip2"]);
            cargo
        };
        let status = command
            .current_dir(&self.dir)
            .status()
            .await
            .with_context(|| format!("running {command:?}"))?;
        Ok(status.success())
    }
}

fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}
