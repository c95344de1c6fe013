//! Who may do what: tokens with roles (only hashes of their secrets are stored) and the durable
//! audit trail of admin actions. This layer knows nothing of HTTP; `http::access` maps each route
//! to the role it needs.

pub mod audit;
pub mod tokens;

use std::path::Path;
use std::sync::Arc;

pub use audit::{Action, Audit, AuditEntry, AuditPage};
pub use tokens::{
    CreatedToken, NewToken, Principal, Role, TokenError, TokenInfo, TokenList, Tokens,
};

/// The access state of one server.
#[derive(Clone)]
pub struct AccessControl {
    /// The tokens.
    pub tokens: Arc<Tokens>,
    /// The audit trail.
    pub audit: Arc<Audit>,
    /// Serve clients that are not on loopback without a token while no token exists
    /// (`--insecure`).
    pub insecure: bool,
}

impl AccessControl {
    /// Loads `tokens.json` and opens `audit.log` in the data folder `dir`.
    pub fn open(dir: &Path) -> anyhow::Result<AccessControl> {
        std::fs::create_dir_all(dir)?;
        Ok(AccessControl {
            tokens: Arc::new(Tokens::open(&dir.join("tokens.json"))?),
            audit: Arc::new(Audit::open(&dir.join("audit.log"))?),
            insecure: false,
        })
    }

    /// Tokens and audit trail in memory only, for benchmarks and tests that never restart.
    pub fn in_memory() -> AccessControl {
        AccessControl {
            tokens: Arc::new(Tokens::in_memory()),
            audit: Arc::new(Audit::in_memory()),
            insecure: false,
        }
    }
}
