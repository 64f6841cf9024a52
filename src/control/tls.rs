//! TLS for the management listener: the certificate it serves, and the rustls
//! configuration the HTTP server ([`super::http`]) drives each connection with.
//!
//! Two sources ([`Tls`], `[api]` in the configuration):
//! - **Files** (`api.tls_cert_file`, `api.tls_key_file`): PEM, read at start; the
//!   certificate file may hold a chain, leaf first.
//! - **Self-signed** (`api.tls = "self-signed"`): a CA and a certificate it signs,
//!   made once into `<state-dir>/tls/` and reused on every later start:
//!   - `ca.pem`: what clients trust (`curl --cacert <state-dir>/tls/ca.pem`); its
//!     SHA-256 fingerprint is what to compare out of band;
//!   - `ca.key` (0600): kept so the certificate can be issued again, by the same CA,
//!     when the listen address changes or it nears its end — clients go on trusting
//!     `ca.pem` throughout;
//!   - `cert.pem`, `key.pem` (0600): the certificate served, for `localhost`,
//!     `127.0.0.1`, `::1` and the listen address (unless that is the wildcard).
//!
//!   The CA is valid for 20 years, the certificate for 2; at each start a certificate
//!   that does not chain to the CA, lacks a name or ends within 30 days is issued
//!   anew. The directory is 0700, the keys 0600, written to a temporary file and
//!   renamed, so a crash never leaves half a key.
//!
//! Keys are ECDSA P-256; the protocol versions are TLS 1.3 and 1.2 with rustls's safe
//! defaults, over the `ring` provider; ALPN offers `http/1.1` only.

/// Where the management listener's certificate comes from (`[api]`: `tls`,
/// `tls_cert_file`, `tls_key_file`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tls {
    /// Plain HTTP.
    Off,
    /// `api.tls_cert_file` and `api.tls_key_file`.
    Files { cert: PathBuf, key: PathBuf },
    /// `api.tls = "self-signed"`: made once into `<state-dir>/tls/`.
    SelfSigned,
}
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// A certificate that cannot be used, and the configuration key it comes from.
#[derive(Debug, thiserror::Error)]
#[error("{key}: {message}")]
pub struct TlsError {
    pub key: &'static str,
    pub message: String,
}

fn err(key: &'static str, message: impl Into<String>) -> TlsError {
    TlsError {
        key,
        message: message.into(),
    }
}

/// The certificate the listener serves, ready for connections.
#[derive(Clone)]
pub struct Loaded {
    pub config: Arc<rustls::ServerConfig>,
    /// The certificate clients should trust (`--cacert`): the CA when self-signed,
    /// the configured certificate file otherwise.
    pub trust: PathBuf,
    /// SHA-256 of `trust`'s (first) certificate, as colon-separated hex.
    pub trust_fingerprint: String,
    /// The file of the certificate served, and its fingerprint.
    pub cert: PathBuf,
    pub cert_fingerprint: String,
    /// What this start made in the state directory (empty when it reused it all).
    pub made: Vec<&'static str>,
}

impl std::fmt::Debug for Loaded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Loaded")
            .field("trust", &self.trust)
            .field("trust_fingerprint", &self.trust_fingerprint)
            .field("cert", &self.cert)
            .field("made", &self.made)
            .finish()
    }
}

/// Where `api.tls = "self-signed"` keeps its files under a state directory.
#[derive(Debug, Clone)]
pub struct SelfSignedFiles {
    pub dir: PathBuf,
    pub ca: PathBuf,
    pub ca_key: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl SelfSignedFiles {
    pub fn under(state_dir: &Path) -> SelfSignedFiles {
        let dir = state_dir.join("tls");
        SelfSignedFiles {
            ca: dir.join("ca.pem"),
            ca_key: dir.join("ca.key"),
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
            dir,
        }
    }
}

/// The certificate for `tls` on `listen`, made or read; `None` when TLS is off.
pub fn load(tls: &Tls, listen: SocketAddr, state_dir: &Path) -> Result<Option<Loaded>, TlsError> {
    match tls {
        Tls::Off => Ok(None),
        Tls::Files { cert, key } => from_files(cert, key).map(Some),
        Tls::SelfSigned => self_signed(&SelfSignedFiles::under(state_dir), listen, SystemTime::now()).map(Some),
    }
}

/// SHA-256 of a DER certificate as `AB:CD:…`, as `openssl x509 -fingerprint
/// -sha256` shows it.
pub fn fingerprint(der: &[u8]) -> String {
    let d = Sha256::digest(der);
    d.iter().map(|b| format!("{b:02X}")).collect::<Vec<_>>().join(":")
}

/// The fingerprint of the first certificate in the PEM file `path`.
pub fn fingerprint_of(path: &Path, key: &'static str) -> Result<String, TlsError> {
    let chain = read_chain(path, key)?;
    Ok(fingerprint(&chain[0]))
}

/// The largest PEM file read.
const MAX_PEM: u64 = 1 << 20;

fn read_bounded(path: &Path, key: &'static str) -> Result<Vec<u8>, TlsError> {
    let shown = path.display();
    let meta = std::fs::metadata(path).map_err(|e| err(key, format!("cannot read {shown}: {e}")))?;
    if !meta.is_file() {
        return Err(err(key, format!("{shown} is not a regular file")));
    }
    let mut buf = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_PEM + 1).read_to_end(&mut buf))
        .map_err(|e| err(key, format!("cannot read {shown}: {e}")))?;
    if buf.len() as u64 > MAX_PEM {
        return Err(err(key, format!("{shown} is larger than {MAX_PEM} bytes")));
    }
    Ok(buf)
}

fn read_chain(path: &Path, key: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read_bounded(path, key)?;
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(key, format!("{}: not PEM certificates: {e}", path.display())))?;
    if chain.is_empty() {
        return Err(err(
            key,
            format!(
                "{} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
                path.display()
            ),
        ));
    }
    Ok(chain)
}

fn read_key(path: &Path, key: &'static str) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read_bounded(path, key)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
        err(
            key,
            format!("{}: no PEM private key (PKCS#8, PKCS#1 or SEC1): {e}", path.display()),
        )
    })
}

fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    cert_key: &'static str,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| err(cert_key, format!("TLS versions: {e}")))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| err(cert_key, format!("certificate and key cannot be used together: {e}")))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

fn from_files(cert: &Path, key: &Path) -> Result<Loaded, TlsError> {
    let chain = read_chain(cert, "api.tls_cert_file")?;
    let k = read_key(key, "api.tls_key_file")?;
    if let Ok(m) = std::fs::metadata(key) {
        use std::os::unix::fs::PermissionsExt;
        if m.permissions().mode() & 0o077 != 0 {
            log::warn!(
                "api.tls_key_file: {} can be read by other users (mode {:o}); chmod 600 it",
                key.display(),
                m.permissions().mode() & 0o777
            );
        }
    }
    let fp = fingerprint(&chain[0]);
    Ok(Loaded {
        config: server_config(chain, k, "api.tls_cert_file")?,
        trust: cert.to_owned(),
        trust_fingerprint: fp.clone(),
        cert: cert.to_owned(),
        cert_fingerprint: fp,
        made: Vec::new(),
    })
}

const CA_YEARS: u32 = 20;
const CERT_YEARS: u32 = 2;
/// A certificate that ends sooner than this is issued anew at start.
const RENEW_BEFORE: Duration = Duration::from_secs(30 * 86_400);
const YEAR: Duration = Duration::from_secs(365 * 86_400);

/// The names the self-signed certificate must carry for `listen`.
pub fn names_for(listen: SocketAddr) -> Vec<String> {
    let mut names = vec!["localhost".to_string(), "127.0.0.1".to_string(), "::1".to_string()];
    let ip = listen.ip();
    if !ip.is_unspecified() && !names.contains(&ip.to_string()) {
        names.push(ip.to_string());
    }
    names
}

fn to_offset(t: SystemTime) -> time::OffsetDateTime {
    let secs = t.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    time::OffsetDateTime::from_unix_timestamp(secs as i64).unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

/// The CA's parameters, a function of its key alone: its name carries a digest of
/// the public key (two nodes' CAs never share a name), so the issuer of a new
/// certificate can be rebuilt from `ca.key` without parsing `ca.pem`.
fn ca_params(key: &rcgen::KeyPair, now: SystemTime) -> rcgen::CertificateParams {
    let mut p = rcgen::CertificateParams::default();
    let id = Sha256::digest(key.public_key_raw());
    let tag: String = id[..6].iter().map(|b| format!("{b:02x}")).collect();
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name.push(rcgen::DnType::OrganizationName, "tunloom");
    p.distinguished_name
        .push(rcgen::DnType::CommonName, format!("tunloom management CA {tag}"));
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    p.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    p.not_before = to_offset(now - Duration::from_secs(86_400));
    p.not_after = to_offset(now + YEAR * CA_YEARS);
    p
}

fn leaf_params(names: &[String], now: SystemTime) -> Result<rcgen::CertificateParams, TlsError> {
    let mut p = rcgen::CertificateParams::new(names.to_vec())
        .map_err(|e| err("api.listen", format!("cannot name the certificate: {e}")))?;
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name.push(rcgen::DnType::OrganizationName, "tunloom");
    p.distinguished_name
        .push(rcgen::DnType::CommonName, "tunloom management API");
    p.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    p.use_authority_key_identifier_extension = true;
    p.not_before = to_offset(now - Duration::from_secs(86_400));
    p.not_after = to_offset(now + YEAR * CERT_YEARS);
    Ok(p)
}

/// Whether `leaf` chains to `ca`, is in date until `until` and names every one of
/// `names`; why not, if not.
fn leaf_usable(
    leaf: &CertificateDer<'_>,
    ca: &CertificateDer<'_>,
    names: &[String],
    until: SystemTime,
) -> Result<(), String> {
    let anchor = webpki::anchor_from_trusted_cert(ca).map_err(|e| format!("the CA: {e}"))?;
    let ee = webpki::EndEntityCert::try_from(leaf).map_err(|e| format!("the certificate: {e}"))?;
    let at = UnixTime::since_unix_epoch(until.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default());
    ee.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        &[anchor],
        &[],
        at,
        webpki::KeyUsage::server_auth(),
        None,
        None,
    )
    .map_err(|e| format!("not valid by the CA for the next 30 days: {e}"))?;
    for n in names {
        let name = ServerName::try_from(n.as_str()).map_err(|e| format!("{n}: {e}"))?;
        ee.verify_is_valid_for_subject_name(&name)
            .map_err(|_| format!("does not name {n}"))?;
    }
    Ok(())
}

/// Writes `bytes` to `path` with `mode`, whole or not at all: a temporary file,
/// synced, renamed over.
fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), TlsError> {
    use std::os::unix::fs::OpenOptionsExt;
    let e = |what: &str, e: std::io::Error| err("api.tls", format!("cannot {what} {}: {e}", path.display()));
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(|x| e("create", x))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(|x| e("write", x))?;
    std::fs::rename(&tmp, path).map_err(|x| e("write", x))?;
    if let Some(dir) = path.parent() {
        let _ = std::fs::File::open(dir).and_then(|d| d.sync_all());
    }
    Ok(())
}

fn gen_err(e: rcgen::Error) -> TlsError {
    err("api.tls", format!("cannot make the self-signed certificate: {e}"))
}

/// `api.tls = "self-signed"`: the CA and certificate in `files`, made when missing
/// and the certificate issued anew when it no longer fits `listen` or `now`.
pub fn self_signed(files: &SelfSignedFiles, listen: SocketAddr, now: SystemTime) -> Result<Loaded, TlsError> {
    use std::os::unix::fs::PermissionsExt;
    let dir = &files.dir;
    std::fs::create_dir_all(dir)
        .and_then(|()| std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)))
        .map_err(|e| err("api.tls", format!("cannot make {}: {e}", dir.display())))?;
    let mut made = Vec::new();
    let (ca_key, ca_der) = match (files.ca.exists(), files.ca_key.exists()) {
        (true, true) => {
            let pem = read_bounded(&files.ca_key, "api.tls")?;
            let text = String::from_utf8_lossy(&pem);
            let key = rcgen::KeyPair::from_pem(&text)
                .map_err(|e| err("api.tls", format!("{}: not a usable key: {e}", files.ca_key.display())))?;
            let der = read_chain(&files.ca, "api.tls")?.swap_remove(0);
            (key, der)
        }
        (false, false) => {
            let key = rcgen::KeyPair::generate().map_err(gen_err)?;
            let cert = ca_params(&key, now).self_signed(&key).map_err(gen_err)?;
            write_file(&files.ca_key, key.serialize_pem().as_bytes(), 0o600)?;
            write_file(&files.ca, cert.pem().as_bytes(), 0o644)?;
            made.push("CA");
            (key, cert.der().clone())
        }
        (ca, _) => {
            let (have, lack) = if ca {
                (&files.ca, &files.ca_key)
            } else {
                (&files.ca_key, &files.ca)
            };
            return Err(err(
                "api.tls",
                format!(
                    "{} is there but {} is not; restore it, or remove {} to make a new CA (clients must then trust the new ca.pem)",
                    have.display(),
                    lack.display(),
                    dir.display()
                ),
            ));
        }
    };
    let names = names_for(listen);
    let stored = if files.cert.exists() && files.key.exists() {
        let leaf = read_chain(&files.cert, "api.tls")?.swap_remove(0);
        match leaf_usable(&leaf, &ca_der, &names, now + RENEW_BEFORE) {
            Ok(()) => Some((leaf, read_key(&files.key, "api.tls")?)),
            Err(why) => {
                log::info!("api: {} is issued anew: {why}", files.cert.display());
                None
            }
        }
    } else {
        None
    };
    let (leaf, key) = match stored {
        Some(s) => s,
        None => {
            let key = rcgen::KeyPair::generate().map_err(gen_err)?;
            let issuer = rcgen::Issuer::new(ca_params(&ca_key, now), &ca_key);
            let cert = leaf_params(&names, now)?.signed_by(&key, &issuer).map_err(gen_err)?;
            write_file(&files.key, key.serialize_pem().as_bytes(), 0o600)?;
            write_file(&files.cert, cert.pem().as_bytes(), 0o644)?;
            made.push("certificate");
            let der = PrivateKeyDer::try_from(key.serialize_der())
                .map_err(|e| err("api.tls", format!("the new key: {e}")))?;
            (cert.der().clone(), der)
        }
    };
    let (trust_fingerprint, cert_fingerprint) = (fingerprint(&ca_der), fingerprint(&leaf));
    Ok(Loaded {
        config: server_config(vec![leaf, ca_der], key, "api.tls")?,
        trust: files.ca.clone(),
        trust_fingerprint,
        cert: files.cert.clone(),
        cert_fingerprint,
        made,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("tunloom-tls-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn self_signed_is_made_once_and_reused() {
        use std::os::unix::fs::PermissionsExt;
        let d = tmp("reuse");
        let files = SelfSignedFiles::under(&d);
        let listen: SocketAddr = "127.0.0.1:6786".parse().unwrap();
        let now = SystemTime::now();
        let a = self_signed(&files, listen, now).unwrap();
        assert_eq!(a.made, ["CA", "certificate"]);
        for k in [&files.ca_key, &files.key] {
            assert_eq!(std::fs::metadata(k).unwrap().permissions().mode() & 0o777, 0o600);
        }
        assert_eq!(
            std::fs::metadata(&files.dir).unwrap().permissions().mode() & 0o777,
            0o700
        );
        let b = self_signed(&files, listen, now).unwrap();
        assert!(b.made.is_empty());
        assert_eq!(
            (a.trust_fingerprint.as_str(), a.cert_fingerprint.as_str()),
            (b.trust_fingerprint.as_str(), b.cert_fingerprint.as_str())
        );
        assert_eq!(a.trust_fingerprint, fingerprint_of(&files.ca, "t").unwrap());
        assert_eq!(a.trust_fingerprint.len(), 32 * 3 - 1);

        // A new listen address: a new certificate by the same CA.
        let c = self_signed(&files, "127.0.0.2:6786".parse().unwrap(), now).unwrap();
        assert_eq!(c.made, ["certificate"]);
        assert_eq!(c.trust_fingerprint, a.trust_fingerprint);
        assert_ne!(c.cert_fingerprint, a.cert_fingerprint);
        let leaf = read_chain(&files.cert, "t").unwrap().swap_remove(0);
        let ca = read_chain(&files.ca, "t").unwrap().swap_remove(0);
        let names = names_for("127.0.0.2:6786".parse().unwrap());
        leaf_usable(&leaf, &ca, &names, now).unwrap();
        // Near its end (2 years on): issued anew, the CA still the same.
        let later = now + YEAR * 2 - Duration::from_secs(86_400);
        assert!(leaf_usable(&leaf, &ca, &names, later + RENEW_BEFORE).is_err());
        let e = self_signed(&files, "127.0.0.2:6786".parse().unwrap(), later).unwrap();
        assert_eq!(e.made, ["certificate"]);
        assert_eq!(e.trust_fingerprint, a.trust_fingerprint);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_lost_ca_key_is_an_error_that_says_what_to_do() {
        let d = tmp("lost");
        let files = SelfSignedFiles::under(&d);
        self_signed(&files, "127.0.0.1:6786".parse().unwrap(), SystemTime::now()).unwrap();
        std::fs::remove_file(&files.ca_key).unwrap();
        let e = self_signed(&files, "127.0.0.1:6786".parse().unwrap(), SystemTime::now()).unwrap_err();
        assert_eq!(e.key, "api.tls");
        assert!(e.message.contains("ca.key") && e.message.contains("remove"), "{e}");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn files_are_read_and_their_errors_name_the_key() {
        let d = tmp("files");
        let files = SelfSignedFiles::under(&d);
        self_signed(&files, "127.0.0.1:6786".parse().unwrap(), SystemTime::now()).unwrap();
        let l = from_files(&files.cert, &files.key).unwrap();
        assert_eq!(l.trust, files.cert);
        assert_eq!(l.cert_fingerprint, fingerprint_of(&files.cert, "t").unwrap());
        // Swapped: no key in the certificate file, no certificate in the key file.
        let e = from_files(&files.key, &files.cert).unwrap_err();
        assert_eq!(e.key, "api.tls_cert_file", "{e}");
        let e = from_files(&files.cert, &files.cert).unwrap_err();
        assert_eq!(e.key, "api.tls_key_file", "{e}");
        // A key that is not the certificate's.
        let e = from_files(&files.cert, &files.ca_key).unwrap_err();
        assert_eq!(e.key, "api.tls_cert_file", "{e}");
        let e = from_files(&d.join("nope.pem"), &files.key).unwrap_err();
        assert!(e.message.contains("nope.pem"), "{e}");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn names_cover_loopback_and_the_listen_address() {
        let n = names_for("10.1.2.3:6786".parse().unwrap());
        assert_eq!(n, ["localhost", "127.0.0.1", "::1", "10.1.2.3"]);
        assert_eq!(names_for("0.0.0.0:6786".parse().unwrap()).len(), 3);
    }
}
