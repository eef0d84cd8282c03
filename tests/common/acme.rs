//! A real ACME server for the tests: Debian's `pebble` (Let's Encrypt's RFC 8555 test
//! server) with `pebble-challtestsrv` as its DNS (every name is 127.0.0.1), on free
//! loopback ports, validating against the gate's plain and TLS ports.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A running pebble; stopped on drop.
pub struct Pebble {
    children: Vec<Child>,
    /// Its directory URL.
    pub directory: String,
    /// The CA its HTTPS API is signed by (the gate's `ca_file`).
    pub api_ca: PathBuf,
    /// The root that signs the certificates it issues (fetched from its management API).
    pub issuing_root: String,
    /// Where its files and logs are.
    pub dir: tempfile::TempDir,
}

/// A port that was free a moment ago (bound to port 0, then released).
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

fn free_udp_port() -> u16 {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    s.local_addr().unwrap().port()
}

/// What pebble is told.
pub struct PebbleOptions {
    /// The port it validates HTTP-01 on (the gate's plain listener).
    pub http_port: u16,
    /// The port it validates TLS-ALPN-01 on (the gate's TLS listener).
    pub tls_port: u16,
    /// Names it refuses (suffixes).
    pub blocked: Vec<String>,
    /// Lifetime of the certificates it issues, seconds (0: its default, 5 years).
    pub validity_secs: u64,
}

fn write_api_certs(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    // A CA and a leaf it signs for pebble's own HTTPS (a self-signed leaf is refused by
    // rustls as a CA used as an end entity).
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "sluice test ACME API CA");
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let mut leaf_params =
        rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .unwrap();
    leaf_params.is_ca = rcgen::IsCa::ExplicitNoCa;
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf = leaf_params.signed_by(&leaf_key, &issuer).unwrap();
    let (ca_path, cert_path, key_path) = (
        dir.join("ca.pem"),
        dir.join("cert.pem"),
        dir.join("key.pem"),
    );
    std::fs::write(&ca_path, ca.pem()).unwrap();
    std::fs::write(&cert_path, leaf.pem()).unwrap();
    std::fs::write(&key_path, leaf_key.serialize_pem()).unwrap();
    (ca_path, cert_path, key_path)
}

impl Pebble {
    /// Starts pebble and its DNS; returns once its directory answers.
    pub async fn start(o: PebbleOptions) -> Pebble {
        let dir = tempfile::tempdir().unwrap();
        let (api_ca, cert, key) = write_api_certs(dir.path());
        let (acme, mgmt, dns, dns_mgmt) = (free_port(), free_port(), free_udp_port(), free_port());
        let config = serde_json::json!({ "pebble": {
            "listenAddress": format!("127.0.0.1:{acme}"),
            "managementListenAddress": format!("127.0.0.1:{mgmt}"),
            "certificate": cert, "privateKey": key,
            "httpPort": o.http_port, "tlsPort": o.tls_port,
            "ocspResponderURL": "", "externalAccountBindingRequired": false,
            "domainBlocklist": o.blocked,
            "certificateValidityPeriod": o.validity_secs,
        }});
        let config_path = dir.path().join("pebble.json");
        std::fs::write(&config_path, config.to_string()).unwrap();
        let log = |name: &str| std::fs::File::create(dir.path().join(name)).unwrap();
        let dns_server = Command::new("pebble-challtestsrv")
            .args(["-management", &format!("127.0.0.1:{dns_mgmt}")])
            .args(["-dns01", &format!("127.0.0.1:{dns}")])
            .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
            .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
            .stdout(log("challtestsrv.log"))
            .stderr(Stdio::from(log("challtestsrv.err")))
            .spawn()
            .expect("pebble-challtestsrv runs (scripts/deps installs pebble)");
        let pebble = Command::new("pebble")
            .arg("-config")
            .arg(&config_path)
            .args(["-dnsserver", &format!("127.0.0.1:{dns}")])
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .env("PEBBLE_AUTHZREUSE", "0")
            .stdout(log("pebble.log"))
            .stderr(Stdio::from(log("pebble.err")))
            .spawn()
            .expect("pebble runs (scripts/deps installs pebble)");
        let client = reqwest::Client::builder()
            .add_root_certificate(
                reqwest::Certificate::from_pem(&std::fs::read(&api_ca).unwrap()).unwrap(),
            )
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        let directory = format!("https://127.0.0.1:{acme}/dir");
        let mut p = Pebble {
            children: vec![dns_server, pebble],
            directory: directory.clone(),
            api_ca,
            issuing_root: String::new(),
            dir,
        };
        let root_url = format!("https://127.0.0.1:{mgmt}/roots/0");
        super::until_ok(super::LONG_WAIT, "pebble answers", async || {
            let get = async |url: &str| {
                let r = client.get(url).send().await?.error_for_status()?;
                r.text().await
            };
            get(&directory).await.map_err(|e| e.to_string())?;
            get(&root_url).await.map_err(|e| e.to_string())
        })
        .await
        .clone_into(&mut p.issuing_root);
        p
    }

    /// pebble's own log (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("pebble.log")).unwrap_or_default()
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
