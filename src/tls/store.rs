//! Certificates by SNI behind one swap: the set every TLS listener chooses from, and the
//! rustls resolver that reads it once per handshake.
//!
//! Choice, as nginx chooses a `server_name`: the exact name first, then the longest
//! `*.suffix` wildcard whose suffix ends the name, then the default certificate (or, with
//! `unknown = "refuse"`, no certificate: the handshake fails). A client offering ALPN
//! `acme-tls/1` gets the TLS-ALPN-01 challenge certificate for its name and nothing else.
//! Changes (a reload, an issued or renewed certificate, a challenge) build a new set and
//! store it with one `rcu`: handshakes in progress keep the set they loaded.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use super::certs::Loaded;

/// The ALPN protocol of TLS-ALPN-01 validation (RFC 8737).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// What a client gets whose name no certificate covers (or that sends no name).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UnknownName {
    /// The default certificate (the default).
    #[default]
    Default,
    /// No certificate: the handshake fails.
    Refuse,
}

/// Where a certificate came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// `[[tls.certificates]]` files.
    Files {
        /// Chain file.
        cert: String,
        /// Key file.
        key: String,
    },
    /// Issued by the ACME server for these names.
    Acme,
}

/// One certificate in the set.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The certificate.
    pub loaded: Loaded,
    /// Where it came from.
    pub source: Source,
}

/// An immutable set of certificates with its name index.
#[derive(Debug, Default)]
pub struct CertSet {
    files: Vec<Arc<Entry>>,
    acme: HashMap<String, Arc<Entry>>,
    default_name: Option<String>,
    unknown: UnknownName,
    challenges: HashMap<String, Arc<CertifiedKey>>,
    exact: HashMap<String, Arc<Entry>>,
    wildcard: HashMap<String, Arc<Entry>>,
    default: Option<Arc<Entry>>,
}

impl CertSet {
    /// A set of `files` (in config order), the ACME certificates kept so far, and the
    /// policies.
    fn build(
        files: Vec<Arc<Entry>>,
        acme: HashMap<String, Arc<Entry>>,
        default_name: Option<String>,
        unknown: UnknownName,
        challenges: HashMap<String, Arc<CertifiedKey>>,
    ) -> CertSet {
        let mut exact = HashMap::new();
        let mut wildcard = HashMap::new();
        // ACME first, then files over them: a certificate the operator names wins.
        let ordered = acme.values().chain(files.iter().rev());
        for entry in ordered {
            for name in &entry.loaded.names {
                match name.strip_prefix("*.") {
                    Some(suffix) => wildcard.insert(suffix.to_string(), entry.clone()),
                    None => exact.insert(name.clone(), entry.clone()),
                };
            }
        }
        let default = default_name
            .as_deref()
            .and_then(|n| lookup(&exact, &wildcard, n))
            .or_else(|| files.first().cloned())
            .or_else(|| {
                let mut names: Vec<&String> = acme.keys().collect();
                names.sort();
                names.first().and_then(|n| acme.get(*n).cloned())
            });
        CertSet {
            files,
            acme,
            default_name,
            unknown,
            challenges,
            exact,
            wildcard,
            default,
        }
    }

    /// The certificate for `name` (exact, then the longest wildcard), if one covers it.
    pub fn lookup(&self, name: &str) -> Option<Arc<Entry>> {
        lookup(&self.exact, &self.wildcard, &name.to_ascii_lowercase())
    }

    /// What a handshake with this SNI gets.
    pub fn choose(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let found = sni.and_then(|n| self.lookup(n));
        match (found, self.unknown) {
            (Some(e), _) => Some(e.loaded.key.clone()),
            (None, UnknownName::Default) => self.default.as_ref().map(|e| e.loaded.key.clone()),
            (None, UnknownName::Refuse) => None,
        }
    }

    /// Every certificate, files first, then ACME by name.
    pub fn entries(&self) -> Vec<Arc<Entry>> {
        let mut acme: Vec<(&String, &Arc<Entry>)> = self.acme.iter().collect();
        acme.sort_by(|a, b| a.0.cmp(b.0));
        self.files
            .iter()
            .cloned()
            .chain(acme.into_iter().map(|(_, e)| e.clone()))
            .collect()
    }

    /// The certificate served to names no certificate covers (unless they are refused).
    pub fn default_entry(&self) -> Option<Arc<Entry>> {
        self.default.clone()
    }

    /// The ACME certificate kept for `name`.
    pub fn acme(&self, name: &str) -> Option<Arc<Entry>> {
        self.acme.get(name).cloned()
    }

    /// What a name no certificate covers gets.
    pub fn unknown_name(&self) -> UnknownName {
        self.unknown
    }

    /// Whether no certificate is in the set.
    pub fn is_empty(&self) -> bool {
        self.files.is_empty() && self.acme.is_empty()
    }
}

fn lookup(
    exact: &HashMap<String, Arc<Entry>>,
    wildcard: &HashMap<String, Arc<Entry>>,
    name: &str,
) -> Option<Arc<Entry>> {
    if let Some(e) = exact.get(name) {
        return Some(e.clone());
    }
    // Longest suffix first: for a.b.example.com, *.b.example.com before *.example.com.
    let mut rest = name;
    while let Some((_, suffix)) = rest.split_once('.') {
        if let Some(e) = wildcard.get(suffix) {
            return Some(e.clone());
        }
        rest = suffix;
    }
    None
}

/// The gate's certificates: one swap, read per handshake.
#[derive(Debug, Default)]
pub struct CertStore {
    set: ArcSwap<CertSet>,
}

impl CertStore {
    /// An empty store that answers every handshake per `unknown`.
    pub fn new(unknown: UnknownName) -> CertStore {
        CertStore {
            set: ArcSwap::from_pointee(CertSet {
                unknown,
                ..CertSet::default()
            }),
        }
    }

    /// The set now.
    pub fn load(&self) -> Arc<CertSet> {
        self.set.load_full()
    }

    fn update(&self, f: impl Fn(&CertSet) -> CertSet) {
        self.set.rcu(|old| Arc::new(f(old)));
    }

    /// Replaces the file certificates and the policies (start, reload); ACME certificates
    /// and challenges stay.
    pub fn set_files(&self, files: Vec<Entry>, default_name: Option<String>, unknown: UnknownName) {
        let files: Vec<Arc<Entry>> = files.into_iter().map(Arc::new).collect();
        self.update(|old| {
            CertSet::build(
                files.clone(),
                old.acme.clone(),
                default_name.clone(),
                unknown,
                old.challenges.clone(),
            )
        });
    }

    /// Adds or replaces the ACME certificate of `name`.
    pub fn put_acme(&self, name: &str, loaded: Loaded) {
        let entry = Arc::new(Entry {
            loaded,
            source: Source::Acme,
        });
        self.update(|old| {
            let mut acme = old.acme.clone();
            acme.insert(name.to_string(), entry.clone());
            CertSet::build(
                old.files.clone(),
                acme,
                old.default_name.clone(),
                old.unknown,
                old.challenges.clone(),
            )
        });
    }

    /// Serves `key` to TLS-ALPN-01 validation of `name` (`None` withdraws it).
    pub fn set_challenge(&self, name: &str, key: Option<Arc<CertifiedKey>>) {
        self.update(|old| {
            let mut challenges = old.challenges.clone();
            match &key {
                Some(k) => challenges.insert(name.to_string(), k.clone()),
                None => challenges.remove(name),
            };
            CertSet::build(
                old.files.clone(),
                old.acme.clone(),
                old.default_name.clone(),
                old.unknown,
                challenges,
            )
        });
    }
}

/// The rustls resolver the TLS listeners share.
#[derive(Debug, Clone)]
pub struct Resolver(pub Arc<CertStore>);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let set = self.0.load();
        let acme = hello
            .alpn()
            .is_some_and(|mut protocols| protocols.any(|p| p == ACME_TLS_ALPN));
        let sni = hello.server_name();
        if acme {
            return sni.and_then(|n| set.challenges.get(&n.to_ascii_lowercase()).cloned());
        }
        set.choose(sni)
    }
}

#[cfg(test)]
mod tests {
    use super::super::certs::{from_pem, tests::make};
    use super::*;

    const NOW: i64 = 1_800_000_000;

    fn entry(names: &[&str]) -> Entry {
        let (c, k) = make(names, NOW - 10, NOW + 86_400);
        Entry {
            loaded: from_pem(c.as_bytes(), k.as_bytes(), "c", "k", NOW).unwrap(),
            source: Source::Files {
                cert: names[0].into(),
                key: String::new(),
            },
        }
    }

    fn names_of(set: &CertSet, sni: Option<&str>) -> Option<Vec<String>> {
        let key = set.choose(sni)?;
        set.entries()
            .into_iter()
            .find(|e| Arc::ptr_eq(&e.loaded.key, &key))
            .map(|e| e.loaded.names.clone())
    }

    #[test]
    fn exact_then_longest_wildcard_then_default() {
        let store = CertStore::new(UnknownName::Default);
        store.set_files(
            vec![
                entry(&["first.test"]),
                entry(&["shop.example.com"]),
                entry(&["*.example.com"]),
                entry(&["*.eu.example.com"]),
            ],
            None,
            UnknownName::Default,
        );
        let set = store.load();
        assert_eq!(
            names_of(&set, Some("Shop.Example.com")).unwrap(),
            ["shop.example.com"]
        );
        assert_eq!(
            names_of(&set, Some("api.example.com")).unwrap(),
            ["*.example.com"]
        );
        assert_eq!(
            names_of(&set, Some("a.eu.example.com")).unwrap(),
            ["*.eu.example.com"]
        );
        // Deeper names take the longest wildcard that ends them, as nginx's server_name.
        assert_eq!(
            names_of(&set, Some("x.y.example.com")).unwrap(),
            ["*.example.com"]
        );
        // Unknown names and no SNI: the first certificate is the default.
        assert_eq!(names_of(&set, Some("other.org")).unwrap(), ["first.test"]);
        assert_eq!(names_of(&set, None).unwrap(), ["first.test"]);
    }

    #[test]
    fn a_named_default_or_refusal() {
        let store = CertStore::new(UnknownName::Default);
        store.set_files(
            vec![entry(&["a.test"]), entry(&["b.test"])],
            Some("b.test".into()),
            UnknownName::Default,
        );
        assert_eq!(names_of(&store.load(), None).unwrap(), ["b.test"]);
        store.set_files(
            vec![entry(&["a.test"]), entry(&["b.test"])],
            None,
            UnknownName::Refuse,
        );
        let set = store.load();
        assert!(set.choose(Some("nope.test")).is_none());
        assert!(set.choose(None).is_none());
        assert!(set.choose(Some("a.test")).is_some());
    }

    #[test]
    fn acme_certificates_join_and_files_win_their_names() {
        let store = CertStore::new(UnknownName::Refuse);
        store.set_files(vec![entry(&["shop.test"])], None, UnknownName::Refuse);
        store.put_acme("api.test", entry(&["api.test"]).loaded);
        store.put_acme("shop.test", entry(&["shop.test"]).loaded);
        let set = store.load();
        assert!(set.lookup("api.test").is_some());
        let shop = set.lookup("shop.test").unwrap();
        assert!(matches!(shop.source, Source::Files { .. }));
        // A reload of the files keeps what ACME issued.
        store.set_files(Vec::new(), None, UnknownName::Refuse);
        assert!(store.load().lookup("api.test").is_some());
        assert!(matches!(
            store.load().lookup("shop.test").unwrap().source,
            Source::Acme
        ));
    }
}
