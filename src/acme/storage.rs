//! What ACME leaves on disk, under `tls.acme.dir`: the account's credentials and each
//! name's certificate chain and key, written atomically with mode 0600 (the key and the
//! account are secrets; the chain is not, but one mode keeps it simple).
//!
//! Layout: `account.json`, `certs/<name>.crt`, `certs/<name>.key`.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The ACME directory of a gate.
#[derive(Debug, Clone)]
pub struct Storage {
    dir: PathBuf,
}

impl Storage {
    /// Creates the directories if needed (mode 0700).
    pub fn open(dir: &Path) -> std::io::Result<Storage> {
        for d in [dir.to_path_buf(), dir.join("certs")] {
            std::fs::create_dir_all(&d)?;
            std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700))?;
        }
        Ok(Storage {
            dir: dir.to_path_buf(),
        })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn account_path(&self) -> PathBuf {
        self.dir.join("account.json")
    }

    /// The stored account credentials (JSON), if any.
    pub fn account(&self) -> std::io::Result<Option<String>> {
        read_optional(&self.account_path())
    }

    /// Keeps the account credentials.
    pub fn save_account(&self, json: &str) -> std::io::Result<()> {
        write_secret(&self.account_path(), json.as_bytes())
    }

    /// The chain and key files of `name`.
    pub fn cert_paths(&self, name: &str) -> (PathBuf, PathBuf) {
        let base = self.dir.join("certs");
        (
            base.join(format!("{name}.crt")),
            base.join(format!("{name}.key")),
        )
    }

    /// The stored chain and key of `name` (PEM), if both are there.
    pub fn cert(&self, name: &str) -> std::io::Result<Option<(String, String)>> {
        let (c, k) = self.cert_paths(name);
        Ok(match (read_optional(&c)?, read_optional(&k)?) {
            (Some(c), Some(k)) => Some((c, k)),
            _ => None,
        })
    }

    /// Keeps `name`'s chain and key (the key first, so a chain on disk always has its key).
    pub fn save_cert(&self, name: &str, chain: &str, key: &str) -> std::io::Result<()> {
        let (c, k) = self.cert_paths(name);
        write_secret(&k, key.as_bytes())?;
        write_secret(&c, chain.as_bytes())
    }
}

fn read_optional(path: &Path) -> std::io::Result<Option<String>> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Writes `bytes` to a temporary file created 0600 beside `path`, then renames it over.
fn write_secret(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_private_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::open(&dir.path().join("acme")).unwrap();
        assert_eq!(s.account().unwrap(), None);
        s.save_account("{\"id\":1}").unwrap();
        assert_eq!(s.account().unwrap().as_deref(), Some("{\"id\":1}"));
        s.save_cert("shop.test", "CHAIN", "KEY").unwrap();
        assert_eq!(
            s.cert("shop.test").unwrap(),
            Some(("CHAIN".into(), "KEY".into()))
        );
        let (c, k) = s.cert_paths("shop.test");
        for p in [c, k, s.dir().join("account.json")] {
            let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", p.display());
        }
        let mode = std::fs::metadata(s.dir()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        assert_eq!(s.cert("other.test").unwrap(), None);
    }
}
