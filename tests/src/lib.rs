//! Helpers shared by Lantern's integration tests: servers in process (on port 0) and as real
//! processes.

pub mod fuzzing;
pub mod torture;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context, bail};
use lantern::access::AccessControl;
use lantern::http::{self, AppState};
use lantern::projection::Projections;
use lantern::store::{Store, StoreOptions};
use lantern::wasm::WasmConfig;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// Store options for tests: small index chunks so the tail/index hand-over is exercised, and no
/// fsync where a test does not depend on durability.
pub fn test_store_options(sync: bool) -> StoreOptions {
    StoreOptions {
        sync,
        chunk_events: 64,
        max_pending_chunks: 2,
        ..StoreOptions::default()
    }
}

/// The bytes of a guest module built by this package's build script: `order_totals`, `carts`,
/// `hostile`, `not_a_projection`.
pub fn guest(name: &str) -> Vec<u8> {
    let path = Path::new(env!("LANTERN_GUESTS")).join(format!("{name}.wasm"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// A module of the TypeScript example `examples/order-totals-ts` (`order_totals_ts`, or
/// `order_totals_kurrent`: the same totals through the KurrentDB-style facade), built once per
/// test run (`npm ci` where the packages are not installed yet, then the SDK's and the example's
/// builds).
pub fn ts_guest(module: &str) -> Vec<u8> {
    static BUILT: std::sync::OnceLock<Result<std::path::PathBuf, String>> =
        std::sync::OnceLock::new();
    let built = BUILT.get_or_init(|| {
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("tests/ sits in the workspace");
        let npm = |dir: &Path, args: &[&str]| -> Result<(), String> {
            let output = Command::new("npm")
                .args(args)
                .current_dir(dir)
                .output()
                .map_err(|e| format!("running npm (install Node 20 and npm): {e}"))?;
            if output.status.success() {
                Ok(())
            } else {
                Err(format!(
                    "npm {} in {} failed:\n{}{}",
                    args.join(" "),
                    dir.display(),
                    String::from_utf8_lossy(&output.stdout),
                    String::from_utf8_lossy(&output.stderr)
                ))
            }
        };
        for package in ["guest-sdk-js", "examples/order-totals-ts"] {
            let dir = workspace.join(package);
            if !dir.join("node_modules").exists() {
                npm(&dir, &["ci", "--no-audit", "--no-fund", "--loglevel=error"])?;
            }
            npm(&dir, &["run", "build", "--silent"])?;
        }
        Ok(workspace.join("examples/order-totals-ts/dist"))
    });
    match built {
        Ok(dist) => {
            let path = dist.join(format!("{module}.wasm"));
            std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
        }
        Err(why) => panic!("{why}"),
    }
}

/// `config` with the compile cache every test shares, so each guest compiles once per run.
pub fn shared_compile_cache(config: WasmConfig) -> WasmConfig {
    WasmConfig {
        compile_cache: Some(Path::new(env!("LANTERN_GUESTS")).join("compile-cache")),
        ..config
    }
}

/// A server running inside the test process on a free port.
pub struct TestServer {
    /// `http://127.0.0.1:PORT`
    pub url: String,
    /// The store behind it.
    pub store: Store,
    /// Its projections.
    pub projections: Projections,
    /// Its tokens and audit trail.
    pub access: AccessControl,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl TestServer {
    /// Starts a server on a fresh store in a temporary directory.
    pub async fn start() -> anyhow::Result<TestServer> {
        Self::start_with(shared_compile_cache(WasmConfig::default())).await
    }

    /// Starts a server whose projections run under `limits`.
    pub async fn start_with(limits: WasmConfig) -> anyhow::Result<TestServer> {
        Self::start_custom(limits, |state| state).await
    }

    /// Starts a server whose state `configure` adjusts (limits, CORS origins, ...).
    pub async fn start_custom(
        limits: WasmConfig,
        configure: impl FnOnce(AppState) -> AppState,
    ) -> anyhow::Result<TestServer> {
        let dir = tempfile::tempdir()?;
        let store = Store::open(&dir.path().join("store"), test_store_options(false))?;
        let projections =
            Projections::open(store.clone(), &dir.path().join("projections"), limits).await?;
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let (stop, stopped) = oneshot::channel::<()>();
        let access = AccessControl::open(dir.path())?;
        let state = configure(AppState::new(
            store.clone(),
            projections.clone(),
            access.clone(),
        ));
        let task = tokio::spawn(async move {
            let shutdown = async {
                let _ = stopped.await;
            };
            http::run(listener, state, shutdown)
                .await
                .expect("server runs");
        });
        Ok(TestServer {
            url,
            store,
            projections,
            access,
            stop: Some(stop),
            task: Some(task),
            _dir: dir,
        })
    }

    /// The folder holding the store and the projections.
    pub fn dir(&self) -> &Path {
        self._dir.path()
    }

    /// Stops the server gracefully and waits for it.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
        self.projections.shutdown().await;
    }
}

/// A `lantern serve` process.
pub struct ServerProcess {
    child: Child,
    /// `http://127.0.0.1:PORT`
    pub url: String,
}

impl ServerProcess {
    /// Starts the real binary on `data`, on a free port, and waits until it serves.
    pub fn start(binary: &Path, data: &Path) -> anyhow::Result<ServerProcess> {
        Self::start_with(binary, data, &[], &[])
    }

    /// Like [`ServerProcess::start`], with more arguments for `serve` and environment variables.
    /// The URL's scheme is `https` when `--tls-cert` is among the arguments.
    pub fn start_with(
        binary: &Path,
        data: &Path,
        args: &[&str],
        envs: &[(&str, &str)],
    ) -> anyhow::Result<ServerProcess> {
        let scheme = if args.contains(&"--tls-cert") {
            "https"
        } else {
            "http"
        };
        let listen: &[&str] = if args.contains(&"--listen") {
            &[]
        } else {
            &["--listen", "127.0.0.1:0"]
        };
        let mut child = Command::new(binary)
            .arg("serve")
            .args(listen)
            .arg("--data")
            .arg(data)
            .args(args)
            .env_remove("LANTERN_ADMIN_TOKEN")
            .envs(envs.iter().copied())
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting the server binary")?;
        let stderr = child.stderr.take().context("server stderr")?;
        let (address_tx, address_rx) = mpsc::channel();
        // Keep draining the log so the server never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("listen=").nth(1) {
                    let address = rest.split_whitespace().next().unwrap_or_default();
                    let _ = address_tx.send(address.to_owned());
                }
            }
        });
        let address: SocketAddr = match address_rx.recv_timeout(Duration::from_secs(30)) {
            Ok(address) => address.parse()?,
            Err(_) => {
                let _ = child.kill();
                bail!("the server did not report its address");
            }
        };
        Ok(ServerProcess {
            child,
            url: format!("{scheme}://{address}"),
        })
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL: no chance to flush or clean up.
    pub fn kill(mut self) -> anyhow::Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }

    /// SIGTERM, then wait for a clean exit.
    pub fn terminate(mut self) -> anyhow::Result<std::process::ExitStatus> {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()?;
        anyhow::ensure!(status.success(), "kill -TERM failed");
        Ok(self.child.wait()?)
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The same module with a custom section appended: the same behaviour, other bytes (a "new
/// version" for deploy tests).
pub fn variant(module: &[u8], tag: &str) -> Vec<u8> {
    fn leb128(mut n: usize, out: &mut Vec<u8>) {
        loop {
            let byte = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }
    let name = b"lantern-test-variant";
    let mut payload = Vec::new();
    leb128(name.len(), &mut payload);
    payload.extend_from_slice(name);
    payload.extend_from_slice(tag.as_bytes());
    let mut out = module.to_vec();
    out.push(0); // custom section
    leb128(payload.len(), &mut out);
    out.extend_from_slice(&payload);
    out
}
