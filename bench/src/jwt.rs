//! Keys for the JWT scenario (generated with the `openssl` command) and tokens minted
//! with `jsonwebtoken`, as an identity provider would.

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::Arc,
    time::{SystemTime, UNIX_EPOCH},
};

use jsonwebtoken::{Algorithm, EncodingKey, Header};

use crate::suite::JwtTokens;

/// One algorithm's key pair on disk.
#[derive(Debug, Clone)]
pub struct KeyPair {
    /// `RS256`, `ES256` or `EdDSA`.
    pub alg: Algorithm,
    /// PKCS#8 private key.
    pub private: PathBuf,
    /// Public key, for wsgate's `public_keys`.
    pub public: PathBuf,
}

fn openssl(args: &[&str]) -> std::io::Result<()> {
    let out = Command::new("openssl").args(args).output()?;
    if !out.status.success() {
        return Err(std::io::Error::other(format!(
            "openssl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// Generates an RSA-2048, a P-256 and an Ed25519 key pair in `dir`.
pub fn generate_keys(dir: &Path) -> std::io::Result<Vec<KeyPair>> {
    std::fs::create_dir_all(dir)?;
    let mut out = Vec::new();
    for (alg, name, opts) in [
        (
            Algorithm::RS256,
            "rsa",
            &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"][..],
        ),
        (
            Algorithm::ES256,
            "ec",
            &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"][..],
        ),
        (Algorithm::EdDSA, "ed25519", &["-algorithm", "ED25519"][..]),
    ] {
        let private = dir.join(format!("{name}.key"));
        let public = dir.join(format!("{name}.pem"));
        let p = private.to_string_lossy().into_owned();
        let mut args = vec!["genpkey"];
        args.extend_from_slice(opts);
        args.extend_from_slice(&["-out", &p]);
        openssl(&args)?;
        openssl(&[
            "pkey",
            "-in",
            &p,
            "-pubout",
            "-out",
            &public.to_string_lossy(),
        ])?;
        out.push(KeyPair {
            alg,
            private,
            public,
        });
    }
    Ok(out)
}

/// The name the report uses for an algorithm.
pub fn alg_name(a: Algorithm) -> &'static str {
    match a {
        Algorithm::RS256 => "RS256",
        Algorithm::ES256 => "ES256",
        Algorithm::EdDSA => "EdDSA",
        _ => "other",
    }
}

/// Mints one reused token and `fresh` distinct ones (distinct `jti` and `sub`).
pub fn mint(k: &KeyPair, fresh: usize) -> std::io::Result<JwtTokens> {
    let pem = std::fs::read(&k.private)?;
    let key = match k.alg {
        Algorithm::RS256 => EncodingKey::from_rsa_pem(&pem),
        Algorithm::ES256 => EncodingKey::from_ec_pem(&pem),
        _ => EncodingKey::from_ed_pem(&pem),
    }
    .map_err(std::io::Error::other)?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let header = Header::new(k.alg);
    let one = |i: usize| {
        let claims = serde_json::json!({
            "sub": format!("user-{i}"),
            "jti": format!("{i:x}-{}", fastrand::u64(..)),
            "iat": now,
            "exp": now + 3600,
        });
        jsonwebtoken::encode(&header, &claims, &key).map_err(std::io::Error::other)
    };
    let reused: Arc<str> = one(usize::MAX)?.into();
    let fresh = (0..fresh).map(one).collect::<Result<Vec<_>, _>>()?;
    Ok(JwtTokens {
        alg: alg_name(k.alg).into(),
        reused,
        fresh: Arc::new(fresh),
        cursor: Arc::default(),
    })
}
