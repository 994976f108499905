//! A string that holds a secret in transit between a file and the proto
//! crate's key types: zeroized on drop, redacted in `Debug`, and
//! (de)serializable, which `zeroize` offers only behind a feature the
//! workspace does not enable.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use zeroize::Zeroizing;

#[derive(Clone, Default)]
pub struct SecretString(Zeroizing<String>);

impl SecretString {
    pub fn new(s: Zeroizing<String>) -> Self {
        SecretString(s)
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl Serialize for SecretString {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for SecretString {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // The intermediate String is moved, not copied, into the wrapper.
        Ok(SecretString(Zeroizing::new(String::deserialize(d)?)))
    }
}

/// If group or others may access `path` (a file holding secrets: the
/// configuration with the factory secret, the state with Secret(ID2), the
/// PSK and the maintenance password), logs an error naming the file, its
/// mode and the fix, and returns the mode. routerd still starts: the
/// administrator is told, the service stays up.
pub fn warn_if_exposed(what: &str, path: &std::path::Path) -> Option<u32> {
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o777;
    if mode & 0o077 == 0 {
        return None;
    }
    log::error!(
        "routerd: SECURITY: {what} {} holds secrets but has mode {mode:04o} (group/others can access it); run: chmod 600 {}",
        path.display(),
        path.display()
    );
    Some(mode)
}
