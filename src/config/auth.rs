//! `[auth]`: who may use the management API — where the first admin's password
//! comes from, and how long the tokens a login hands out last.

use super::Invalid;
use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthSection {
    /// A file holding the `admin` user's password (read at first start only); when
    /// unset, one is generated into `<state-dir>/admin-password` (0600).
    pub admin_password_file: Option<PathBuf>,
    /// Access tokens from a login, in seconds (Weka's 300).
    pub access_ttl_s: u64,
    /// Refresh tokens, in days (Weka's one year).
    pub refresh_ttl_days: u64,
}

impl Default for AuthSection {
    fn default() -> Self {
        let d = crate::auth::Settings::default();
        AuthSection {
            admin_password_file: None,
            access_ttl_s: d.access_ttl.as_secs(),
            refresh_ttl_days: d.refresh_ttl.as_secs() / 86_400,
        }
    }
}

impl AuthSection {
    pub fn validate(&self) -> Result<crate::auth::Settings, Invalid> {
        if let Some(p) = &self.admin_password_file {
            if !p.is_absolute() {
                return Err(Invalid::new(
                    "auth.admin_password_file",
                    format!("{} must be an absolute path", p.display()),
                ));
            }
        }
        let access = Invalid::within("auth.access_ttl_s", self.access_ttl_s, 30, 86_400)?;
        let refresh = Invalid::within("auth.refresh_ttl_days", self.refresh_ttl_days, 1, 3_650)?;
        Ok(crate::auth::Settings {
            admin_password_file: self.admin_password_file.clone(),
            access_ttl: Duration::from_secs(access),
            refresh_ttl: Duration::from_secs(refresh * 86_400),
            ..crate::auth::Settings::default()
        })
    }
}
