//! JWT verification and minting.
//!
//! Owns the decoding key and the `Validation` built once from config: only the configured
//! algorithms, `exp` required, `aud`/`iss` when configured, explicit leeway. `alg: none` is
//! never accepted (jsonwebtoken has no such algorithm; the header fails to parse).
//! When no secret or key is configured, a random HS256 secret is generated on first start
//! and kept in `<data_dir>/jwt_secret` (mode 0600) so that `confab serve` and
//! `confab token` agree with zero setup.

use std::path::Path;
use std::sync::Arc;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::config::AuthConfig;

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("invalid token: {0}")]
    Invalid(String),
    #[error("token expired")]
    Expired,
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("auth key file {path}: {msg}")]
    File { path: String, msg: String },
    #[error("cannot mint tokens: {0}")]
    CannotSign(String),
}

/// The claims confab reads. Unknown claims are ignored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
}

/// An authenticated user, shared by all of a connection's work.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub id: String,
    pub name: String,
    /// The token's `email` claim (001's `auth_success` shows it).
    pub email: Option<String>,
    pub admin: bool,
    /// Token expiry, seconds since the epoch.
    pub exp: u64,
}

pub fn is_hmac(a: Algorithm) -> bool {
    matches!(a, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512)
}

pub struct Authenticator {
    decoding: DecodingKey,
    encoding: Option<EncodingKey>,
    validation: Validation,
    sign_alg: Algorithm,
    audience: Option<String>,
    issuer: Option<String>,
    pub token_ttl_s: u64,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("alg", &self.sign_alg)
            .finish()
    }
}

fn read_file(path: &Path) -> Result<Vec<u8>, KeyError> {
    std::fs::read(path).map_err(|e| KeyError::File {
        path: path.display().to_string(),
        msg: e.to_string(),
    })
}

/// The HS256 secret: configured, or read from / generated into `<data_dir>/jwt_secret`.
/// A sentence for a refused token (the library's Display prints some kinds as their enum
/// names, e.g. `InvalidSignature`, which is what HTTP 401 bodies used to show).
fn reason(kind: &jsonwebtoken::errors::ErrorKind, e: &jsonwebtoken::errors::Error) -> String {
    use jsonwebtoken::errors::ErrorKind as K;
    match kind {
        K::InvalidToken => "malformed token".into(),
        K::InvalidSignature => "invalid signature".into(),
        K::InvalidIssuer => "wrong issuer (`iss`)".into(),
        K::InvalidAudience => "wrong audience (`aud`)".into(),
        K::InvalidSubject => "invalid subject (`sub`)".into(),
        K::ImmatureSignature => "token not valid yet (`nbf`)".into(),
        K::InvalidAlgorithm
        | K::MissingAlgorithm
        | K::InvalidAlgorithmName
        | K::UnsupportedAlgorithm => "algorithm not accepted".into(),
        K::MissingRequiredClaim(c) => format!("missing required claim `{c}`"),
        K::InvalidClaimFormat(c) => format!("invalid format for claim `{c}`"),
        K::Base64(_) | K::Json(_) | K::Utf8(_) => "malformed token".into(),
        _ => format!("token refused: {e}"),
    }
}

pub fn load_or_create_secret(cfg: &AuthConfig, data_dir: &Path) -> Result<String, KeyError> {
    if let Some(s) = &cfg.jwt_secret {
        return Ok(s.clone());
    }
    let path = data_dir.join("jwt_secret");
    let err = |msg: String| KeyError::File {
        path: path.display().to_string(),
        msg,
    };
    match std::fs::read_to_string(&path) {
        Ok(s) if !s.trim().is_empty() => return Ok(s.trim().to_string()),
        Ok(_) => return Err(err("is empty; delete it to generate a new secret".into())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e.to_string())),
    }
    std::fs::create_dir_all(data_dir).map_err(|e| err(format!("cannot create data dir: {e}")))?;
    let mut raw = [0u8; 32];
    getrandom::fill(&mut raw).map_err(|e| err(format!("no randomness: {e}")))?;
    let secret = crate::protocol::hex(&raw);
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    // create_new: two processes starting at once do not overwrite each other's secret.
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
    {
        Ok(mut f) => {
            f.write_all(secret.as_bytes())
                .map_err(|e| err(e.to_string()))?;
            f.sync_all().map_err(|e| err(e.to_string()))?;
            Ok(secret)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => std::fs::read_to_string(&path)
            .map(|s| s.trim().to_string())
            .map_err(|e| err(e.to_string())),
        Err(e) => Err(err(e.to_string())),
    }
}

impl Authenticator {
    pub fn from_config(cfg: &AuthConfig, data_dir: &Path) -> Result<Arc<Authenticator>, KeyError> {
        let sign_alg = cfg.algorithms[0];
        let (decoding, encoding) = if is_hmac(sign_alg) {
            let secret = load_or_create_secret(cfg, data_dir)?;
            (
                DecodingKey::from_secret(secret.as_bytes()),
                Some(EncodingKey::from_secret(secret.as_bytes())),
            )
        } else {
            let path = cfg
                .public_key_file
                .as_deref()
                .ok_or_else(|| KeyError::CannotSign("no public key".into()))?;
            let pem = read_file(path)?;
            let bad = |e: jsonwebtoken::errors::Error| KeyError::File {
                path: path.display().to_string(),
                msg: e.to_string(),
            };
            let dec = match sign_alg {
                Algorithm::ES256 | Algorithm::ES384 => {
                    DecodingKey::from_ec_pem(&pem).map_err(bad)?
                }
                Algorithm::EdDSA => DecodingKey::from_ed_pem(&pem).map_err(bad)?,
                _ => DecodingKey::from_rsa_pem(&pem).map_err(bad)?,
            };
            let enc = match &cfg.private_key_file {
                None => None,
                Some(p) => {
                    let pem = read_file(p)?;
                    let bad = |e: jsonwebtoken::errors::Error| KeyError::File {
                        path: p.display().to_string(),
                        msg: e.to_string(),
                    };
                    Some(match sign_alg {
                        Algorithm::ES256 | Algorithm::ES384 => {
                            EncodingKey::from_ec_pem(&pem).map_err(bad)?
                        }
                        Algorithm::EdDSA => EncodingKey::from_ed_pem(&pem).map_err(bad)?,
                        _ => EncodingKey::from_rsa_pem(&pem).map_err(bad)?,
                    })
                }
            };
            (dec, enc)
        };
        let mut validation = Validation::new(sign_alg);
        validation.algorithms = cfg.algorithms.clone();
        validation.leeway = cfg.leeway_s;
        // Configured means required: jsonwebtoken checks `aud`/`iss` only when the token
        // carries them unless they are listed here too.
        let mut required = vec!["exp", "sub"];
        if cfg.audience.is_some() {
            required.push("aud");
        }
        if cfg.issuer.is_some() {
            required.push("iss");
        }
        validation.set_required_spec_claims(&required);
        validation.validate_exp = true;
        validation.validate_nbf = true;
        match &cfg.audience {
            Some(aud) => validation.set_audience(&[aud]),
            None => validation.validate_aud = false,
        }
        if let Some(iss) = &cfg.issuer {
            validation.set_issuer(&[iss]);
        }
        Ok(Arc::new(Authenticator {
            decoding,
            encoding,
            validation,
            sign_alg,
            audience: cfg.audience.clone(),
            issuer: cfg.issuer.clone(),
            token_ttl_s: cfg.token_ttl_s,
        }))
    }

    pub fn verify(&self, token: &str) -> Result<User, AuthError> {
        match jsonwebtoken::decode::<Claims>(token.trim(), &self.decoding, &self.validation) {
            Ok(data) => {
                let c = data.claims;
                if c.sub.is_empty() || c.sub.len() > 128 {
                    return Err(AuthError::Invalid(
                        "`sub` must be 1 to 128 characters".into(),
                    ));
                }
                let admin = c
                    .scope
                    .as_deref()
                    .is_some_and(|s| s.split_whitespace().any(|x| x == "admin"));
                let name = c
                    .name
                    .filter(|n| !n.is_empty())
                    .unwrap_or_else(|| c.sub.clone());
                Ok(User {
                    id: c.sub,
                    name,
                    email: c.email,
                    admin,
                    exp: c.exp,
                })
            }
            Err(e) => match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => Err(AuthError::Expired),
                kind => Err(AuthError::Invalid(reason(kind, &e))),
            },
        }
    }

    /// Mint a token (for `confab token` and `POST /v1/token`).
    pub fn sign(
        &self,
        sub: &str,
        name: Option<&str>,
        admin: bool,
        ttl_s: u64,
    ) -> Result<String, KeyError> {
        let key = self.encoding.as_ref().ok_or_else(|| {
            KeyError::CannotSign("no private key configured (auth.private_key_file)".into())
        })?;
        let now = now_s();
        let claims = Claims {
            sub: sub.to_string(),
            name: name.map(str::to_string),
            email: None,
            scope: admin.then(|| "admin".to_string()),
            exp: now + ttl_s,
            iat: Some(now),
            aud: self.audience.clone(),
            iss: self.issuer.clone(),
        };
        jsonwebtoken::encode(&Header::new(self.sign_alg), &claims, key)
            .map_err(|e| KeyError::CannotSign(e.to_string()))
    }
}

pub fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn auth_with_secret(secret: &str) -> Arc<Authenticator> {
        let mut cfg = Config::defaults().auth;
        cfg.jwt_secret = Some(secret.into());
        Authenticator::from_config(&cfg, Path::new("/nonexistent")).unwrap()
    }

    #[test]
    fn a_signed_token_verifies_and_carries_the_user() {
        let a = auth_with_secret("s3cret");
        let t = a.sign("alice", Some("Alice"), true, 60).unwrap();
        let u = a.verify(&t).unwrap();
        assert_eq!(
            (u.id.as_str(), u.name.as_str(), u.admin),
            ("alice", "Alice", true)
        );
    }

    #[test]
    fn wrong_key_expired_and_alg_none_are_refused() {
        let a = auth_with_secret("one");
        let b = auth_with_secret("two");
        assert!(matches!(
            b.verify(&a.sign("u", None, false, 60).unwrap()),
            Err(AuthError::Invalid(_))
        ));
        let mut cfg = Config::defaults().auth;
        cfg.jwt_secret = Some("one".into());
        cfg.leeway_s = 0;
        let strict = Authenticator::from_config(&cfg, Path::new("/x")).unwrap();
        let claims = Claims {
            sub: "u".into(),
            name: None,
            email: None,
            scope: None,
            exp: now_s() - 10,
            iat: None,
            aud: None,
            iss: None,
        };
        let old = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(b"one"),
        )
        .unwrap();
        assert!(matches!(strict.verify(&old), Err(AuthError::Expired)));
        use base64::Engine;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let none = format!(
            "{}.{}.",
            b64.encode(br#"{"alg":"none","typ":"JWT"}"#),
            b64.encode(format!(r#"{{"sub":"u","exp":{}}}"#, now_s() + 100))
        );
        assert!(a.verify(&none).is_err());
    }

    #[test]
    fn generated_secret_is_kept_with_mode_0600_and_reused() {
        let dir = std::env::temp_dir().join(format!("confab-secret-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let cfg = Config::defaults().auth;
        let s1 = load_or_create_secret(&cfg, &dir).unwrap();
        let s2 = load_or_create_secret(&cfg, &dir).unwrap();
        assert_eq!(s1, s2);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.join("jwt_secret"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
