//! Fresh secrets for the configuration files: `centerd gen-secret` and
//! `centerd fill-secrets` (the center image's first boot).
//!
//! The example files carry placeholders `@SECRET:NAME@` (see
//! [`vpnnat_proto::strength`]) that every daemon refuses. Filling them is
//! the pure [`fill`]: every placeholder becomes a key from the generator,
//! the same key for the same NAME in every file given together (so that
//! centerd's `[[gateways]] api_key` of gw1 and gatewayd's `api_key` agree).

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ring::rand::{SecureRandom, SystemRandom};
use thiserror::Error;
use vpnnat_proto::strength::PLACEHOLDER_PREFIX;
use zeroize::Zeroizing;

/// Why secrets could not be made or written.
#[derive(Debug, Error)]
pub enum SecretsError {
    #[error("the system random number generator failed")]
    Rng,
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A fresh random 32-byte key, 64 lower-case hex digits.
pub fn gen_secret(rng: &dyn SecureRandom) -> Result<Zeroizing<String>, SecretsError> {
    let mut b = Zeroizing::new([0u8; 32]);
    rng.fill(b.as_mut()).map_err(|_| SecretsError::Rng)?;
    Ok(Zeroizing::new(hex::encode(b.as_ref())))
}

/// Replaces every `@SECRET:NAME@` in `texts` (NAME: letters, digits, `-`,
/// `_`, `.`) with `keys[NAME]`, taking a new key from `generate` for a NAME
/// not seen yet. Returns the new texts; `keys` then holds every NAME filled.
pub fn fill<E>(
    texts: &[&str],
    keys: &mut BTreeMap<String, Zeroizing<String>>,
    mut generate: impl FnMut() -> Result<Zeroizing<String>, E>,
) -> Result<Vec<Zeroizing<String>>, E> {
    let mut out = Vec::with_capacity(texts.len());
    for text in texts {
        let mut s = Zeroizing::new(String::with_capacity(text.len()));
        let mut rest: &str = text;
        while let Some(at) = rest.find(PLACEHOLDER_PREFIX) {
            let (before, from) = rest.split_at(at);
            s.push_str(before);
            let after = from.strip_prefix(PLACEHOLDER_PREFIX).unwrap_or(from);
            let name_len = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
                .unwrap_or(after.len());
            let (name, tail) = after.split_at(name_len);
            match tail.strip_prefix('@') {
                Some(tail) if !name.is_empty() => {
                    if !keys.contains_key(name) {
                        keys.insert(name.to_owned(), generate()?);
                    }
                    if let Some(k) = keys.get(name) {
                        s.push_str(k);
                    }
                    rest = tail;
                }
                // not a placeholder after all: keep it as it is
                _ => {
                    s.push_str(PLACEHOLDER_PREFIX);
                    rest = after;
                }
            }
        }
        s.push_str(rest);
        out.push(s);
    }
    Ok(out)
}

/// `fill-secrets FILE...`: fills the placeholders of the files in place
/// (each rewritten through a temporary file with its mode kept, never
/// readable by others); returns the names filled, never the keys.
pub fn fill_files(paths: &[PathBuf]) -> Result<Vec<String>, SecretsError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| SecretsError::Io { path, source }
    };
    let texts = paths
        .iter()
        .map(|p| std::fs::read_to_string(p).map(Zeroizing::new).map_err(io(p)))
        .collect::<Result<Vec<_>, _>>()?;
    let rng = SystemRandom::new();
    let mut keys = BTreeMap::new();
    let refs: Vec<&str> = texts.iter().map(|t| t.as_str()).collect();
    let filled = fill(&refs, &mut keys, || gen_secret(&rng))?;
    for ((path, old), new) in paths.iter().zip(&texts).zip(&filled) {
        if old.as_str() == new.as_str() {
            continue;
        }
        let mode = std::fs::metadata(path).map_err(io(path))?.permissions().mode() & 0o700;
        let tmp = path.with_extension("fill-secrets.tmp");
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io(&tmp))?;
        f.write_all(new.as_bytes()).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode)).map_err(io(&tmp))?;
        std::fs::rename(&tmp, path).map_err(io(path))?;
    }
    Ok(keys.into_keys().collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use vpnnat_proto::keys::{FactoryMasterKey, GatewayApiKey};
    use vpnnat_proto::strength::key_from_config;

    fn counter() -> impl FnMut() -> Result<Zeroizing<String>, SecretsError> {
        let mut n = 0;
        move || {
            n += 1;
            Ok(Zeroizing::new(format!("K{n}")))
        }
    }

    #[test]
    fn same_name_same_key_across_files() {
        let mut keys = BTreeMap::new();
        let out = fill(
            &[
                "a = \"@SECRET:master@\"\nb = \"@SECRET:gw1@\"\nc = \"@SECRET:gw2@\"",
                "api_key = \"@SECRET:gw1@\"",
                "@SECRET:maintenance-password@\n",
            ],
            &mut keys,
            counter(),
        )
        .unwrap();
        assert_eq!(out[0].as_str(), "a = \"K1\"\nb = \"K2\"\nc = \"K3\"");
        assert_eq!(out[1].as_str(), "api_key = \"K2\"");
        assert_eq!(out[2].as_str(), "K4\n");
        assert_eq!(
            keys.keys().collect::<Vec<_>>(),
            ["gw1", "gw2", "maintenance-password", "master"]
        );
    }

    #[test]
    fn text_without_placeholders_is_kept() {
        let mut keys = BTreeMap::new();
        let t = "x = \"@SECRET:\"\ny = \"@SECRET:bad name@\" # @SECRET:\nz = 1";
        let out = fill(&[t], &mut keys, counter()).unwrap();
        assert_eq!(out[0].as_str(), t);
        assert!(keys.is_empty());
    }

    #[test]
    fn generated_keys_pass_the_daemons_checks() {
        let rng = SystemRandom::new();
        for _ in 0..100 {
            let k = gen_secret(&rng).unwrap();
            assert_eq!(k.len(), 64);
            key_from_config::<FactoryMasterKey>(&k).unwrap();
            key_from_config::<GatewayApiKey>(&k).unwrap();
        }
        assert_ne!(gen_secret(&rng).unwrap(), gen_secret(&rng).unwrap());
    }

    #[test]
    fn the_shipped_examples_are_refused_then_filled_and_accepted() {
        let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("../buildroot-overlay/center/etc");
        let dir = std::env::temp_dir().join(format!("vpnnat-fill-secrets-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("vpnnat")).unwrap();
        let files = ["centerd.toml", "gatewayd.toml", "vpnnat/maintenance-password"];
        for f in files {
            std::fs::copy(base.join(f), dir.join(f)).unwrap();
            std::fs::set_permissions(dir.join(f), std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        let e = crate::config::CenterdConfig::load(&dir.join("centerd.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("factory.master_key") && e.contains("placeholder") && e.contains("centerd gen-secret"),
            "{e}"
        );
        let e = vpnnat_gatewayd::config::GatewaydConfig::load(&dir.join("gatewayd.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("api_key") && e.contains("centerd gen-secret"), "{e}");

        let paths: Vec<PathBuf> = files.iter().map(|f| dir.join(f)).collect();
        let names = fill_files(&paths).unwrap();
        assert_eq!(names, ["gw1", "gw2", "maintenance-password", "master"]);
        let mode = std::fs::metadata(dir.join("centerd.toml"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let c = crate::config::CenterdConfig::load(&dir.join("centerd.toml")).unwrap();
        let g = vpnnat_gatewayd::config::GatewaydConfig::load(&dir.join("gatewayd.toml")).unwrap();
        use vpnnat_proto::keys::SecretBytes as _;
        assert_eq!(
            c.settings.gateways[0].api_key.expose_secret(),
            g.api_key.expose_secret()
        );
        assert_ne!(
            c.settings.gateways[0].api_key.expose_secret(),
            c.settings.gateways[1].api_key.expose_secret()
        );
        // a second run (the next boot) changes nothing
        let before = std::fs::read_to_string(dir.join("centerd.toml")).unwrap();
        assert!(fill_files(&paths).unwrap().is_empty());
        assert_eq!(std::fs::read_to_string(dir.join("centerd.toml")).unwrap(), before);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
