//! Identity and access: users, service accounts, bearer tokens, refresh tokens and the
//! failed-login limit. No HTTP here — the faces call [`Identity`] and map
//! [`AuthError::status`] to their own shapes.
//!
//! **Tokens** are JWTs signed with Ed25519 (`alg: EdDSA`, `typ: JWT`, `kid` naming the
//! key in the keyset, see [`keys`]). Claims: `iss` (`tunloom`), `aud`
//! (`tunloom-api`), `sub`, `iat`, `exp`, `jti` (a UUID), `roles` (`["admin"]` or
//! `["readonly"]`) and `sa_id` (the service account, for its tokens; `null`
//! otherwise). [`Identity::verify`] allows 60 s of clock skew on `exp` and `iat`. A
//! token without `exp` is accepted only when it is a service-account token minted
//! eternal and not revoked.
//!
//! **Users**: one, `admin`, made at first start with the password from
//! `Settings::admin_password_file` (trimmed) or, when none is set, a generated one
//! written to `<state-dir>/admin-password` (0600; the log names the file, never the
//! password). The password file is read at first start only; afterwards
//! [`Identity::change_password`] changes it. A generated password sets
//! `password_change_required` in every session until it is changed. Passwords are
//! stored as argon2id hashes (PHC strings, the `argon2` crate's default cost).
//!
//! **Sessions** (Weka's login): an access token of `access_ttl` (300 s) and a refresh
//! token of `refresh_ttl` (a year). A refresh token is `<id>.<secret>`: stored by id
//! with the SHA-256 of its secret, used once ([`Identity::refresh`] rotates it), and
//! dropped on logout and on a password change. A password change does not cut
//! access tokens already issued; they run out within `access_ttl`.
//!
//! **Service accounts** (Neuwerk's): tokens carry `sa_id`; each token's metadata is
//! stored, so a token is refused the moment it, or its account, is revoked or
//! disabled. A token's role may not exceed its account's (checked at minting and at
//! every use, as an account's role may be lowered later); the effective roles of a
//! service-account token are `[its role]`. Without `ttl` or `eternal` a token lasts
//! [`DEFAULT_ACCOUNT_TOKEN_TTL`] (90 days, Neuwerk's default). `last_used_at` is
//! kept in memory (at most one update a minute per token) and written with the next
//! change that commits.
//!
//! **Storage**: a RedbStore of its own at `<state-dir>/auth/state.redb` (0600), keys
//! `users/<name>`, `accounts/<id>`, `tokens/<id>`, `refresh/<id>`, `revoked/<jti>`
//! (values JSON). Every change commits (fsync) before the call returns and before
//! memory changes, so an answered call survives `kill -9`. Writers are serialized
//! on the store; [`Identity::verify`] only takes a read lock on memory and never
//! waits for a disk write. Revocations of access tokens are forgotten once the
//! token would be expired anyway (at open).

pub mod keys;
pub mod rate;
#[cfg(test)]
mod tests;

use crate::store::redb::RedbStore;
use crate::store::{Op, Store, StoreError, Txn};
use crate::telemetry::Counters;
use jsonwebtoken::{Algorithm, Header, Validation};
use keys::KeySet;
use parking_lot::{Mutex, RwLock};
use rate::RateLimiter;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// Clock skew allowed on `exp` and `iat`, in seconds.
pub const LEEWAY_S: u64 = 60;
/// The longest token accepted by [`Identity::verify`], in bytes.
pub const MAX_TOKEN_LEN: usize = 8192;
/// A service-account token's lifetime when minted with neither `ttl` nor `eternal`.
pub const DEFAULT_ACCOUNT_TOKEN_TTL: Duration = Duration::from_secs(90 * 86400);
/// The longest lifetime a token may be minted with (100 years).
pub const MAX_TTL: Duration = Duration::from_secs(100 * 365 * 86400);
/// The generated admin password's file, in the state directory.
pub const ADMIN_PASSWORD_FILE: &str = "admin-password";
/// The one local user.
pub const ADMIN_USER: &str = "admin";
/// Password length limits (bytes) for [`Identity::change_password`].
pub const MIN_PASSWORD: usize = 8;
pub const MAX_PASSWORD: usize = 1024;
const MAX_NAME: usize = 128;
const MAX_DESCRIPTION: usize = 1024;
/// `last_used_at` changes at most this often (seconds).
const LAST_USED_EVERY_S: u64 = 60;

/// What a principal may do: `Admin` > `Readonly`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Readonly,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Readonly => "readonly",
            Role::Admin => "admin",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Role, String> {
        match s {
            "readonly" => Ok(Role::Readonly),
            "admin" => Ok(Role::Admin),
            _ => Err(format!("unknown role {s:?} (readonly or admin)")),
        }
    }
}

/// A verified token's claims.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    pub aud: String,
    pub sub: String,
    pub iat: u64,
    pub exp: Option<u64>,
    pub jti: String,
    #[serde(default)]
    pub roles: Vec<String>,
    pub sa_id: Option<String>,
}

impl Claims {
    /// The highest role the token names (`Readonly` when it names none known).
    pub fn role(&self) -> Role {
        self.roles
            .iter()
            .filter_map(|r| r.parse::<Role>().ok())
            .max()
            .unwrap_or(Role::Readonly)
    }

    pub fn is_admin(&self) -> bool {
        self.role() == Role::Admin
    }
}

/// What a login or a refresh hands out.
#[derive(Debug, Clone, Serialize)]
pub struct Session {
    pub access_token: String,
    pub expires_in: u64,
    pub refresh_token: String,
    pub password_change_required: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceAccount {
    pub id: String,
    pub name: String,
    pub description: String,
    pub created_at: String,
    pub created_by: String,
    pub role: Role,
    /// `active` or `disabled`.
    pub status: String,
}

/// A service-account token's metadata (never the token itself).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TokenInfo {
    pub id: String,
    pub service_account_id: String,
    pub name: String,
    pub created_at: String,
    pub created_by: String,
    pub expires_at: Option<String>,
    pub revoked_at: Option<String>,
    pub last_used_at: Option<String>,
    pub kid: String,
    pub role: Role,
    /// `active`, `revoked` or `expired`.
    pub status: String,
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub issuer: String,
    pub audience: String,
    pub admin_password_file: Option<PathBuf>,
    pub access_ttl: Duration,
    pub refresh_ttl: Duration,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            issuer: "tunloom".into(),
            audience: "tunloom-api".into(),
            admin_password_file: None,
            access_ttl: Duration::from_secs(300),
            refresh_ttl: Duration::from_secs(365 * 86400),
        }
    }
}

crate::telemetry::counted_enum! {
    /// Why a caller was refused: the stats' `auth` section and
    /// `tunloom_auth_<reason>_total`, counted by the faces where they answer
    /// ([`Identity::count_failure`]).
    AuthFailure {
        MissingToken => "missing_token", "Requests to a protected route without credentials.";
        BadToken => "bad_token", "Tokens refused as malformed, forged, of an unknown key or service account, or sent where they are not taken (the query string); refresh tokens that are not genuine.";
        ExpiredToken => "expired_token", "Tokens refused as expired.";
        RevokedToken => "revoked_token", "Tokens refused as revoked, or of a disabled service account.";
        Forbidden => "forbidden", "Valid tokens refused a route their role does not allow (a write without admin).";
        BadCredentials => "bad_credentials", "Logins with a wrong username or password.";
        RateLimited => "rate_limited", "Logins and token-logins refused while their client is blocked by failed attempts.";
    }
}

/// Why an identity call failed; [`AuthError::status`] is its HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("invalid username or password")]
    BadCredentials,
    #[error("missing bearer token")]
    MissingToken,
    /// The token is refused; the text says why (`jwt expired`, `invalid jwt
    /// signature`, `unknown jwt kid`, `jwt revoked`, `service account disabled`,
    /// `malformed jwt`, …).
    #[error("{0}")]
    BadToken(String),
    #[error("too many login attempts")]
    RateLimited { retry_after_s: u64 },
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("auth store: {0}")]
    Store(#[from] StoreError),
    #[error("{0}")]
    Io(String),
    /// The keyset cannot be read or used.
    #[error("{0}")]
    Key(String),
}

impl AuthError {
    pub fn status(&self) -> u16 {
        match self {
            AuthError::BadCredentials | AuthError::MissingToken | AuthError::BadToken(_) => 401,
            AuthError::RateLimited { .. } => 429,
            AuthError::NotFound(_) => 404,
            AuthError::Invalid(_) => 400,
            AuthError::Forbidden(_) => 403,
            AuthError::Store(_) => 503,
            AuthError::Io(_) | AuthError::Key(_) => 500,
        }
    }

    /// The failure this is, when it refuses a caller (not for a bad request, a
    /// missing object or a fault of tunloom's).
    pub fn failure(&self) -> Option<AuthFailure> {
        match self {
            AuthError::BadCredentials => Some(AuthFailure::BadCredentials),
            AuthError::MissingToken => Some(AuthFailure::MissingToken),
            AuthError::BadToken(why) => Some(match why.as_str() {
                EXPIRED => AuthFailure::ExpiredToken,
                REVOKED | DISABLED => AuthFailure::RevokedToken,
                _ => AuthFailure::BadToken,
            }),
            AuthError::RateLimited { .. } => Some(AuthFailure::RateLimited),
            AuthError::Forbidden(_) => Some(AuthFailure::Forbidden),
            AuthError::NotFound(_)
            | AuthError::Invalid(_)
            | AuthError::Store(_)
            | AuthError::Io(_)
            | AuthError::Key(_) => None,
        }
    }
}

/// The texts of the token refusals [`AuthError::failure`] tells apart.
const EXPIRED: &str = "jwt expired";
const REVOKED: &str = "jwt revoked";
const DISABLED: &str = "service account disabled";

fn bad(why: &str) -> AuthError {
    AuthError::BadToken(why.into())
}

/// Unix seconds, as a clock the tests can replace.
pub type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

fn system_clock() -> Clock {
    Arc::new(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    })
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct User {
    name: String,
    /// argon2id, PHC string.
    hash: String,
    role: Role,
    password_change_required: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct TokenRecord {
    id: String,
    service_account_id: String,
    name: String,
    created_at: u64,
    created_by: String,
    expires_at: Option<u64>,
    revoked_at: Option<u64>,
    last_used_at: Option<u64>,
    kid: String,
    role: Role,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct RefreshRecord {
    user: String,
    /// SHA-256 of the secret half, hex.
    hash: String,
    created_at: u64,
    expires_at: u64,
}

/// Everything stored, in memory.
#[derive(Default)]
struct State {
    users: HashMap<String, User>,
    accounts: BTreeMap<String, ServiceAccount>,
    tokens: HashMap<String, TokenRecord>,
    refresh: HashMap<String, RefreshRecord>,
    /// Revoked access tokens (`jti` → their `exp`).
    revoked: HashMap<String, u64>,
}

/// One stored change: a key written or removed, and the same change in memory.
enum Change {
    User(User),
    Account(ServiceAccount),
    Token(TokenRecord),
    Refresh(String, RefreshRecord),
    DropRefresh(String),
    Revoked(String, u64),
    DropRevoked(String),
}

fn json<T: Serialize>(v: &T) -> Result<String, AuthError> {
    serde_json::to_string(v).map_err(|e| AuthError::Invalid(e.to_string()))
}

impl Change {
    fn op(&self) -> Result<Op, AuthError> {
        Ok(match self {
            Change::User(u) => Op::put(format!("users/{}", u.name), json(u)?),
            Change::Account(a) => Op::put(format!("accounts/{}", a.id), json(a)?),
            Change::Token(t) => Op::put(format!("tokens/{}", t.id), json(t)?),
            Change::Refresh(id, r) => Op::put(format!("refresh/{id}"), json(r)?),
            Change::DropRefresh(id) => Op::delete(format!("refresh/{id}")),
            Change::Revoked(jti, exp) => Op::put(format!("revoked/{jti}"), exp.to_string()),
            Change::DropRevoked(jti) => Op::delete(format!("revoked/{jti}")),
        })
    }

    fn apply(self, st: &mut State) {
        match self {
            Change::User(u) => {
                st.users.insert(u.name.clone(), u);
            }
            Change::Account(a) => {
                st.accounts.insert(a.id.clone(), a);
            }
            Change::Token(t) => {
                st.tokens.insert(t.id.clone(), t);
            }
            Change::Refresh(id, r) => {
                st.refresh.insert(id, r);
            }
            Change::DropRefresh(id) => {
                st.refresh.remove(&id);
            }
            Change::Revoked(jti, exp) => {
                st.revoked.insert(jti, exp);
            }
            Change::DropRevoked(jti) => {
                st.revoked.remove(&jti);
            }
        }
    }
}

impl State {
    fn load(entries: Vec<crate::store::Entry>, path: &Path) -> Result<State, AuthError> {
        let mut st = State::default();
        for e in entries {
            let damaged = |detail: String| {
                AuthError::Store(StoreError::Damaged {
                    path: path.display().to_string(),
                    detail: format!("{}: {detail}", e.key),
                })
            };
            let (kind, id) = e.key.split_once('/').ok_or_else(|| damaged("not an auth key".into()))?;
            let de = |x: serde_json::Error| damaged(x.to_string());
            match kind {
                "users" => {
                    st.users.insert(id.into(), serde_json::from_str(&e.value).map_err(de)?);
                }
                "accounts" => {
                    st.accounts
                        .insert(id.into(), serde_json::from_str(&e.value).map_err(de)?);
                }
                "tokens" => {
                    st.tokens.insert(id.into(), serde_json::from_str(&e.value).map_err(de)?);
                }
                "refresh" => {
                    st.refresh
                        .insert(id.into(), serde_json::from_str(&e.value).map_err(de)?);
                }
                "revoked" => {
                    let exp = e.value.parse().map_err(|_| damaged("not a time".into()))?;
                    st.revoked.insert(id.into(), exp);
                }
                _ => return Err(damaged("not an auth key".into())),
            }
        }
        Ok(st)
    }
}

/// Users, service accounts and tokens of one node. `Send + Sync`; every method may
/// be called from any thread. A method that changes anything returns once the change
/// is on disk and in force.
pub struct Identity {
    settings: Settings,
    keys: KeySet,
    validation: Validation,
    store: Mutex<RedbStore>,
    state: RwLock<State>,
    rate: Mutex<RateLimiter>,
    /// `last_used_at` of service-account tokens not yet written (token id → time).
    touched: Mutex<HashMap<String, u64>>,
    clock: Clock,
    /// A hash to verify against when the user is unknown, so both cost the same.
    dummy_hash: OnceLock<String>,
    /// Callers refused, by reason (registered as the `auth` section).
    failures: Arc<Counters<AuthFailure>>,
}

impl Identity {
    /// Opens (at first start: creates) the identity state in `<state_dir>/auth/`.
    pub fn open(state_dir: &Path, settings: Settings) -> Result<Identity, AuthError> {
        Self::open_with_clock(state_dir, settings, system_clock())
    }

    /// [`Identity::open`] with the clock given (unix seconds): for tests.
    pub fn open_with_clock(state_dir: &Path, settings: Settings, clock: Clock) -> Result<Identity, AuthError> {
        let now = clock();
        let keys = KeySet::load_or_create(state_dir, now)?;
        let dir = keys::auth_dir(state_dir)?;
        let store = RedbStore::open(&dir)?;
        let db = RedbStore::path(&dir);
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| AuthError::Io(format!("setting the mode of {}: {e}", db.display())))?;
        let (entries, _) = store.range("")?;
        let state = State::load(entries, &db)?;
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        validation.required_spec_claims.clear();
        validation.leeway = 0;
        let id = Identity {
            settings,
            keys,
            validation,
            store: Mutex::new(store),
            state: RwLock::new(state),
            rate: Mutex::new(RateLimiter::default()),
            touched: Mutex::new(HashMap::new()),
            clock,
            dummy_hash: OnceLock::new(),
            failures: Arc::default(),
        };
        id.first_admin(state_dir)?;
        id.prune()?;
        Ok(id)
    }

    fn now(&self) -> u64 {
        (self.clock)()
    }

    /// Callers refused so far, by reason: what the daemon registers as `auth`.
    pub fn failures(&self) -> &Arc<Counters<AuthFailure>> {
        &self.failures
    }

    /// Counts `e` when it refuses a caller ([`AuthError::failure`]). The faces call
    /// this where they answer, so a failure is counted once however deep it arose.
    pub fn count_failure(&self, e: &AuthError) {
        if let Some(f) = e.failure() {
            self.failures.inc(f);
        }
    }

    /// The kid tokens are signed with now.
    pub fn kid(&self) -> String {
        self.keys.active_kid().to_string()
    }

    /// Commits what `f` decides (from the state and the time) and then applies it in
    /// memory. Writers run one at a time.
    fn write<T>(&self, f: impl FnOnce(&State, u64) -> Result<(Vec<Change>, T), AuthError>) -> Result<T, AuthError> {
        let mut store = self.store.lock();
        let now = self.now();
        let (changes, out) = {
            let st = self.state.read();
            let (mut changes, out) = f(&st, now)?;
            if !changes.is_empty() {
                // Pending last_used_at times ride along.
                let touched: Vec<(String, u64)> = self.touched.lock().drain().collect();
                for (id, t) in touched {
                    let in_changes = changes.iter_mut().find_map(|c| match c {
                        Change::Token(r) if r.id == id => Some(r),
                        _ => None,
                    });
                    match in_changes {
                        Some(r) => r.last_used_at = r.last_used_at.max(Some(t)),
                        None => {
                            if let Some(r) = st.tokens.get(&id) {
                                let mut r = r.clone();
                                r.last_used_at = r.last_used_at.max(Some(t));
                                changes.push(Change::Token(r));
                            }
                        }
                    }
                }
            }
            (changes, out)
        };
        if changes.is_empty() {
            return Ok(out);
        }
        let ops = changes.iter().map(Change::op).collect::<Result<Vec<_>, _>>()?;
        store.commit(&[Txn::ops(ops)])?;
        let mut st = self.state.write();
        for c in changes {
            c.apply(&mut st);
        }
        Ok(out)
    }

    fn first_admin(&self, state_dir: &Path) -> Result<(), AuthError> {
        if self.state.read().users.contains_key(ADMIN_USER) {
            return Ok(());
        }
        let (password, generated) = match &self.settings.admin_password_file {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .map_err(|e| AuthError::Io(format!("reading auth.admin_password_file {}: {e}", p.display())))?;
                let pw = text.trim().to_string();
                if pw.is_empty() {
                    return Err(AuthError::Invalid(format!(
                        "auth.admin_password_file {} is empty",
                        p.display()
                    )));
                }
                (pw, false)
            }
            None => (admin_password(state_dir)?, true),
        };
        let user = User {
            name: ADMIN_USER.into(),
            hash: hash_password(&password)?,
            role: Role::Admin,
            password_change_required: generated,
        };
        self.write(|_, _| Ok((vec![Change::User(user)], ())))
    }

    /// Forgets revocations of tokens that have expired anyway, and expired refresh
    /// tokens.
    fn prune(&self) -> Result<(), AuthError> {
        self.write(|st, now| {
            let mut ch: Vec<Change> = st
                .revoked
                .iter()
                .filter(|(_, exp)| **exp != 0 && exp.saturating_add(LEEWAY_S) < now)
                .map(|(jti, _)| Change::DropRevoked(jti.clone()))
                .collect();
            ch.extend(
                st.refresh
                    .iter()
                    .filter(|(_, r)| r.expires_at <= now)
                    .map(|(id, _)| Change::DropRefresh(id.clone())),
            );
            Ok((ch, ()))
        })
    }

    // ---- tokens ----

    fn sign(&self, claims: &Claims) -> Result<String, AuthError> {
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.kid());
        header.typ = Some("JWT".into());
        jsonwebtoken::encode(&header, claims, self.keys.signing_key())
            .map_err(|e| AuthError::Key(format!("signing: {e}")))
    }

    /// A user token for `sub` (`ttl` None: `access_ttl`).
    pub fn mint(&self, sub: &str, role: Role, ttl: Option<Duration>) -> Result<String, AuthError> {
        let ttl = ttl.unwrap_or(self.settings.access_ttl);
        let claims = user_claims(&self.settings, sub, role, ttl, self.now())?;
        self.sign(&claims)
    }

    /// Checks a token: signature by a known key, issuer and audience, expiry (60 s
    /// leeway), not revoked, its service account active. Returns its claims; for a
    /// service-account token `roles` is `[the token's role]`.
    pub fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        if token.is_empty() {
            return Err(AuthError::MissingToken);
        }
        if token.len() > MAX_TOKEN_LEN {
            return Err(bad("token too large"));
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| bad("malformed jwt"))?;
        if header.alg != Algorithm::EdDSA {
            return Err(bad("unsupported jwt algorithm"));
        }
        let kid = header.kid.ok_or_else(|| bad("missing jwt kid"))?;
        let key = self.keys.verifying_key(&kid).ok_or_else(|| bad("unknown jwt kid"))?;
        let mut c = jsonwebtoken::decode::<Claims>(token, key, &self.validation)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::InvalidSignature => bad("invalid jwt signature"),
                jsonwebtoken::errors::ErrorKind::InvalidAlgorithm => bad("unsupported jwt algorithm"),
                _ => bad("malformed jwt"),
            })?
            .claims;
        let now = self.now();
        if c.iss != self.settings.issuer {
            return Err(bad("invalid jwt issuer"));
        }
        if c.aud != self.settings.audience {
            return Err(bad("invalid jwt audience"));
        }
        if c.iat > now.saturating_add(LEEWAY_S) {
            return Err(bad("jwt issued in the future"));
        }
        match c.exp {
            Some(exp) if now > exp.saturating_add(LEEWAY_S) => return Err(bad(EXPIRED)),
            Some(_) => {}
            None if c.sa_id.is_none() => return Err(bad("missing jwt exp")),
            None => {}
        }
        let touch = {
            let st = self.state.read();
            if st.revoked.contains_key(&c.jti) {
                return Err(bad(REVOKED));
            }
            match &c.sa_id {
                None => None,
                Some(sa) => {
                    let account = st.accounts.get(sa).ok_or_else(|| bad("unknown service account"))?;
                    if account.status != "active" {
                        return Err(bad(DISABLED));
                    }
                    let rec = st
                        .tokens
                        .get(&c.jti)
                        .filter(|r| r.service_account_id == *sa)
                        .ok_or_else(|| bad("unknown service-account token"))?;
                    if rec.revoked_at.is_some() {
                        return Err(bad(REVOKED));
                    }
                    if c.exp.is_none() && rec.expires_at.is_some() {
                        return Err(bad("missing jwt exp"));
                    }
                    if rec.role > account.role {
                        return Err(bad("token role exceeds account role"));
                    }
                    c.roles = vec![rec.role.as_str().into()];
                    Some((rec.id.clone(), rec.last_used_at))
                }
            }
        };
        if let Some((id, stored)) = touch {
            let mut touched = self.touched.lock();
            let last = touched.get(&id).copied().max(stored);
            if last.is_none_or(|t| now.saturating_sub(t) >= LAST_USED_EVERY_S) {
                touched.insert(id, now);
            }
        }
        Ok(c)
    }

    // ---- users and sessions ----

    /// Weka's login: checks the password (failures count towards the client's rate
    /// limit; a blocked client is refused before its password is looked at).
    pub fn login(&self, username: &str, password: &str, client: IpAddr) -> Result<Session, AuthError> {
        self.check_rate(client)?;
        let user = self.state.read().users.get(username).cloned();
        let ok = match &user {
            Some(u) if password.len() <= MAX_PASSWORD => verify_password(password, &u.hash),
            _ => {
                // The same work as for a known user, so timing does not tell.
                let dummy = self
                    .dummy_hash
                    .get_or_init(|| hash_password("not a password").unwrap_or_default());
                verify_password(password.get(..MAX_PASSWORD.min(password.len())).unwrap_or(""), dummy);
                false
            }
        };
        let Some(user) = user.filter(|_| ok) else {
            self.record_failure(client);
            return Err(AuthError::BadCredentials);
        };
        self.rate.lock().success(client);
        self.write(|_, now| self.new_session(&user, now))
    }

    fn new_session(&self, user: &User, now: u64) -> Result<(Vec<Change>, Session), AuthError> {
        let claims = user_claims(&self.settings, &user.name, user.role, self.settings.access_ttl, now)?;
        let access_token = self.sign(&claims)?;
        let id = new_id();
        let secret = hex(&rand::random::<[u8; 32]>());
        let record = RefreshRecord {
            user: user.name.clone(),
            hash: sha256_hex(&secret),
            created_at: now,
            expires_at: now.saturating_add(self.settings.refresh_ttl.as_secs()),
        };
        let session = Session {
            access_token,
            expires_in: self.settings.access_ttl.as_secs(),
            refresh_token: format!("{id}.{secret}"),
            password_change_required: user.password_change_required,
        };
        Ok((vec![Change::Refresh(id, record)], session))
    }

    /// The refresh record a refresh token names, if the token is genuine and live.
    fn refresh_record<'a>(st: &'a State, token: &str, now: u64) -> Option<(String, &'a RefreshRecord)> {
        let (id, secret) = token.split_once('.')?;
        let r = st.refresh.get(id)?;
        (ct_eq(sha256_hex(secret).as_bytes(), r.hash.as_bytes()) && r.expires_at > now).then(|| (id.to_string(), r))
    }

    /// Weka's login/refresh: a new session for the refresh token's user; the refresh
    /// token given is used up (the session carries its successor).
    pub fn refresh(&self, refresh_token: &str) -> Result<Session, AuthError> {
        if refresh_token.len() > MAX_TOKEN_LEN {
            return Err(bad("invalid refresh token"));
        }
        self.write(|st, now| {
            let (id, r) = Self::refresh_record(st, refresh_token, now).ok_or_else(|| bad("invalid refresh token"))?;
            let user = st.users.get(&r.user).ok_or_else(|| bad("invalid refresh token"))?;
            let (mut changes, session) = self.new_session(user, now)?;
            changes.push(Change::DropRefresh(id));
            Ok((changes, session))
        })
    }

    /// Ends a session: the refresh token is dropped and the access token revoked
    /// (a service-account token given here is revoked like [`Identity::revoke_token`]).
    /// Unknown or already revoked tokens are no error.
    pub fn logout(&self, refresh_token: Option<&str>, access: Option<&Claims>) -> Result<(), AuthError> {
        self.write(|st, now| {
            let mut ch = Vec::new();
            if let Some((id, _)) = refresh_token.and_then(|t| Self::refresh_record(st, t, now)) {
                ch.push(Change::DropRefresh(id));
            }
            if let Some(c) = access {
                match st.tokens.get(&c.jti) {
                    Some(r) if c.sa_id.as_deref() == Some(r.service_account_id.as_str()) => {
                        ch.extend(r.revoked_at.is_none().then(|| {
                            let mut r = r.clone();
                            r.revoked_at = Some(now);
                            Change::Token(r)
                        }));
                    }
                    _ if !st.revoked.contains_key(&c.jti) => {
                        ch.push(Change::Revoked(c.jti.clone(), c.exp.unwrap_or(0)))
                    }
                    _ => {}
                }
            }
            Ok((ch, ()))
        })
    }

    /// Sets a user's password (argon2id) and drops every refresh token of theirs.
    pub fn change_password(&self, username: &str, new: &str) -> Result<(), AuthError> {
        if new.len() < MIN_PASSWORD || new.len() > MAX_PASSWORD {
            return Err(AuthError::Invalid(format!(
                "a password has {MIN_PASSWORD} to {MAX_PASSWORD} bytes"
            )));
        }
        if !self.state.read().users.contains_key(username) {
            return Err(AuthError::NotFound(format!("user not found: {username}")));
        }
        let hash = hash_password(new)?;
        self.write(|st, _| {
            let mut user = st
                .users
                .get(username)
                .cloned()
                .ok_or_else(|| AuthError::NotFound(format!("user not found: {username}")))?;
            user.hash = hash;
            user.password_change_required = false;
            let mut ch: Vec<Change> = st
                .refresh
                .iter()
                .filter(|(_, r)| r.user == username)
                .map(|(id, _)| Change::DropRefresh(id.clone()))
                .collect();
            ch.push(Change::User(user));
            Ok((ch, ()))
        })
    }

    /// `Err(RateLimited)` while `client` is blocked by failed logins.
    pub fn check_rate(&self, client: IpAddr) -> Result<(), AuthError> {
        self.rate
            .lock()
            .check(client, self.now())
            .map_err(|retry_after_s| AuthError::RateLimited { retry_after_s })
    }

    /// Counts a failed login (or token-login) of `client`.
    pub fn record_failure(&self, client: IpAddr) {
        let now = self.now();
        self.rate.lock().failure(client, now);
    }

    // ---- service accounts ----

    /// Every service account, disabled ones included, oldest first.
    pub fn accounts(&self) -> Vec<ServiceAccount> {
        let mut v: Vec<ServiceAccount> = self.state.read().accounts.values().cloned().collect();
        v.sort_by(|a, b| (&a.created_at, &a.id).cmp(&(&b.created_at, &b.id)));
        v
    }

    pub fn account(&self, id: &str) -> Result<ServiceAccount, AuthError> {
        self.state
            .read()
            .accounts
            .get(id)
            .cloned()
            .ok_or_else(|| account_not_found(id))
    }

    /// A new active account. Names are unique among active accounts.
    pub fn create_account(
        &self,
        name: &str,
        description: &str,
        role: Role,
        created_by: &str,
    ) -> Result<ServiceAccount, AuthError> {
        let name = valid_name(name)?;
        valid_description(description)?;
        self.write(|st, now| {
            name_free(st, &name, None)?;
            let a = ServiceAccount {
                id: new_id(),
                name,
                description: description.into(),
                created_at: rfc3339(now),
                created_by: created_by.into(),
                role,
                status: "active".into(),
            };
            Ok((vec![Change::Account(a.clone())], a))
        })
    }

    /// Changes what is given. Lowering the role makes the account's tokens of a
    /// higher role refused from now on.
    pub fn update_account(
        &self,
        id: &str,
        name: Option<&str>,
        description: Option<&str>,
        role: Option<Role>,
    ) -> Result<ServiceAccount, AuthError> {
        let name = name.map(valid_name).transpose()?;
        if let Some(d) = description {
            valid_description(d)?;
        }
        self.write(|st, _| {
            let mut a = st.accounts.get(id).cloned().ok_or_else(|| account_not_found(id))?;
            if a.status != "active" {
                return Err(AuthError::Invalid("service account is disabled".into()));
            }
            if let Some(n) = name {
                name_free(st, &n, Some(id))?;
                a.name = n;
            }
            if let Some(d) = description {
                a.description = d.into();
            }
            if let Some(r) = role {
                a.role = r;
            }
            Ok((vec![Change::Account(a.clone())], a))
        })
    }

    /// Disables the account and revokes every token of it, in one commit: its tokens
    /// are refused from the moment this returns. Deleting a disabled account again
    /// is no error.
    pub fn delete_account(&self, id: &str) -> Result<(), AuthError> {
        self.write(|st, now| {
            let mut a = st.accounts.get(id).cloned().ok_or_else(|| account_not_found(id))?;
            let mut ch: Vec<Change> = st
                .tokens
                .values()
                .filter(|t| t.service_account_id == id && t.revoked_at.is_none())
                .map(|t| {
                    let mut t = t.clone();
                    t.revoked_at = Some(now);
                    Change::Token(t)
                })
                .collect();
            if a.status != "disabled" {
                a.status = "disabled".into();
                ch.push(Change::Account(a));
            }
            Ok((ch, ()))
        })
    }

    /// The account's tokens' metadata, oldest first.
    pub fn tokens(&self, account_id: &str) -> Result<Vec<TokenInfo>, AuthError> {
        let now = self.now();
        let touched = self.touched.lock().clone();
        let st = self.state.read();
        if !st.accounts.contains_key(account_id) {
            return Err(account_not_found(account_id));
        }
        let mut v: Vec<&TokenRecord> = st
            .tokens
            .values()
            .filter(|t| t.service_account_id == account_id)
            .collect();
        v.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        Ok(v.into_iter()
            .map(|t| token_info(t, touched.get(&t.id).copied(), now))
            .collect())
    }

    /// Mints a service-account token: `ttl` or `eternal` (not both; neither: 90
    /// days), `role` at most the account's (None: the account's). Returns the
    /// metadata and the token, which is never shown again.
    pub fn mint_account_token(
        &self,
        account_id: &str,
        name: &str,
        ttl: Option<Duration>,
        eternal: bool,
        role: Option<Role>,
        created_by: &str,
    ) -> Result<(TokenInfo, String), AuthError> {
        if ttl.is_some() && eternal {
            return Err(AuthError::Invalid("ttl and eternal are mutually exclusive".into()));
        }
        let ttl = match ttl {
            _ if eternal => None,
            Some(t) => Some(valid_ttl(t)?),
            None => Some(DEFAULT_ACCOUNT_TOKEN_TTL),
        };
        if name.len() > MAX_NAME || name.chars().any(char::is_control) {
            return Err(AuthError::Invalid(format!(
                "a token name has at most {MAX_NAME} bytes and no control characters"
            )));
        }
        self.write(|st, now| {
            let a = st
                .accounts
                .get(account_id)
                .ok_or_else(|| account_not_found(account_id))?;
            if a.status != "active" {
                return Err(AuthError::Invalid("service account is disabled".into()));
            }
            let role = role.unwrap_or(a.role);
            if role > a.role {
                return Err(AuthError::Invalid("token role exceeds account role".into()));
            }
            let id = new_id();
            let exp = ttl.map(|t| now.saturating_add(t.as_secs()));
            let claims = Claims {
                iss: self.settings.issuer.clone(),
                aud: self.settings.audience.clone(),
                sub: a.name.clone(),
                iat: now,
                exp,
                jti: id.clone(),
                roles: vec![role.as_str().into()],
                sa_id: Some(a.id.clone()),
            };
            let token = self.sign(&claims)?;
            let rec = TokenRecord {
                id,
                service_account_id: a.id.clone(),
                name: name.into(),
                created_at: now,
                created_by: created_by.into(),
                expires_at: exp,
                revoked_at: None,
                last_used_at: None,
                kid: self.kid(),
                role,
            };
            let info = token_info(&rec, None, now);
            Ok((vec![Change::Token(rec)], (info, token)))
        })
    }

    /// Revokes one token: refused from the moment this returns. Revoking a revoked
    /// token again is no error.
    pub fn revoke_token(&self, account_id: &str, token_id: &str) -> Result<(), AuthError> {
        self.write(|st, now| {
            if !st.accounts.contains_key(account_id) {
                return Err(account_not_found(account_id));
            }
            let t = st
                .tokens
                .get(token_id)
                .filter(|t| t.service_account_id == account_id)
                .ok_or_else(|| AuthError::NotFound(format!("token not found: {token_id}")))?;
            if t.revoked_at.is_some() {
                return Ok((Vec::new(), ()));
            }
            let mut t = t.clone();
            t.revoked_at = Some(now);
            Ok((vec![Change::Token(t)], ()))
        })
    }
}

fn account_not_found(id: &str) -> AuthError {
    AuthError::NotFound(format!("service account not found: {id}"))
}

fn valid_name(name: &str) -> Result<String, AuthError> {
    let n = name.trim();
    if n.is_empty() || n.len() > MAX_NAME || n.chars().any(char::is_control) {
        return Err(AuthError::Invalid(format!(
            "a name has 1 to {MAX_NAME} bytes and no control characters"
        )));
    }
    Ok(n.to_string())
}

fn valid_description(d: &str) -> Result<(), AuthError> {
    if d.len() > MAX_DESCRIPTION {
        return Err(AuthError::Invalid(format!(
            "a description has at most {MAX_DESCRIPTION} bytes"
        )));
    }
    Ok(())
}

fn name_free(st: &State, name: &str, except: Option<&str>) -> Result<(), AuthError> {
    let taken = st
        .accounts
        .values()
        .any(|a| a.status == "active" && a.name.eq_ignore_ascii_case(name) && Some(a.id.as_str()) != except);
    if taken {
        return Err(AuthError::Invalid(format!(
            "service account name already exists: {name}"
        )));
    }
    Ok(())
}

fn valid_ttl(ttl: Duration) -> Result<Duration, AuthError> {
    if ttl.as_secs() == 0 {
        return Err(AuthError::Invalid("ttl must be at least 1 second".into()));
    }
    if ttl > MAX_TTL {
        return Err(AuthError::Invalid("ttl is longer than 100 years".into()));
    }
    Ok(ttl)
}

fn user_claims(settings: &Settings, sub: &str, role: Role, ttl: Duration, now: u64) -> Result<Claims, AuthError> {
    if sub.is_empty() || sub.len() > 256 || sub.chars().any(char::is_control) {
        return Err(AuthError::Invalid(
            "a subject has 1 to 256 bytes and no control characters".into(),
        ));
    }
    let ttl = valid_ttl(ttl)?;
    Ok(Claims {
        iss: settings.issuer.clone(),
        aud: settings.audience.clone(),
        sub: sub.into(),
        iat: now,
        exp: Some(now.saturating_add(ttl.as_secs())),
        jti: new_id(),
        roles: vec![role.as_str().into()],
        sa_id: None,
    })
}

fn token_info(t: &TokenRecord, touched: Option<u64>, now: u64) -> TokenInfo {
    let status = if t.revoked_at.is_some() {
        "revoked"
    } else if t.expires_at.is_some_and(|e| now > e) {
        "expired"
    } else {
        "active"
    };
    TokenInfo {
        id: t.id.clone(),
        service_account_id: t.service_account_id.clone(),
        name: t.name.clone(),
        created_at: rfc3339(t.created_at),
        created_by: t.created_by.clone(),
        expires_at: t.expires_at.map(rfc3339),
        revoked_at: t.revoked_at.map(rfc3339),
        last_used_at: t.last_used_at.max(touched).map(rfc3339),
        kid: t.kid.clone(),
        role: t.role,
        status: status.into(),
    }
}

/// The admin password of a first start without `admin_password_file`: the one in
/// `<state-dir>/admin-password` if an interrupted first start left it, else a new
/// one written there (0600).
fn admin_password(state_dir: &Path) -> Result<String, AuthError> {
    let path = state_dir.join(ADMIN_PASSWORD_FILE);
    if let Ok(text) = std::fs::read_to_string(&path) {
        let pw = text.trim();
        if !pw.is_empty() {
            return Ok(pw.to_string());
        }
        let _ = std::fs::remove_file(&path);
    }
    const ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789";
    let pw: String = (0..24)
        .map(|_| char::from(ALPHABET[rand::random_range(0..ALPHABET.len())]))
        .collect();
    keys::write_new(&path, format!("{pw}\n").as_bytes())
        .map_err(|e| AuthError::Io(format!("writing {}: {e}", path.display())))?;
    keys::sync_dir(state_dir);
    log::warn!(
        "auth: the admin password is in {} (user {ADMIN_USER}); change it with the login API",
        path.display()
    );
    Ok(pw)
}

fn hash_password(password: &str) -> Result<String, AuthError> {
    use argon2::password_hash::{PasswordHasher, SaltString};
    let salt = SaltString::encode_b64(&rand::random::<[u8; 16]>()).map_err(|e| AuthError::Invalid(e.to_string()))?;
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| AuthError::Invalid(format!("hashing the password: {e}")))
}

fn verify_password(password: &str, hash: &str) -> bool {
    use argon2::password_hash::{PasswordHash, PasswordVerifier};
    PasswordHash::new(hash).is_ok_and(|h| {
        argon2::Argon2::default()
            .verify_password(password.as_bytes(), &h)
            .is_ok()
    })
}

/// Mints a user token with the keyset of `state_dir` alone — no store, no lock — so
/// it works while a daemon runs there (`tunloom auth token mint`). When the state
/// directory has no keyset yet, it is created (0600), as the daemon's first start
/// would, and the daemon uses it later. Issuer and audience are the defaults.
pub fn mint_offline(state_dir: &Path, sub: &str, role: Role, ttl: Duration) -> Result<String, AuthError> {
    let now = system_clock()();
    let keys = KeySet::load_or_create(state_dir, now)?;
    let claims = user_claims(&Settings::default(), sub, role, ttl, now)?;
    let mut header = Header::new(Algorithm::EdDSA);
    header.kid = Some(keys.active_kid().to_string());
    header.typ = Some("JWT".into());
    jsonwebtoken::encode(&header, &claims, keys.signing_key()).map_err(|e| AuthError::Key(format!("signing: {e}")))
}

/// A duration as operators write it: `45` or `3600s` (seconds), `30m`, `12h`, `90d`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let (digits, unit) = match t.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => t.split_at(i),
        None => (t, ""),
    };
    let scale = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return Err(format!("{s:?} is not a duration (e.g. 45, 3600s, 30m, 12h, 90d)")),
    };
    if digits.is_empty() || digits.len() > 12 {
        return Err(format!("{s:?} is not a duration (e.g. 45, 3600s, 30m, 12h, 90d)"));
    }
    let n: u64 = digits.parse().map_err(|_| format!("{s:?} is not a duration"))?;
    Ok(Duration::from_secs(n * scale))
}

/// A random UUID (version 4), as ids and `jti`s are written.
pub(crate) fn new_id() -> String {
    let mut b: [u8; 16] = rand::random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex(&b);
    format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..])
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub(crate) fn hex_decode(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || !s.is_ascii() {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
        .collect()
}

fn sha256_hex(s: &str) -> String {
    hex(&Sha256::digest(s.as_bytes()))
}

/// Equality that takes as long whatever the first difference.
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Unix seconds as RFC 3339 UTC (`2026-03-14T12:00:00Z`).
pub fn rfc3339(secs: u64) -> String {
    let days = (secs / 86400) as i64;
    let rem = secs % 86400;
    // Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}
