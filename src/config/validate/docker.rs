//! Validators of a service's `[services.docker]` section: image references, names, labels,
//! environment, volumes, memory, the health check and restart policy.

use super::Checker;
use crate::config::docker::*;
use crate::config::file::{HealthcheckFile, ServiceDockerFile};
use crate::time::parse_duration;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

/// Checks an image reference: `[registry[:port]/]path[:tag][@sha256:hex]`, or an image id
/// (`sha256:<64 hex>`).
pub fn check_image(text: &str) -> Result<(), String> {
    let bad = |why: &str| Err(format!("'{text}' is not an image reference: {why}"));
    if text.is_empty() {
        return bad("empty");
    }
    if text.len() > 512 {
        return bad("longer than 512 characters");
    }
    if let Some(c) = text
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "/:@._-".contains(*c)))
    {
        return bad(&format!("'{c}' is not allowed (only [A-Za-z0-9/:@._-])"));
    }
    if let Some(hex) = text.strip_prefix("sha256:") {
        return if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            Ok(())
        } else {
            bad("an image id is sha256: and 64 hex digits")
        };
    }
    let (rest, digest) = match text.split_once('@') {
        Some((r, d)) => (r, Some(d)),
        None => (text, None),
    };
    if let Some(d) = digest {
        let Some((algo, hex)) = d.split_once(':') else {
            return bad("a digest is ALGORITHM:HEX");
        };
        if algo.is_empty()
            || !algo
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+._-".contains(&b))
            || hex.len() < 32
            || !hex.bytes().all(|b| b.is_ascii_hexdigit())
        {
            return bad("a digest is ALGORITHM:HEX (e.g. sha256: and 64 hex digits)");
        }
    }
    // The tag is after the last ':' that follows the last '/'.
    let last_slash = rest.rfind('/').map(|i| i + 1).unwrap_or(0);
    let (name, tag) = match rest[last_slash..].rfind(':') {
        Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
        None => (rest, None),
    };
    if let Some(t) = tag {
        let ok_first = t
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !ok_first
            || t.len() > 128
            || !t
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
        {
            return bad("a tag is 1 to 128 of [A-Za-z0-9_.-], not starting with '.' or '-'");
        }
    }
    if name.is_empty() || name.len() > 255 {
        return bad("the name must be 1 to 255 characters");
    }
    let mut parts: Vec<&str> = name.split('/').collect();
    // A first part with '.' or ':' (or "localhost") is a registry host[:port].
    if parts.len() > 1 {
        let first = parts[0];
        if first.contains('.') || first.contains(':') || first == "localhost" {
            let (host, port) = match first.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (first, None),
            };
            if let Some(p) = port {
                if p.parse::<u16>().is_err() {
                    return bad("the registry port is not a number");
                }
            }
            let host_ok = !host.is_empty()
                && host.split('.').all(|label| {
                    !label.is_empty()
                        && label
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                        && !label.starts_with('-')
                        && !label.ends_with('-')
                });
            if !host_ok {
                return bad("the registry is not a host name");
            }
            parts.remove(0);
        }
    }
    for component in parts {
        if !path_component_ok(component) {
            return bad(
                "each path component is lowercase letters and digits, separated by '.', '_', '__' or '-'",
            );
        }
    }
    Ok(())
}

/// `[a-z0-9]+` runs separated by `.`, `_`, `__` or dashes.
fn path_component_ok(c: &str) -> bool {
    if c.is_empty() {
        return false;
    }
    let bytes = c.as_bytes();
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if !alnum(bytes[0]) || !alnum(bytes[bytes.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < bytes.len() {
        if alnum(bytes[i]) {
            i += 1;
            continue;
        }
        // A separator: '.', '_', '__', or one or more '-'.
        let start = i;
        while i < bytes.len() && !alnum(bytes[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        if !(sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|b| b == b'-')) {
            return false;
        }
    }
    true
}

/// Container and network names: `[a-zA-Z0-9][a-zA-Z0-9_.-]*`, at most `max` characters.
pub fn check_object_name(text: &str, max: usize) -> Result<(), String> {
    let first_ok = text
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphanumeric());
    if !first_ok
        || text.len() > max
        || !text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
    {
        return Err(format!(
            "'{text}' must be 1 to {max} of [a-zA-Z0-9_.-], starting with a letter or digit"
        ));
    }
    Ok(())
}

/// Label keys: `[a-z0-9]` with `.`, `-`, `_`, `/` inside, at most 128 characters; values
/// without control characters, at most 4096.
pub fn check_label(key: &str, value: &str) -> Result<(), String> {
    let ok = !key.is_empty()
        && key.len() <= 128
        && key
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-/".contains(&b))
        && key
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
        && key
            .bytes()
            .last()
            .is_some_and(|b| b.is_ascii_alphanumeric());
    if !ok {
        return Err(format!(
            "label '{key}': keys are lowercase letters, digits and . - _ / (at most 128), starting and ending with a letter or digit"
        ));
    }
    if value.len() > 4096 || value.chars().any(char::is_control) {
        return Err(format!(
            "label '{key}': the value has control characters or is longer than 4096"
        ));
    }
    Ok(())
}

/// Environment names: `[A-Za-z_][A-Za-z0-9_]*`; values without NUL.
pub fn check_env(key: &str, value: &str) -> Result<(), String> {
    let ok = key
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && key.len() <= 256
        && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if !ok {
        return Err(format!("'{key}' is not an environment variable name"));
    }
    if value.contains('\0') || value.len() > 65_536 {
        return Err(format!(
            "the value of '{key}' holds a NUL byte or is over 64 KiB"
        ));
    }
    Ok(())
}

/// `SOURCE:TARGET[:ro|:rw]`; a relative host path is taken from the config file's directory.
pub fn parse_volume(text: &str, base_dir: &Path) -> Result<Volume, String> {
    let parts: Vec<&str> = text.split(':').collect();
    let (source, target, mode) = match parts.as_slice() {
        [s, t] => (*s, *t, None),
        [s, t, m] => (*s, *t, Some(*m)),
        _ => {
            return Err(format!(
                "'{text}' is not SOURCE:TARGET or SOURCE:TARGET:ro (SOURCE a host path or a volume name)"
            ))
        }
    };
    let read_only = match mode {
        None | Some("rw") => false,
        Some("ro") => true,
        Some(m) => return Err(format!("'{text}': mode '{m}' is not ro or rw")),
    };
    if !target.starts_with('/')
        || target.split('/').any(|c| c == "..")
        || target.chars().any(char::is_control)
    {
        return Err(format!(
            "'{text}': the target must be an absolute path inside the container, without '..'"
        ));
    }
    let source = if source.starts_with('/') || source.starts_with('.') {
        let p = Path::new(source);
        let abs = if p.is_absolute() {
            p.to_path_buf()
        } else {
            base_dir.join(p)
        };
        let s = abs.display().to_string();
        if s.chars().any(char::is_control) || s.contains(':') {
            return Err(format!(
                "'{text}': the host path has ':' or control characters"
            ));
        }
        s
    } else {
        check_object_name(source, 128).map_err(|m| format!("'{text}': volume name {m}"))?;
        source.to_string()
    };
    Ok(Volume {
        source,
        target: target.to_string(),
        read_only,
    })
}

/// `256MiB`, `1GiB`, `512m`, `1g`, or a number of bytes.
pub fn parse_memory(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("'{text}' is not a size (e.g. 256MiB, 1GiB)"))?;
    let mult: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return Err(format!("'{text}': unit '{unit}' is not B, KiB, MiB or GiB")),
    };
    let bytes = n
        .checked_mul(mult)
        .ok_or_else(|| format!("'{text}' is too large"))?;
    // The engine refuses limits under 6 MiB.
    if bytes < 6 << 20 {
        return Err(format!("'{text}' is below the engine's minimum of 6MiB"));
    }
    Ok(bytes)
}

fn check_argv(argv: &[String]) -> Result<(), String> {
    if argv.is_empty() || argv[0].trim().is_empty() {
        return Err("needs at least a program".into());
    }
    if argv.iter().any(|a| a.contains('\0')) {
        return Err("an argument holds a NUL byte".into());
    }
    Ok(())
}

impl Checker<'_> {
    /// A duration where zero is allowed.
    fn duration_or_zero(&mut self, path: &str, value: Option<&str>, default: Duration) -> Duration {
        match value {
            None => default,
            Some(text) => self.take(path, parse_duration(text), default),
        }
    }
}

fn validate_healthcheck(
    c: &mut Checker<'_>,
    base: &str,
    h: &HealthcheckFile,
) -> Option<HealthCheck> {
    let command = match &h.command {
        None => {
            c.fail(
                format!("{base}.command"),
                "is required (an argv, e.g. [\"/app\", \"check\"])",
            );
            Vec::new()
        }
        Some(argv) => {
            if let Err(m) = check_argv(argv) {
                c.fail(format!("{base}.command"), m);
            }
            argv.clone()
        }
    };
    let retries = match h.retries {
        None => 3,
        Some(n) if (1..=100).contains(&n) => n as u32,
        Some(n) => {
            c.fail(
                format!("{base}.retries"),
                format!("must be between 1 and 100 (got {n})"),
            );
            3
        }
    };
    Some(HealthCheck {
        command,
        interval: c.duration(
            &format!("{base}.interval"),
            h.interval.as_deref(),
            Duration::from_secs(5),
        ),
        timeout: c.duration(
            &format!("{base}.timeout"),
            h.timeout.as_deref(),
            Duration::from_secs(2),
        ),
        retries,
        start_period: c.duration_or_zero(
            &format!("{base}.start_period"),
            h.start_period.as_deref(),
            Duration::from_secs(5),
        ),
    })
}

/// Validates `[services.docker]` of service `service`.
pub(super) fn validate_docker(
    c: &mut Checker<'_>,
    base: &str,
    service: &str,
    f: &ServiceDockerFile,
    base_dir: &Path,
) -> DockerService {
    let key = |k: &str| format!("{base}.{k}");
    let image = match &f.image {
        None => {
            c.fail(
                key("image"),
                "is required: the image of the first release (e.g. \"app:v1\")",
            );
            String::new()
        }
        Some(i) => {
            if let Err(m) = check_image(i) {
                c.fail(key("image"), m);
            }
            i.clone()
        }
    };
    let name = f.name.clone().unwrap_or_else(|| service.to_string());
    if let Err(m) = check_object_name(&name, 40) {
        c.fail(key("name"), m);
    }
    let port = match f.port {
        None => {
            c.fail(
                key("port"),
                "is required: the port the app listens on inside the container",
            );
            0
        }
        Some(p) if (1..=65_535).contains(&p) => p as u16,
        Some(p) => {
            c.fail(
                key("port"),
                format!("must be between 1 and 65535 (got {p})"),
            );
            0
        }
    };
    let reach = match f.reach.as_deref() {
        None | Some("published") => {
            let text = f.publish_ip.as_deref().unwrap_or(DEFAULT_PUBLISH_IP);
            let ip = c.take(
                &key("publish_ip"),
                text.parse::<IpAddr>()
                    .map_err(|_| format!("'{text}' is not an IP address")),
                IpAddr::from([127, 0, 0, 1]),
            );
            Reach::Published { ip }
        }
        Some("network") => {
            if f.publish_ip.is_some() {
                c.fail(key("publish_ip"), "only applies with reach = \"published\"");
            }
            Reach::Network
        }
        Some(other) => {
            c.fail(
                key("reach"),
                format!("'{other}' is not \"published\" (a host port) or \"network\" (the container's address)"),
            );
            Reach::Network
        }
    };
    let replicas = match f.replicas {
        None => DEFAULT_REPLICAS,
        Some(n) if (1..=64).contains(&n) => n as usize,
        Some(n) => {
            c.fail(
                key("replicas"),
                format!("must be between 1 and 64 (got {n})"),
            );
            DEFAULT_REPLICAS
        }
    };
    if let Some(argv) = &f.command {
        if let Err(m) = check_argv(argv) {
            c.fail(key("command"), m);
        }
    }
    let mut env = BTreeMap::new();
    for (k, v) in f.env.iter().flatten() {
        match check_env(k, v) {
            Ok(()) => {
                env.insert(k.clone(), v.clone());
            }
            Err(m) => c.fail(format!("{base}.env.{k}"), m),
        }
    }
    let mut volumes: Vec<Volume> = Vec::new();
    for (j, v) in f.volumes.iter().flatten().enumerate() {
        match parse_volume(v, base_dir) {
            Ok(vol) if volumes.iter().any(|o| o.target == vol.target) => c.fail(
                format!("{base}.volumes[{j}]"),
                format!("'{}' is mounted twice", vol.target),
            ),
            Ok(vol) => volumes.push(vol),
            Err(m) => c.fail(format!("{base}.volumes[{j}]"), m),
        }
    }
    let mut networks: Vec<String> = Vec::new();
    for (j, n) in f.networks.iter().flatten().enumerate() {
        if let Err(m) = check_object_name(n, 64) {
            c.fail(format!("{base}.networks[{j}]"), m);
        } else if !networks.contains(n) {
            networks.push(n.clone());
        }
    }
    let mut labels = BTreeMap::new();
    for (k, v) in f.labels.iter().flatten() {
        if k.starts_with(LABEL_PREFIX) {
            c.fail(
                format!("{base}.labels.{k}"),
                format!("'{LABEL_PREFIX}*' labels are Sluice's own"),
            );
        } else if let Err(m) = check_label(k, v) {
            c.fail(format!("{base}.labels.{k}"), m);
        } else {
            labels.insert(k.clone(), v.clone());
        }
    }
    let memory = f
        .memory
        .as_deref()
        .and_then(|m| c.take(&key("memory"), parse_memory(m).map(Some), None));
    let cpus = match f.cpus {
        None => None,
        Some(x) if x.is_finite() && (0.01..=1024.0).contains(&x) => Some(x),
        Some(x) => {
            c.fail(
                key("cpus"),
                format!("must be between 0.01 and 1024 (got {x})"),
            );
            None
        }
    };
    let pids_limit = match f.pids_limit {
        None => None,
        Some(n) if n >= 1 => Some(n),
        Some(n) => {
            c.fail(key("pids_limit"), format!("must be at least 1 (got {n})"));
            None
        }
    };
    let restart = match f.restart.as_deref() {
        None | Some("unless-stopped") => Restart::UnlessStopped,
        Some("no") => Restart::No,
        Some("always") => Restart::Always,
        Some("on-failure") => Restart::OnFailure,
        Some(other) => {
            c.fail(
                key("restart"),
                format!("'{other}' is not no, always, unless-stopped or on-failure"),
            );
            Restart::UnlessStopped
        }
    };
    let healthcheck = f
        .healthcheck
        .as_ref()
        .and_then(|h| validate_healthcheck(c, &key("healthcheck"), h));
    let keep_failed = match f.keep_failed {
        None => DEFAULT_KEEP_FAILED,
        Some(n) if (0..=100).contains(&n) => n as usize,
        Some(n) => {
            c.fail(
                key("keep_failed"),
                format!("must be between 0 and 100 (got {n})"),
            );
            DEFAULT_KEEP_FAILED
        }
    };
    DockerService {
        image,
        name,
        port,
        reach,
        replicas,
        command: f.command.clone(),
        env,
        volumes,
        networks,
        labels,
        memory,
        cpus,
        pids_limit,
        restart,
        healthcheck,
        health_timeout: c.duration(
            &key("health_timeout"),
            f.health_timeout.as_deref(),
            DEFAULT_HEALTH_TIMEOUT,
        ),
        keep_old_for: c.duration_or_zero(
            &key("keep_old_for"),
            f.keep_old_for.as_deref(),
            DEFAULT_KEEP_OLD_FOR,
        ),
        keep_failed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_references_follow_the_grammar() {
        for ok in [
            "app",
            "app:v2",
            "library/app:1.2.3",
            "registry.example.com:5000/team/app:v2",
            "localhost/app",
            "app@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            "my_app__x.y-z:tag_1.0-rc",
        ] {
            assert!(check_image(ok).is_ok(), "{ok}: {:?}", check_image(ok));
        }
        for bad in [
            "",
            "App:v1",
            "app:",
            "app:-x",
            "app;rm -rf /",
            "$(id)",
            "app:v1 --privileged",
            "-app",
            "app/",
            "app@sha256:zz",
            "reg:port/app",
            "a..b",
            "app:v1\n",
        ] {
            assert!(check_image(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn names_labels_env_and_volumes_are_checked() {
        assert!(check_object_name("web-1.blue_x", 64).is_ok());
        assert!(check_object_name("-web", 64).is_err());
        assert!(check_object_name("web/x", 64).is_err());
        assert!(check_object_name("we b", 64).is_err());
        assert!(check_label("team", "web").is_ok());
        assert!(check_label("com.example/tier", "a").is_ok());
        assert!(check_label("Team", "x").is_err());
        assert!(check_label("team", "a\nb").is_err());
        assert!(
            check_env("GREETING", "hi there; $(id)").is_ok(),
            "values are data"
        );
        assert!(check_env("1X", "").is_err());
        assert!(check_env("A-B", "").is_err());
        let base = Path::new("/etc/sluice");
        let v = parse_volume("./data:/data:ro", base).unwrap();
        assert_eq!(v.source, "/etc/sluice/./data");
        assert!(v.read_only && v.is_bind());
        let v = parse_volume("cache:/var/cache", base).unwrap();
        assert!(!v.is_bind() && !v.read_only);
        assert!(parse_volume("/a:relative", base).is_err());
        assert!(parse_volume("/a:/b/../etc", base).is_err());
        assert!(parse_volume("/a:/b:rx", base).is_err());
        assert!(parse_volume("bad name:/b", base).is_err());
        assert_eq!(parse_memory("256MiB").unwrap(), 256 << 20);
        assert_eq!(parse_memory("1g").unwrap(), 1 << 30);
        assert!(parse_memory("1MiB").is_err());
        assert!(parse_memory("lots").is_err());
    }
}
