//! Reading what a valid configuration points at, before anything starts.
//!
//! [`Config::load`] checks the file itself without touching anything else, so a reload
//! can be judged quickly and tests can parse configurations naming files that do not
//! exist. Starting reads the certificates, keys, secrets and JWKS files; a missing or
//! broken one used to surface only then, after `--check` had said "ok", and in a message
//! that named neither the configuration file nor the key. [`check_files`] reads them
//! all the way start does, without binding a socket or fetching a URL, and names the key.

use crate::config::{Config, ConfigError, JwtConfig};

/// Reads every file (and secret environment variable) `cfg` names, as start would.
/// `file` names the configuration in errors. `jwks_url` is not fetched: the identity
/// provider may be out of reach from where a configuration is checked.
pub async fn check_files(cfg: &Config, file: &str) -> Result<(), ConfigError> {
    let err = |key: String, message: String| ConfigError {
        file: file.to_string(),
        key,
        message,
    };
    if let Some(t) = &cfg.server.tls {
        // Its messages start with the key (`server.tls.cert: …`).
        crate::tls::CertStore::load(t).map_err(|m| match m.split_once(": ") {
            Some((key, rest)) if key.starts_with("server.tls") => err(key.into(), rest.into()),
            _ => err("server.tls".into(), m),
        })?;
    }
    for (i, u) in cfg.upstream.iter().enumerate() {
        let client_auth = u.client_cert.as_deref().zip(u.client_key.as_deref());
        crate::upstream::tls_client_config(u.ca_file.as_deref(), client_auth).map_err(
            |m| match m.split_once(": ") {
                Some((key, rest)) if ["ca_file", "client_cert", "client_key"].contains(&key) => {
                    err(format!("upstream[{i}].{key}"), rest.into())
                }
                _ => err(format!("upstream[{i}]"), m),
            },
        )?;
    }
    for (i, r) in cfg.route.iter().enumerate() {
        if let Some(j) = &r.jwt {
            check_jwt_files(j, r.origins.is_some())
                .await
                .map_err(|(key, m)| err(format!("route[{i}].{key}"), m))?;
        }
    }
    Ok(())
}

/// Builds the route's JWT keys from its files and environment without the JWKS URL
/// (which would be fetched), and reads `jwks_ca_file`.
async fn check_jwt_files(j: &JwtConfig, has_origins: bool) -> Result<(), (String, String)> {
    if let Some(ca) = &j.jwks_ca_file {
        crate::tls::read_certs(ca).map_err(|m| ("jwt.jwks_ca_file".to_string(), m))?;
    }
    let local = JwtConfig {
        jwks_url: None,
        jwks_ca_file: None,
        jwks_refresh: None,
        ..j.clone()
    };
    let has_local_keys = local.jwks_file.is_some()
        || local.secret_file.is_some()
        || local.secret_env.is_some()
        || !local.public_keys.is_empty();
    if !has_local_keys {
        return Ok(());
    }
    crate::layers::jwt_builder(&local, has_origins)
        .map_err(|(k, m)| (format!("jwt.{k}"), m))?
        .build()
        .await
        .map(drop)
        .map_err(|e| {
            let m = e.to_string();
            let m = m.strip_prefix("jwt: ").unwrap_or(&m);
            // `jwks_file: cannot read …`: the key is the message's first word.
            match m.split_once(": ") {
                Some((key, rest)) if !key.contains(' ') => (format!("jwt.{key}"), rest.into()),
                _ => ("jwt".to_string(), m.to_string()),
            }
        })
}
