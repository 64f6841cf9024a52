use super::*;
use crate::testkit::TempDir;
use std::os::unix::fs::PermissionsExt;
use std::sync::atomic::{AtomicU64, Ordering};

const T0: u64 = 1_770_000_000;

struct Fixture {
    dir: TempDir,
    time: Arc<AtomicU64>,
    id: Identity,
}

impl Fixture {
    fn new(tag: &str) -> Fixture {
        let dir = TempDir::new(&format!("auth-{tag}"));
        let time = Arc::new(AtomicU64::new(T0));
        let id = open(&dir, &time, Settings::default());
        Fixture { dir, time, id }
    }

    fn advance(&self, secs: u64) {
        self.time.fetch_add(secs, Ordering::SeqCst);
    }

    fn reopen(self) -> Fixture {
        let Fixture { dir, time, id } = self;
        drop(id);
        let id = open(&dir, &time, Settings::default());
        Fixture { dir, time, id }
    }

    fn admin_password(&self) -> String {
        std::fs::read_to_string(self.dir.0.join(ADMIN_PASSWORD_FILE))
            .unwrap()
            .trim()
            .to_string()
    }
}

fn open(dir: &TempDir, time: &Arc<AtomicU64>, settings: Settings) -> Identity {
    let t = time.clone();
    Identity::open_with_clock(&dir.0, settings, Arc::new(move || t.load(Ordering::SeqCst))).unwrap()
}

fn why(r: Result<Claims, AuthError>) -> String {
    match r {
        Err(AuthError::BadToken(w)) => w,
        other => panic!("expected BadToken, got {other:?}"),
    }
}

fn client() -> IpAddr {
    "192.0.2.10".parse().unwrap()
}

#[test]
fn mint_and_verify_round_trip() {
    let f = Fixture::new("round-trip");
    let tok = f.id.mint("alice", Role::Readonly, None).unwrap();
    let c = f.id.verify(&tok).unwrap();
    assert_eq!(c.sub, "alice");
    assert_eq!((c.iss.as_str(), c.aud.as_str()), ("tunloom", "tunloom-api"));
    assert_eq!((c.iat, c.exp), (T0, Some(T0 + 300)));
    assert_eq!(c.roles, vec!["readonly".to_string()]);
    assert_eq!(c.role(), Role::Readonly);
    assert!(!c.is_admin());
    assert_eq!(c.sa_id, None);
    assert_eq!(c.jti.len(), 36);
    let header = jsonwebtoken::decode_header(&tok).unwrap();
    assert_eq!(header.alg, Algorithm::EdDSA);
    assert_eq!(header.kid.as_deref(), Some(f.id.kid().as_str()));
    assert_eq!(header.typ.as_deref(), Some("JWT"));
    let admin = f.id.verify(&f.id.mint("root", Role::Admin, None).unwrap()).unwrap();
    assert!(admin.is_admin());
    // The JSON shape the faces send out.
    let v = serde_json::to_value(&c).unwrap();
    for k in ["iss", "aud", "sub", "iat", "exp", "jti", "roles", "sa_id"] {
        assert!(v.get(k).is_some(), "{k} in {v}");
    }
    assert!(matches!(f.id.verify(""), Err(AuthError::MissingToken)));
}

#[test]
fn expiry_has_sixty_seconds_of_leeway() {
    let f = Fixture::new("expiry");
    let tok = f.id.mint("alice", Role::Admin, Some(Duration::from_secs(30))).unwrap();
    f.advance(30 + 60);
    assert!(f.id.verify(&tok).is_ok(), "within the leeway");
    f.advance(1);
    assert_eq!(why(f.id.verify(&tok)), "jwt expired");
    // Issued in the future beyond the leeway (a clock far behind).
    let later = f.id.mint("bob", Role::Admin, None).unwrap();
    f.time.fetch_sub(60, Ordering::SeqCst);
    assert!(f.id.verify(&later).is_ok());
    f.time.fetch_sub(1, Ordering::SeqCst);
    assert_eq!(why(f.id.verify(&later)), "jwt issued in the future");
}

/// A token signed by `key` with these claims (for forgeries).
fn sign_with(keys: &KeySet, kid: &str, claims: &Claims) -> String {
    let mut h = Header::new(Algorithm::EdDSA);
    h.kid = Some(kid.into());
    jsonwebtoken::encode(&h, claims, keys.signing_key()).unwrap()
}

#[test]
fn forged_tampered_and_foreign_tokens_are_refused() {
    let f = Fixture::new("forged");
    let tok = f.id.mint("alice", Role::Readonly, None).unwrap();
    let c = f.id.verify(&tok).unwrap();
    // A changed payload (readonly → admin) under the old signature.
    let parts: Vec<&str> = tok.split('.').collect();
    let mut admin = c.clone();
    admin.roles = vec!["admin".into()];
    let payload = {
        use base64_url as b;
        b::encode(&serde_json::to_vec(&admin).unwrap())
    };
    let tampered = format!("{}.{}.{}", parts[0], payload, parts[2]);
    assert_eq!(why(f.id.verify(&tampered)), "invalid jwt signature");
    // A flipped signature byte.
    let mut sig = parts[2].as_bytes().to_vec();
    sig[5] = if sig[5] == b'A' { b'B' } else { b'A' };
    let flipped = format!("{}.{}.{}", parts[0], parts[1], String::from_utf8(sig).unwrap());
    assert_eq!(why(f.id.verify(&flipped)), "invalid jwt signature");
    // Another keyset (another node) with this node's kid: the signature fails;
    // with its own kid, the kid is unknown.
    let other = TempDir::new("auth-forged-other");
    let theirs = KeySet::load_or_create(&other.0, T0).unwrap();
    assert_eq!(
        why(f.id.verify(&sign_with(&theirs, &f.id.kid(), &c))),
        "invalid jwt signature"
    );
    assert_eq!(
        why(f.id.verify(&sign_with(&theirs, theirs.active_kid(), &c))),
        "unknown jwt kid"
    );
    let offline = mint_offline(&other.0, "x", Role::Admin, Duration::from_secs(60)).unwrap();
    assert_eq!(why(f.id.verify(&offline)), "unknown jwt kid");
    // Our key, wrong issuer or audience.
    let ours = KeySet::load_or_create(&f.dir.0, T0).unwrap();
    let mut w = c.clone();
    w.aud = "neuwerk-api".into();
    assert_eq!(
        why(f.id.verify(&sign_with(&ours, &f.id.kid(), &w))),
        "invalid jwt audience"
    );
    let mut w = c.clone();
    w.iss = "someone".into();
    assert_eq!(
        why(f.id.verify(&sign_with(&ours, &f.id.kid(), &w))),
        "invalid jwt issuer"
    );
    // No exp on a user token.
    let mut w = c.clone();
    w.exp = None;
    assert_eq!(why(f.id.verify(&sign_with(&ours, &f.id.kid(), &w))), "missing jwt exp");
    // alg none, HS256, no kid, garbage.
    let none = format!("{}.{}.", b64(br#"{"alg":"none","typ":"JWT"}"#), parts[1]);
    assert!(f.id.verify(&none).is_err());
    let hs = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &c,
        &jsonwebtoken::EncodingKey::from_secret(b"k"),
    )
    .unwrap();
    assert_eq!(why(f.id.verify(&hs)), "unsupported jwt algorithm");
    let no_kid = jsonwebtoken::encode(&Header::new(Algorithm::EdDSA), &c, ours.signing_key()).unwrap();
    assert_eq!(why(f.id.verify(&no_kid)), "missing jwt kid");
    for junk in ["x", "a.b.c", "..", &"a".repeat(MAX_TOKEN_LEN + 1)] {
        assert!(matches!(f.id.verify(junk), Err(AuthError::BadToken(_))), "{junk}");
    }
}

fn b64(b: &[u8]) -> String {
    base64_url::encode(b)
}

/// Base64url without padding, as JWTs use (only the tests need to forge).
mod base64_url {
    pub fn encode(b: &[u8]) -> String {
        const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut s = String::new();
        for c in b.chunks(3) {
            let n = (u32::from(c[0]) << 16)
                | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
                | u32::from(*c.get(2).unwrap_or(&0));
            for i in 0..=c.len() {
                s.push(char::from(A[(n >> (18 - 6 * i) & 63) as usize]));
            }
        }
        s
    }
}

#[test]
fn revoked_jti_is_refused_and_logout_revokes() {
    let f = Fixture::new("revoke-jti");
    let s = f.id.login("admin", &f.admin_password(), client()).unwrap();
    let c = f.id.verify(&s.access_token).unwrap();
    assert_eq!(c.sub, "admin");
    assert!(c.is_admin());
    assert!(s.password_change_required, "a generated password must be changed");
    assert_eq!(s.expires_in, 300);
    f.id.logout(Some(&s.refresh_token), Some(&c)).unwrap();
    assert_eq!(why(f.id.verify(&s.access_token)), "jwt revoked");
    assert!(matches!(f.id.refresh(&s.refresh_token), Err(AuthError::BadToken(_))));
    // Again: no error.
    f.id.logout(Some(&s.refresh_token), Some(&c)).unwrap();
    // Survives a restart.
    let f = f.reopen();
    assert_eq!(why(f.id.verify(&s.access_token)), "jwt revoked");
    // And is forgotten once the token would have expired anyway.
    f.advance(300 + LEEWAY_S + 1);
    let f = f.reopen();
    assert!(f.id.state.read().revoked.is_empty());
    assert_eq!(why(f.id.verify(&s.access_token)), "jwt expired");
}

#[test]
fn refresh_rotates_and_password_change_revokes_refresh_tokens() {
    let f = Fixture::new("refresh");
    let pw = f.admin_password();
    let s1 = f.id.login("admin", &pw, client()).unwrap();
    f.advance(10);
    let s2 = f.id.refresh(&s1.refresh_token).unwrap();
    assert_ne!(s2.refresh_token, s1.refresh_token);
    assert_ne!(s2.access_token, s1.access_token);
    assert_eq!(f.id.verify(&s2.access_token).unwrap().iat, T0 + 10);
    assert_eq!(
        why(f.id.refresh(&s1.refresh_token).map(|_| unreachable!())),
        "invalid refresh token",
        "a used refresh token is spent"
    );
    // A forged secret with a real id.
    let (id, _) = s2.refresh_token.split_once('.').unwrap();
    assert!(f.id.refresh(&format!("{id}.{}", "0".repeat(64))).is_err());
    assert!(f.id.refresh("").is_err() && f.id.refresh("nodot").is_err());
    // A refresh token runs out after refresh_ttl.
    let other = f.id.login("admin", &pw, client()).unwrap();
    f.id.change_password("admin", "correct horse battery").unwrap();
    assert!(f.id.refresh(&s2.refresh_token).is_err());
    assert!(f.id.refresh(&other.refresh_token).is_err());
    assert!(matches!(
        f.id.login("admin", &pw, client()),
        Err(AuthError::BadCredentials)
    ));
    let s3 = f.id.login("admin", "correct horse battery", client()).unwrap();
    assert!(!s3.password_change_required);
    assert!(matches!(
        f.id.change_password("admin", "short"),
        Err(AuthError::Invalid(_))
    ));
    assert!(matches!(
        f.id.change_password("nobody", "long enough"),
        Err(AuthError::NotFound(_))
    ));
    f.advance(365 * 86400);
    assert!(f.id.refresh(&s3.refresh_token).is_err());
    // The password change survives a restart.
    let f = f.reopen();
    assert!(f.id.login("admin", "correct horse battery", client()).is_ok());
}

#[test]
fn bad_credentials_and_the_rate_limit() {
    let f = Fixture::new("rate");
    let pw = f.admin_password();
    for _ in 0..rate::LIMIT {
        assert!(matches!(
            f.id.login("admin", "wrong", client()),
            Err(AuthError::BadCredentials)
        ));
    }
    // The 21st attempt is refused before the password is looked at.
    let e = f.id.login("admin", &pw, client()).unwrap_err();
    assert!(matches!(e, AuthError::RateLimited { retry_after_s: 120 }), "{e:?}");
    assert_eq!(e.status(), 429);
    assert!(f.id.check_rate(client()).is_err());
    // Another client is not blocked; unknown users count the same.
    let other: IpAddr = "198.51.100.1".parse().unwrap();
    assert!(matches!(
        f.id.login("nobody", "x", other),
        Err(AuthError::BadCredentials)
    ));
    assert!(f.id.check_rate(other).is_ok());
    f.advance(119);
    assert!(f.id.check_rate(client()).is_err());
    f.advance(1);
    assert!(f.id.check_rate(client()).is_ok());
    assert!(f.id.login("admin", &pw, client()).is_ok());
    // record_failure is what token-login uses.
    for _ in 0..rate::LIMIT {
        f.id.record_failure(other);
    }
    assert!(matches!(f.id.check_rate(other), Err(AuthError::RateLimited { .. })));
}

#[test]
fn service_accounts_and_their_tokens() {
    let f = Fixture::new("accounts");
    let a =
        f.id.create_account("terraform", "automation account", Role::Admin, "admin")
            .unwrap();
    assert_eq!(a.status, "active");
    assert_eq!(a.created_at, rfc3339(T0));
    let v = serde_json::to_value(&a).unwrap();
    assert_eq!(v["role"], "admin");
    assert!(matches!(
        f.id.create_account("Terraform", "", Role::Readonly, "admin"),
        Err(AuthError::Invalid(_))
    ));
    let (meta, tok) =
        f.id.mint_account_token(
            &a.id,
            "ci",
            Some(Duration::from_secs(86400)),
            false,
            Some(Role::Readonly),
            "admin",
        )
        .unwrap();
    assert_eq!(meta.status, "active");
    assert_eq!(meta.expires_at.as_deref(), Some(rfc3339(T0 + 86400).as_str()));
    assert_eq!(meta.kid, f.id.kid());
    let c = f.id.verify(&tok).unwrap();
    assert_eq!(c.sa_id.as_deref(), Some(a.id.as_str()));
    assert_eq!(c.jti, meta.id);
    assert_eq!(c.role(), Role::Readonly);
    // Listing never shows the token; last_used_at is seen.
    let list = f.id.tokens(&a.id).unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].last_used_at.as_deref(), Some(rfc3339(T0).as_str()));
    assert!(!serde_json::to_string(&list).unwrap().contains(&tok));
    // Default ttl: 90 days.
    let (d, _) = f.id.mint_account_token(&a.id, "", None, false, None, "admin").unwrap();
    assert_eq!(d.expires_at.as_deref(), Some(rfc3339(T0 + 90 * 86400).as_str()));
    assert_eq!(d.role, Role::Admin);
    // Revoke one token: refused at once.
    f.id.revoke_token(&a.id, &meta.id).unwrap();
    assert_eq!(why(f.id.verify(&tok)), "jwt revoked");
    let listed = f.id.tokens(&a.id).unwrap();
    assert_eq!(listed.iter().find(|t| t.id == meta.id).unwrap().status, "revoked");
    f.id.revoke_token(&a.id, &meta.id).unwrap();
    assert!(matches!(f.id.revoke_token(&a.id, "nope"), Err(AuthError::NotFound(_))));
    assert!(matches!(f.id.tokens("nope"), Err(AuthError::NotFound(_))));
    // Lowering the account's role refuses its admin tokens.
    let (_, admin_tok) =
        f.id.mint_account_token(&a.id, "adm", None, false, Some(Role::Admin), "admin")
            .unwrap();
    assert!(f.id.verify(&admin_tok).unwrap().is_admin());
    let a2 =
        f.id.update_account(&a.id, Some("tf"), None, Some(Role::Readonly))
            .unwrap();
    assert_eq!(
        (a2.name.as_str(), a2.role, a2.description.as_str()),
        ("tf", Role::Readonly, "automation account")
    );
    assert_eq!(why(f.id.verify(&admin_tok)), "token role exceeds account role");
    assert!(matches!(
        f.id.update_account("nope", None, None, None),
        Err(AuthError::NotFound(_))
    ));
}

#[test]
fn minting_rules() {
    let f = Fixture::new("mint-rules");
    let ro = f.id.create_account("reader", "", Role::Readonly, "admin").unwrap();
    let e =
        f.id.mint_account_token(&ro.id, "x", None, false, Some(Role::Admin), "admin")
            .unwrap_err();
    assert!(
        matches!(&e, AuthError::Invalid(m) if m == "token role exceeds account role"),
        "{e:?}"
    );
    assert_eq!(e.status(), 400);
    let e =
        f.id.mint_account_token(&ro.id, "x", Some(Duration::from_secs(60)), true, None, "admin")
            .unwrap_err();
    assert!(
        matches!(&e, AuthError::Invalid(m) if m == "ttl and eternal are mutually exclusive"),
        "{e:?}"
    );
    assert!(matches!(
        f.id.mint_account_token("nope", "x", None, false, None, "admin"),
        Err(AuthError::NotFound(_))
    ));
    assert!(matches!(
        f.id.mint_account_token(&ro.id, "x", Some(Duration::ZERO), false, None, "admin"),
        Err(AuthError::Invalid(_))
    ));
    assert!(matches!(f.id.mint("", Role::Admin, None), Err(AuthError::Invalid(_))));
    // Eternal: no exp, valid years later, until revoked.
    let (meta, tok) =
        f.id.mint_account_token(&ro.id, "forever", None, true, None, "admin")
            .unwrap();
    assert_eq!(meta.expires_at, None);
    let c = f.id.verify(&tok).unwrap();
    assert_eq!(c.exp, None);
    f.advance(10 * 365 * 86400);
    assert!(f.id.verify(&tok).is_ok());
    // A token without exp is only accepted for an eternal service-account token:
    // a user token without exp is refused even signed by our key.
    let keys = KeySet::load_or_create(&f.dir.0, T0).unwrap();
    let mut user = c.clone();
    user.sa_id = None;
    assert_eq!(
        why(f.id.verify(&sign_with(&keys, &f.id.kid(), &user))),
        "missing jwt exp"
    );
    // …and a service-account token minted with a ttl, re-signed without exp.
    let (m2, _) =
        f.id.mint_account_token(&ro.id, "short", Some(Duration::from_secs(60)), false, None, "admin")
            .unwrap();
    let mut stripped = c.clone();
    stripped.jti = m2.id.clone();
    assert_eq!(
        why(f.id.verify(&sign_with(&keys, &f.id.kid(), &stripped))),
        "missing jwt exp"
    );
    f.id.revoke_token(&ro.id, &meta.id).unwrap();
    assert_eq!(why(f.id.verify(&tok)), "jwt revoked");
}

#[test]
fn deleting_an_account_refuses_its_tokens_at_once_and_after_restart() {
    let f = Fixture::new("delete-account");
    let a = f.id.create_account("ci", "", Role::Admin, "admin").unwrap();
    let (_, t1) =
        f.id.mint_account_token(&a.id, "one", None, true, None, "admin")
            .unwrap();
    let (_, t2) =
        f.id.mint_account_token(&a.id, "two", None, false, Some(Role::Readonly), "admin")
            .unwrap();
    assert!(f.id.verify(&t1).is_ok() && f.id.verify(&t2).is_ok());
    f.id.delete_account(&a.id).unwrap();
    assert_eq!(why(f.id.verify(&t1)), "service account disabled");
    assert_eq!(why(f.id.verify(&t2)), "service account disabled");
    assert_eq!(f.id.account(&a.id).unwrap().status, "disabled");
    assert!(f.id.tokens(&a.id).unwrap().iter().all(|t| t.status == "revoked"));
    assert!(matches!(
        f.id.mint_account_token(&a.id, "x", None, false, None, "admin"),
        Err(AuthError::Invalid(_))
    ));
    f.id.delete_account(&a.id).unwrap();
    assert!(matches!(f.id.delete_account("nope"), Err(AuthError::NotFound(_))));
    // The name is free again.
    f.id.create_account("ci", "", Role::Admin, "admin").unwrap();
    let f = f.reopen();
    assert_eq!(why(f.id.verify(&t1)), "service account disabled");
    assert_eq!(f.id.accounts().len(), 2);
}

#[test]
fn state_survives_reopen_and_files_are_private() {
    let f = Fixture::new("persist");
    let kid = f.id.kid();
    let a =
        f.id.create_account("keep", "d", Role::Readonly, "op@example.com")
            .unwrap();
    let (meta, tok) =
        f.id.mint_account_token(&a.id, "t", None, true, None, "op@example.com")
            .unwrap();
    f.id.verify(&tok).unwrap();
    let user_tok =
        f.id.mint("alice", Role::Admin, Some(Duration::from_secs(3600)))
            .unwrap();
    let s = f.id.login("admin", &f.admin_password(), client()).unwrap();
    // A write after the use carries last_used_at to disk.
    f.id.create_account("other", "", Role::Readonly, "x").unwrap();
    let pw = f.admin_password();
    let f = f.reopen();
    assert_eq!(f.id.kid(), kid);
    assert_eq!(f.id.account(&a.id).unwrap(), a);
    let list = f.id.tokens(&a.id).unwrap();
    assert_eq!(list[0].id, meta.id);
    assert_eq!(list[0].last_used_at.as_deref(), Some(rfc3339(T0).as_str()));
    assert!(f.id.verify(&tok).is_ok());
    assert!(f.id.verify(&user_tok).is_ok());
    assert!(f.id.refresh(&s.refresh_token).is_ok());
    assert_eq!(f.admin_password(), pw, "the admin password is made once");
    assert!(f.id.login("admin", &pw, client()).is_ok());
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&f.dir.0.join("auth/keys.json")), 0o600);
    assert_eq!(mode(&f.dir.0.join(ADMIN_PASSWORD_FILE)), 0o600);
    assert_eq!(mode(&f.dir.0.join("auth/state.redb")), 0o600);
    assert_eq!(mode(&f.dir.0.join("auth")), 0o700);
    // The password is in no other file.
    let db = std::fs::read(f.dir.0.join("auth/state.redb")).unwrap();
    assert!(!db.windows(pw.len()).any(|w| w == pw.as_bytes()));
}

#[test]
fn the_admin_password_file_setting() {
    let dir = TempDir::new("auth-password-file");
    let file = dir.0.join("pw");
    std::fs::write(&file, "  s3cret-from-file \n").unwrap();
    let time = Arc::new(AtomicU64::new(T0));
    let settings = Settings {
        admin_password_file: Some(file.clone()),
        ..Settings::default()
    };
    let id = open(&dir, &time, settings.clone());
    assert!(!dir.0.join(ADMIN_PASSWORD_FILE).exists());
    let s = id.login("admin", "s3cret-from-file", client()).unwrap();
    assert!(!s.password_change_required);
    drop(id);
    let empty = TempDir::new("auth-password-file-empty");
    std::fs::write(&file, "\n").unwrap();
    let t = time.clone();
    assert!(matches!(
        Identity::open_with_clock(&empty.0, settings, Arc::new(move || t.load(Ordering::SeqCst))),
        Err(AuthError::Invalid(_))
    ));
}

#[test]
fn mint_offline_creates_or_reuses_the_keyset() {
    let dir = TempDir::new("auth-offline");
    let tok = mint_offline(&dir.0, "ops", Role::Admin, Duration::from_secs(1800)).unwrap();
    let mode = std::fs::metadata(dir.0.join("auth/keys.json"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    // The daemon's first start uses the keyset the command made.
    let id = Identity::open(&dir.0, Settings::default()).unwrap();
    let c = id.verify(&tok).unwrap();
    assert_eq!((c.sub.as_str(), c.role()), ("ops", Role::Admin));
    assert_eq!(c.exp.unwrap() - c.iat, 1800);
    // And mints while the daemon has the state open.
    let tok2 = mint_offline(&dir.0, "ops", Role::Readonly, Duration::from_secs(60)).unwrap();
    assert_eq!(id.verify(&tok2).unwrap().role(), Role::Readonly);
}

#[test]
fn durations_roles_and_statuses() {
    let d = |s: &str| parse_duration(s).map(|d| d.as_secs());
    assert_eq!(d("30m"), Ok(1800));
    assert_eq!(d("12h"), Ok(43200));
    assert_eq!(d("90d"), Ok(90 * 86400));
    assert_eq!(d("3600s"), Ok(3600));
    assert_eq!(d("45"), Ok(45));
    for bad in ["", "m", "1w", "-5", "1.5h", "10 m", "99999999999999d", "1h30m"] {
        assert!(parse_duration(bad).is_err(), "{bad}");
    }
    assert!(Role::Admin > Role::Readonly);
    assert_eq!(serde_json::to_string(&Role::Readonly).unwrap(), "\"readonly\"");
    assert_eq!("admin".parse::<Role>(), Ok(Role::Admin));
    assert!("Admin".parse::<Role>().is_err());
    let statuses = [
        (AuthError::BadCredentials, 401),
        (AuthError::MissingToken, 401),
        (AuthError::BadToken("x".into()), 401),
        (AuthError::RateLimited { retry_after_s: 1 }, 429),
        (AuthError::NotFound("x".into()), 404),
        (AuthError::Invalid("x".into()), 400),
        (AuthError::Forbidden("x".into()), 403),
        (AuthError::Store(StoreError::Stopped), 503),
        (AuthError::Io("x".into()), 500),
    ];
    for (e, s) in statuses {
        assert_eq!(e.status(), s, "{e:?}");
    }
    assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
    assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    assert_eq!(rfc3339(1_773_489_600), "2026-03-14T12:00:00Z");
    let id = new_id();
    assert_eq!((id.len(), &id[14..15]), (36, "4"));
    assert_eq!(hex_decode(&hex(&[0, 255, 16])), Some(vec![0, 255, 16]));
    assert_eq!(hex_decode("zz"), None);
}

#[test]
fn identity_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Identity>();
}

#[test]
fn logout_with_a_service_account_token_revokes_it() {
    let f = Fixture::new("logout-sa");
    let a = f.id.create_account("ui", "", Role::Readonly, "admin").unwrap();
    let (meta, tok) =
        f.id.mint_account_token(&a.id, "cookie", None, false, None, "admin")
            .unwrap();
    let c = f.id.verify(&tok).unwrap();
    f.id.logout(None, Some(&c)).unwrap();
    assert_eq!(why(f.id.verify(&tok)), "jwt revoked");
    let t = f.id.tokens(&a.id).unwrap();
    assert_eq!((t[0].id.as_str(), t[0].status.as_str()), (meta.id.as_str(), "revoked"));
    assert!(f.id.state.read().revoked.is_empty(), "kept in the token's metadata");
    f.id.logout(Some("not-a-refresh-token"), None).unwrap();
}

#[test]
fn refusals_are_counted_by_reason_and_other_errors_are_not() {
    let f = Fixture::new("failures");
    let client: IpAddr = "192.0.2.9".parse().unwrap();
    let count = |e: AuthError| f.id.count_failure(&e);
    count(f.id.login(ADMIN_USER, "wrong", client).unwrap_err());
    count(f.id.verify("").unwrap_err());
    count(f.id.verify("a.b.c").unwrap_err());
    let short = f.id.mint("alice", Role::Admin, Some(Duration::from_secs(30))).unwrap();
    let bob = f.id.mint("bob", Role::Admin, None).unwrap();
    f.id.logout(None, Some(&f.id.verify(&bob).unwrap())).unwrap();
    count(f.id.verify(&bob).unwrap_err());
    f.advance(100);
    count(f.id.verify(&short).unwrap_err());
    count(AuthError::Invalid("a bad request".into()));
    count(AuthError::NotFound("nothing".into()));
    let c = f.id.failures().snapshot();
    assert_eq!(c["bad_credentials"], 1);
    assert_eq!(c["missing_token"], 1);
    assert_eq!(c["bad_token"], 1);
    assert_eq!(c["revoked_token"], 1);
    assert_eq!(c["expired_token"], 1);
    assert_eq!(c.values().sum::<u64>(), 5, "{c:?}");
    assert_eq!(bad(DISABLED).failure(), Some(AuthFailure::RevokedToken));
}
