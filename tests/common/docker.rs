//! Real Docker for tests: the test app built statically, an image `FROM scratch` around it
//! (no registry needed), and containers that are removed when dropped.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

/// Whether a Docker engine answers; when not, a test skips (or fails under
/// `SLUICE_REQUIRE_TOOLS`).
pub fn available() -> bool {
    let ok = Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !ok {
        assert!(
            std::env::var_os("SLUICE_REQUIRE_TOOLS").is_none(),
            "a Docker engine is required"
        );
        eprintln!("skipped: no Docker engine");
    }
    ok
}

/// The test app, built once per test process as a static binary.
pub fn testapp() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let target = std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir)
            .join(".cache/sluice/testapp-target");
        let status = Command::new(env!("CARGO"))
            .args([
                "build",
                "--release",
                "--quiet",
                "--target",
                "x86_64-unknown-linux-gnu",
                "--manifest-path",
            ])
            .arg(root.join("testapp/Cargo.toml"))
            .env("CARGO_TARGET_DIR", &target)
            .env("RUSTFLAGS", "-C target-feature=+crt-static")
            .status()
            .expect("cargo runs");
        assert!(status.success(), "building the static test app failed");
        target.join("x86_64-unknown-linux-gnu/release/testapp")
    })
    .clone()
}

/// Builds the test image (once per test process) and returns its tag.
pub fn image() -> String {
    static TAG: OnceLock<String> = OnceLock::new();
    TAG.get_or_init(|| build_image("sluice-testapp:tests", &[]))
        .clone()
}

/// Builds an image of the test app `FROM scratch` tagged `tag`, with extra Dockerfile
/// lines (`ENV APP_VERSION=v2`, `LABEL ...`); returns the tag. Its HEALTHCHECK runs every
/// second, but gives one check the time a loaded machine needs (a `docker exec` can take
/// seconds then) and takes three failures in a row to call the app unhealthy: a healthy
/// container must never look unhealthy, as that fails its release at once.
pub fn build_image(tag: &str, lines: &[String]) -> String {
    let bin = testapp();
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(&bin, dir.path().join("testapp")).unwrap();
    std::fs::write(
        dir.path().join("Dockerfile"),
        format!(
            "FROM scratch\nCOPY testapp /testapp\nEXPOSE 8080\n\
             HEALTHCHECK --interval=1s --timeout=10s --start-period=1s --retries=3 CMD [\"/testapp\", \"check\", \"http://127.0.0.1:8080/health\"]\n\
             {}\nENTRYPOINT [\"/testapp\"]\nCMD [\"serve\", \"--port\", \"8080\"]\n",
            lines.join("\n")
        ),
    )
    .unwrap();
    let out = Command::new("docker")
        .args(["build", "-q", "-t", tag])
        .arg(dir.path())
        .output()
        .expect("docker build runs");
    assert!(
        out.status.success(),
        "docker build: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    tag.to_string()
}

/// `docker ARGS...`; returns (success, stdout).
pub fn docker(args: &[&str]) -> (bool, String) {
    let out = Command::new("docker")
        .args(args)
        .output()
        .expect("docker runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
    )
}

/// Everything a test made in Docker (containers carrying its label, its networks and
/// images), removed when dropped.
pub struct Scratch {
    /// A label value unique to this test run (`test.run`).
    pub run: String,
    networks: Vec<String>,
    images: Vec<String>,
}

impl Scratch {
    /// A new run named after the test.
    pub fn new(test: &str) -> Scratch {
        Scratch {
            run: format!("{test}-{}-{:x}", std::process::id(), fastrand::u32(..)),
            networks: Vec::new(),
            images: Vec::new(),
        }
    }

    /// A user network of this run.
    pub fn network(&mut self) -> String {
        let name = format!("sluice-{}", self.run);
        let (ok, _) = docker(&[
            "network",
            "create",
            "--label",
            &format!("test.run={}", self.run),
            &name,
        ]);
        assert!(ok, "docker network create {name}");
        self.networks.push(name.clone());
        name
    }

    /// An image of the test app for this run (its own image id), answering `version`.
    pub fn image(&mut self, version: &str, env: &[(&str, &str)]) -> String {
        let tag = format!("sluice-testapp:{}-{version}", self.run);
        let mut lines = vec![
            format!("ENV APP_VERSION={version}"),
            format!("LABEL sluice.test.image=\"{}-{version}\"", self.run),
        ];
        lines.extend(env.iter().map(|(k, v)| format!("ENV {k}={v}")));
        build_image(&tag, &lines);
        self.images.push(tag.clone());
        tag
    }

    /// Names of this run's containers with `label=value`, running or not.
    pub fn containers(&self, label: &str) -> Vec<String> {
        let (_, out) = docker(&[
            "ps",
            "-a",
            "--filter",
            &format!("label={label}"),
            "--format",
            "{{.Names}}",
        ]);
        let mut names: Vec<String> = out.lines().map(str::to_string).collect();
        names.sort();
        names
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let (_, ids) = docker(&[
            "ps",
            "-aq",
            "--filter",
            &format!("label=test.run={}", self.run),
        ]);
        for id in ids.lines() {
            let _ = docker(&["rm", "-f", id]);
        }
        for n in &self.networks {
            let _ = docker(&["network", "rm", n]);
        }
        for i in &self.images {
            let _ = docker(&["rmi", "-f", i]);
        }
    }
}

/// A running container, removed on drop.
pub struct Container {
    /// Its name.
    pub name: String,
    /// Where its port 8080 is published on the host.
    pub addr: std::net::SocketAddr,
}

impl Container {
    /// `docker run -d` the test image with `args` after the image (e.g. serve flags).
    pub fn run(name: &str, args: &[&str]) -> Container {
        let _ = Command::new("docker").args(["rm", "-f", name]).output();
        let out = Command::new("docker")
            .args([
                "run",
                "-d",
                "--name",
                name,
                "-p",
                "127.0.0.1::8080",
                "--label",
                "sluice.test=1",
            ])
            .arg(image())
            .args(args)
            .output()
            .expect("docker run runs");
        assert!(
            out.status.success(),
            "docker run: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = Command::new("docker")
            .args(["port", name, "8080/tcp"])
            .output()
            .expect("docker port runs");
        let text = String::from_utf8_lossy(&port.stdout);
        let addr = text
            .lines()
            .find_map(|l| l.trim().parse().ok())
            .unwrap_or_else(|| panic!("no published port: {text}"));
        // Wait until it answers.
        let until = std::time::Instant::now() + Duration::from_secs(120);
        while std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err() {
            assert!(
                std::time::Instant::now() < until,
                "container {name} never accepted a connection on {addr}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Container {
            name: name.to_string(),
            addr,
        }
    }

    /// `docker inspect -f FORMAT`.
    pub fn inspect(&self, format: &str) -> String {
        let out = Command::new("docker")
            .args(["inspect", "-f", format, &self.name])
            .output()
            .expect("docker inspect runs");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Stops it (kept, not removed).
    pub fn stop(&self) {
        let _ = Command::new("docker")
            .args(["stop", "-t", "1", &self.name])
            .output();
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["rm", "-f", &self.name])
            .output();
    }
}
