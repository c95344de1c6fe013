//! Access tokens: a name, a role, optionally a list of projections. Only the SHA-256 of each
//! secret is kept (in `tokens.json`, replaced atomically); a secret is compared with every stored
//! hash in constant time. Revoking a token cancels it, which ends its open subscriptions.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio_util::sync::CancellationToken;

/// What a token may do. Each role includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Every read: streams, the log, subscriptions, projection status, state and queries, metrics.
    Reader,
    /// Reader, plus appends and snapshots.
    Writer,
    /// Everything: deploy, delete, rebuild, tokens, audit, backup.
    Admin,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Reader => "reader",
            Role::Writer => "writer",
            Role::Admin => "admin",
        })
    }
}

impl std::str::FromStr for Role {
    type Err = String;

    fn from_str(text: &str) -> Result<Role, String> {
        match text {
            "reader" => Ok(Role::Reader),
            "writer" => Ok(Role::Writer),
            "admin" => Ok(Role::Admin),
            other => Err(format!(
                "unknown role {other:?}: use reader, writer or admin"
            )),
        }
    }
}

/// A token as listed: everything but its secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenInfo {
    /// Its name, unique in the store.
    pub name: String,
    /// Its role.
    pub role: Role,
    /// The projections it is limited to; `None` for a token not limited to projections.
    pub projections: Option<Vec<String>>,
    /// When it was made (RFC 3339).
    pub created_at: String,
}

impl TokenInfo {
    /// Whether this token may reach projection `name` (always, unless limited).
    pub fn reaches_projection(&self, name: &str) -> bool {
        self.projections
            .as_ref()
            .is_none_or(|list| list.iter().any(|p| p == name))
    }
}

/// The body of `POST /tokens`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewToken {
    /// Its name.
    pub name: String,
    /// Its role.
    pub role: Role,
    /// The projections it is limited to, if any.
    #[serde(default)]
    pub projections: Option<Vec<String>>,
}

/// The answer to `POST /tokens`: the token and its secret, shown only here.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreatedToken {
    /// The token.
    #[serde(flatten)]
    pub info: TokenInfo,
    /// The secret to send as `Authorization: Bearer <token>`.
    pub token: String,
}

/// The answer to `GET /tokens`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenList {
    /// Every token, by name.
    pub tokens: Vec<TokenInfo>,
}

/// Errors of token management.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// A token of that name exists.
    #[error("a token named {0:?} exists; revoke it first")]
    Exists(String),
    /// No token of that name.
    #[error("no token named {0:?}")]
    NotFound(String),
    /// A bad name or projection list.
    #[error("{0}")]
    Invalid(String),
    /// The tokens file could not be read or written.
    #[error("tokens file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// Who sent a request, once authenticated.
#[derive(Debug, Clone)]
pub struct Principal {
    /// The token, or `None` for a client served in open mode (no tokens exist).
    pub token: Option<Arc<TokenInfo>>,
    /// Cancelled when the token is revoked (or, in open mode, when the first token is made):
    /// long-running answers such as subscriptions end with it. Shared, not cloned, per request:
    /// cloning a cancellation token takes a lock.
    pub revoked: Arc<CancellationToken>,
}

impl Principal {
    /// The role the request runs with: an open-mode client may do everything.
    pub fn role(&self) -> Role {
        self.token.as_ref().map_or(Role::Admin, |t| t.role)
    }

    /// The name recorded in the audit trail.
    pub fn name(&self) -> &str {
        self.token.as_ref().map_or("(open mode)", |t| &t.name)
    }
}

#[derive(Serialize, Deserialize)]
struct StoredFile {
    tokens: Vec<StoredToken>,
}

#[derive(Serialize, Deserialize)]
struct StoredToken {
    #[serde(flatten)]
    info: TokenInfo,
    /// SHA-256 of the secret, hex.
    sha256: String,
}

struct LiveToken {
    info: Arc<TokenInfo>,
    hash: [u8; 32],
    revoked: Arc<CancellationToken>,
}

impl LiveToken {
    fn new(info: TokenInfo, hash: [u8; 32]) -> LiveToken {
        LiveToken {
            info: Arc::new(info),
            hash,
            revoked: Arc::new(CancellationToken::new()),
        }
    }
}

struct Inner {
    tokens: Vec<LiveToken>,
    /// The tokens by the first 8 bytes of their hash: a request's token is found without
    /// comparing it with every stored one. What this lookup's timing can reveal is whether a
    /// stored hash shares a prefix with the hash of what was sent, which gives nothing towards a
    /// secret; the whole hash is then compared in constant time.
    by_prefix: HashMap<u64, Vec<usize>>,
    /// Handed to open-mode clients; cancelled when the first token is made.
    open_session: Arc<CancellationToken>,
}

impl Inner {
    fn new(tokens: Vec<LiveToken>) -> Inner {
        let mut inner = Inner {
            tokens,
            by_prefix: HashMap::new(),
            open_session: Arc::new(CancellationToken::new()),
        };
        inner.reindex();
        inner
    }

    /// Rebuilds `by_prefix` after a change (rare: tokens are made and revoked by hand).
    fn reindex(&mut self) {
        self.by_prefix.clear();
        for (index, token) in self.tokens.iter().enumerate() {
            self.by_prefix
                .entry(prefix(&token.hash))
                .or_default()
                .push(index);
        }
    }

    /// Open mode ends: clients it served must now present a token.
    fn end_open_mode(&mut self) {
        self.open_session.cancel();
        self.open_session = Arc::new(CancellationToken::new());
    }
}

fn prefix(hash: &[u8; 32]) -> u64 {
    u64::from_le_bytes(hash[..8].try_into().expect("8 bytes"))
}

/// The store's tokens.
pub struct Tokens {
    path: Option<PathBuf>,
    inner: RwLock<Inner>,
}

/// The name of the token made from `LANTERN_ADMIN_TOKEN` or `--admin-token-file`.
pub const BOOTSTRAP_ADMIN: &str = "admin";

fn hash(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

fn validate_token_name(name: &str) -> Result<(), TokenError> {
    let valid = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if valid {
        Ok(())
    } else {
        Err(TokenError::Invalid(format!(
            "token name {name:?} must be 1 to 64 of a-z, A-Z, 0-9, '_', '-', '.'"
        )))
    }
}

impl Tokens {
    /// Loads the tokens kept in `path` (none if the file does not exist yet).
    pub fn open(path: &Path) -> Result<Tokens, TokenError> {
        let io = |source| TokenError::Io {
            path: path.to_owned(),
            source,
        };
        let stored = match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice::<StoredFile>(&bytes)
                .map_err(|e| io(std::io::Error::other(e)))?,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                StoredFile { tokens: Vec::new() }
            }
            Err(error) => return Err(io(error)),
        };
        let mut tokens = Vec::with_capacity(stored.tokens.len());
        for token in stored.tokens {
            let mut hash = [0u8; 32];
            hex::decode_to_slice(&token.sha256, &mut hash).map_err(|e| {
                io(std::io::Error::other(format!(
                    "token {:?} has a bad hash: {e}",
                    token.info.name
                )))
            })?;
            tokens.push(LiveToken::new(token.info, hash));
        }
        Ok(Tokens {
            path: Some(path.to_owned()),
            inner: RwLock::new(Inner::new(tokens)),
        })
    }

    /// Tokens kept in memory only (benchmarks and tests that do not restart).
    pub fn in_memory() -> Tokens {
        Tokens {
            path: None,
            inner: RwLock::new(Inner::new(Vec::new())),
        }
    }

    /// True when no token exists: the server is in open mode.
    pub fn is_empty(&self) -> bool {
        self.inner.read().tokens.is_empty()
    }

    /// The principal of an open-mode client.
    pub fn open_mode_principal(&self) -> Principal {
        Principal {
            token: None,
            revoked: self.inner.read().open_session.clone(),
        }
    }

    /// The token whose secret this is, if any: found by its hash, which is compared in constant
    /// time.
    pub fn authenticate(&self, secret: &str) -> Option<Principal> {
        let presented = hash(secret);
        let inner = self.inner.read();
        let candidates = inner.by_prefix.get(&prefix(&presented))?;
        let mut found = None;
        for &index in candidates {
            let token = &inner.tokens[index];
            if bool::from(token.hash.ct_eq(&presented)) {
                found = Some(Principal {
                    token: Some(token.info.clone()),
                    revoked: token.revoked.clone(),
                });
            }
        }
        found
    }

    /// Every token, by name.
    pub fn list(&self) -> Vec<TokenInfo> {
        let mut list: Vec<TokenInfo> = self
            .inner
            .read()
            .tokens
            .iter()
            .map(|t| (*t.info).clone())
            .collect();
        list.sort_by(|a, b| a.name.cmp(&b.name));
        list
    }

    /// Makes a token; returns it and its secret, which is shown only this once.
    pub fn create(
        &self,
        name: &str,
        role: Role,
        projections: Option<Vec<String>>,
    ) -> Result<(TokenInfo, String), TokenError> {
        validate_token_name(name)?;
        if let Some(list) = &projections {
            if list.is_empty() {
                return Err(TokenError::Invalid(
                    "a token limited to projections needs at least one".into(),
                ));
            }
            for projection in list {
                crate::projection::validate_name(projection)
                    .map_err(|e| TokenError::Invalid(e.to_string()))?;
            }
        }
        let secret = new_secret();
        let info = TokenInfo {
            name: name.to_owned(),
            role,
            projections,
            created_at: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
        };
        let mut inner = self.inner.write();
        if inner.tokens.iter().any(|t| t.info.name == name) {
            return Err(TokenError::Exists(name.to_owned()));
        }
        inner
            .tokens
            .push(LiveToken::new(info.clone(), hash(&secret)));
        if let Err(error) = self.save(&inner) {
            inner.tokens.pop();
            return Err(error);
        }
        inner.reindex();
        if inner.tokens.len() == 1 {
            inner.end_open_mode();
        }
        Ok((info, secret))
    }

    /// Makes sure the admin token `BOOTSTRAP_ADMIN` has this secret (from the operator's
    /// environment at start-up). Returns true if the stored tokens changed.
    pub fn bootstrap_admin(&self, secret: &str) -> Result<bool, TokenError> {
        if secret.trim().len() < 16 {
            return Err(TokenError::Invalid(
                "the admin token must be at least 16 characters".into(),
            ));
        }
        let wanted = hash(secret.trim());
        let mut inner = self.inner.write();
        let existing = inner
            .tokens
            .iter()
            .position(|t| t.info.name == BOOTSTRAP_ADMIN);
        if let Some(index) = existing {
            let token = &inner.tokens[index];
            if token.info.role == Role::Admin
                && token.info.projections.is_none()
                && bool::from(token.hash.ct_eq(&wanted))
            {
                return Ok(false);
            }
            inner.tokens.remove(index).revoked.cancel();
        }
        inner.tokens.push(LiveToken::new(
            TokenInfo {
                name: BOOTSTRAP_ADMIN.into(),
                role: Role::Admin,
                projections: None,
                created_at: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            },
            wanted,
        ));
        self.save(&inner)?;
        inner.reindex();
        inner.end_open_mode();
        Ok(true)
    }

    /// Revokes a token: from the next request on it is refused, and its open subscriptions end.
    pub fn revoke(&self, name: &str) -> Result<TokenInfo, TokenError> {
        let mut inner = self.inner.write();
        let index = inner
            .tokens
            .iter()
            .position(|t| t.info.name == name)
            .ok_or_else(|| TokenError::NotFound(name.to_owned()))?;
        let token = inner.tokens.remove(index);
        if let Err(error) = self.save(&inner) {
            inner.tokens.insert(index, token);
            return Err(error);
        }
        inner.reindex();
        token.revoked.cancel();
        Ok((*token.info).clone())
    }

    /// Makes the tokens those of `stored`, a tokens file as [`Tokens::stored_bytes`] gives it (a
    /// leader's, on its follower). Tokens that are gone or changed are revoked: their open
    /// subscriptions end. True if anything changed.
    pub fn replace_all(&self, stored: &[u8]) -> Result<bool, TokenError> {
        let invalid = |why: String| TokenError::Invalid(format!("the leader's tokens: {why}"));
        let file: StoredFile =
            serde_json::from_slice(stored).map_err(|e| invalid(e.to_string()))?;
        let mut wanted = Vec::with_capacity(file.tokens.len());
        for token in file.tokens {
            let mut hash = [0u8; 32];
            hex::decode_to_slice(&token.sha256, &mut hash).map_err(|e| invalid(e.to_string()))?;
            wanted.push((token.info, hash));
        }
        let mut inner = self.inner.write();
        let unchanged = inner.tokens.len() == wanted.len()
            && inner
                .tokens
                .iter()
                .zip(&wanted)
                .all(|(token, (info, hash))| *token.info == *info && token.hash == *hash);
        if unchanged {
            return Ok(false);
        }
        // Tokens that stay keep their revocation handle (their subscriptions go on).
        let next: Vec<LiveToken> = wanted
            .into_iter()
            .map(|(info, hash)| {
                match inner
                    .tokens
                    .iter()
                    .find(|token| token.hash == hash && *token.info == info)
                {
                    Some(kept) => LiveToken {
                        info: kept.info.clone(),
                        hash,
                        revoked: kept.revoked.clone(),
                    },
                    None => LiveToken::new(info, hash),
                }
            })
            .collect();
        self.save_tokens(&next)?;
        let was_open = inner.tokens.is_empty();
        let old = std::mem::replace(&mut inner.tokens, next);
        inner.reindex();
        for token in old {
            if !inner
                .tokens
                .iter()
                .any(|t| Arc::ptr_eq(&t.revoked, &token.revoked))
            {
                token.revoked.cancel();
            }
        }
        if was_open && !inner.tokens.is_empty() {
            inner.end_open_mode();
        }
        Ok(true)
    }

    /// The tokens file as it would be written now (hashes only), for a backup.
    pub fn stored_bytes(&self) -> Vec<u8> {
        Self::encode(&self.inner.read().tokens)
    }

    fn encode(tokens: &[LiveToken]) -> Vec<u8> {
        let stored = StoredFile {
            tokens: tokens
                .iter()
                .map(|t| StoredToken {
                    info: (*t.info).clone(),
                    sha256: hex::encode(t.hash),
                })
                .collect(),
        };
        serde_json::to_vec_pretty(&stored).expect("tokens serialize")
    }

    fn save(&self, inner: &Inner) -> Result<(), TokenError> {
        self.save_tokens(&inner.tokens)
    }

    fn save_tokens(&self, tokens: &[LiveToken]) -> Result<(), TokenError> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let bytes = Self::encode(tokens);
        crate::durable::replace(path, &bytes).map_err(|source| TokenError::Io {
            path: path.clone(),
            source,
        })
    }
}

/// A new secret: 32 bytes from the operating system's generator, hex, with a recognisable prefix.
fn new_secret() -> String {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the operating system's random generator works");
    format!("lantern_{}", hex::encode(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_kept_only_as_hashes_and_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.json");
        let tokens = Tokens::open(&path).unwrap();
        let (_, secret) = tokens
            .create("app", Role::Reader, Some(vec!["carts".into()]))
            .unwrap();
        let stored = std::fs::read_to_string(&path).unwrap();
        assert!(
            !stored.contains(&secret),
            "the secret itself is never stored"
        );
        let reopened = Tokens::open(&path).unwrap();
        let principal = reopened.authenticate(&secret).expect("known after reopen");
        let info = principal.token.unwrap();
        assert_eq!(info.role, Role::Reader);
        assert!(info.reaches_projection("carts") && !info.reaches_projection("orders"));
        assert!(reopened.authenticate("lantern_wrong").is_none());
        reopened.revoke("app").unwrap();
        assert!(Tokens::open(&path).unwrap().authenticate(&secret).is_none());
    }

    #[test]
    fn names_are_unique_and_revocation_cancels() {
        let tokens = Tokens::in_memory();
        let open = tokens.open_mode_principal();
        let (_, secret) = tokens.create("ops", Role::Admin, None).unwrap();
        assert!(
            open.revoked.is_cancelled(),
            "open mode ends with the first token"
        );
        assert!(matches!(
            tokens.create("ops", Role::Reader, None),
            Err(TokenError::Exists(_))
        ));
        let principal = tokens.authenticate(&secret).unwrap();
        tokens.revoke("ops").unwrap();
        assert!(principal.revoked.is_cancelled());
        assert!(tokens.authenticate(&secret).is_none());
        assert!(matches!(tokens.revoke("ops"), Err(TokenError::NotFound(_))));
    }
}
