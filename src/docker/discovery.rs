//! Discovery: running containers labelled `sluice.service=NAME` (and not created by Sluice)
//! become upstreams of that service, the way Traefik's Docker provider works. It follows
//! the engine's events and lists containers every `docker.discovery_interval` as well, so
//! a missed event is caught up.
//!
//! Labels: `sluice.service` (required), `sluice.arm` (`stable`, default, or `canary`),
//! `sluice.port` (the container port; default: its only exposed port). A service the config
//! does not have is created from `sluice.hosts` (comma separated; none: catch-all),
//! `sluice.path_prefix` and `sluice.weight` (canary percent), with default policies.
//! Containers whose HEALTHCHECK is not (yet) healthy are left out until they are.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::time::Duration;

use bollard::models::ContainerSummary;
use futures_util::StreamExt;

pub use super::report::{Found, FoundContainer};
use super::report::{NotApplied, Report, Reporter};
use super::{labels, Engine};
use crate::types::UpstreamAddr;

/// Why a labelled container is not used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// Container name.
    pub name: String,
    /// Why.
    pub why: String,
}

fn summary_name(c: &ContainerSummary) -> String {
    c.names
        .as_ref()
        .and_then(|n| n.first())
        .map(|n| n.trim_start_matches('/').to_string())
        .unwrap_or_else(|| c.id.clone().unwrap_or_default())
}

/// Where the gate reaches `port` of a listed container: a host port it is published on
/// (loopback when published on all addresses), else its address on a network.
fn reach(c: &ContainerSummary, port: u16) -> Option<SocketAddr> {
    let published = c.ports.iter().flatten().find(|p| {
        p.private_port == port
            && p.public_port.is_some()
            && p.typ.is_none_or(|t| t.to_string() == "tcp")
    });
    if let Some(p) = published {
        let ip: std::net::IpAddr =
            p.ip.as_deref()
                .and_then(|i| i.parse().ok())
                .filter(|i: &std::net::IpAddr| !i.is_unspecified() && i.is_ipv4())
                .unwrap_or(std::net::IpAddr::from([127, 0, 0, 1]));
        return Some(SocketAddr::new(ip, p.public_port?));
    }
    let networks = c.network_settings.as_ref()?.networks.as_ref()?;
    let mut names: Vec<&String> = networks.keys().collect();
    names.sort();
    names
        .into_iter()
        .filter_map(|n| networks[n].ip_address.as_deref())
        .find_map(|ip| ip.parse::<std::net::IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, port))
}

/// Turns a listing into what each service has. Pure: the listing in, services out.
pub fn collect(list: &[ContainerSummary]) -> (BTreeMap<String, Found>, Vec<Skipped>) {
    let mut found: BTreeMap<String, Found> = BTreeMap::new();
    let mut skipped = Vec::new();
    for c in list {
        let Some(l) = c.labels.as_ref() else {
            continue;
        };
        let Some(service) = l.get(labels::SERVICE) else {
            continue;
        };
        if l.contains_key(labels::MANAGED) {
            continue;
        }
        let name = summary_name(c);
        let skip = |why: String| Skipped {
            name: name.clone(),
            why,
        };
        if let Err(m) = crate::config::validate_name(service) {
            skipped.push(skip(format!("{}: {m}", labels::SERVICE)));
            continue;
        }
        if c.state.map(|s| s.to_string()).as_deref() != Some("running") {
            continue;
        }
        // A health check that does not say healthy keeps the container out.
        let status = c.status.as_deref().unwrap_or("");
        if status.contains("(health: starting)") || status.contains("(unhealthy)") {
            continue;
        }
        let port = match l.get(labels::PORT) {
            Some(p) => match p.parse::<u16>() {
                Ok(p) if p > 0 => p,
                _ => {
                    skipped.push(skip(format!("{}: '{p}' is not a port", labels::PORT)));
                    continue;
                }
            },
            None => {
                let mut ports: Vec<u16> =
                    c.ports.iter().flatten().map(|p| p.private_port).collect();
                ports.sort_unstable();
                ports.dedup();
                match ports.as_slice() {
                    [one] => *one,
                    [] => {
                        skipped.push(skip(format!(
                            "no {} label and no exposed port",
                            labels::PORT
                        )));
                        continue;
                    }
                    _ => {
                        skipped.push(skip(format!(
                            "several exposed ports: say which with {}",
                            labels::PORT
                        )));
                        continue;
                    }
                }
            }
        };
        let Some(addr) = reach(c, port) else {
            skipped.push(skip(format!(
                "port {port} is neither published nor on a network"
            )));
            continue;
        };
        let entry = found.entry(service.clone()).or_insert_with(|| Found {
            service: service.clone(),
            ..Default::default()
        });
        if let Some(h) = l.get(labels::HOSTS) {
            entry.hosts = h
                .split(',')
                .map(|x| x.trim().to_string())
                .filter(|x| !x.is_empty())
                .collect();
        }
        if let Some(p) = l.get(labels::PATH_PREFIX) {
            entry.path_prefix = Some(p.clone());
        }
        if let Some(w) = l.get(labels::WEIGHT) {
            entry.weight = Some(w.clone());
        }
        let container = FoundContainer {
            name: name.clone(),
            upstream: UpstreamAddr {
                spec: addr.to_string(),
                addr,
            },
        };
        match l.get(labels::ARM).map(String::as_str) {
            None | Some("stable") => entry.stable.push(container),
            Some("canary") => entry.canary.push(container),
            Some(other) => skipped.push(skip(format!(
                "{}: '{other}' is not stable or canary",
                labels::ARM
            ))),
        }
    }
    for f in found.values_mut() {
        f.stable.sort_by(|a, b| a.name.cmp(&b.name));
        f.canary.sort_by(|a, b| a.name.cmp(&b.name));
    }
    (found, skipped)
}

/// Runs discovery until the control handle's controller stops: lists, then follows events.
pub async fn run(engine: Engine, reporter: Reporter, interval: Duration) {
    let mut sent: BTreeMap<String, Found> = BTreeMap::new();
    let mut warned: HashMap<String, String> = HashMap::new();
    let mut filters: HashMap<String, Vec<String>> = HashMap::new();
    filters.insert("type".into(), vec!["container".into()]);
    filters.insert("label".into(), vec![labels::SERVICE.into()]);
    let options = bollard::query_parameters::EventsOptionsBuilder::default()
        .filters(&filters)
        .build();
    let mut events = engine.client().events(Some(options)).boxed();
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            e = events.next() => match e {
                Some(Ok(_)) => {
                    // Let a burst of events (start, health, ...) settle into one listing.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "docker events interrupted; listing on the interval");
                    tokio::time::sleep(interval).await;
                    let options = bollard::query_parameters::EventsOptionsBuilder::default()
                        .filters(&filters)
                        .build();
                    events = engine.client().events(Some(options)).boxed();
                }
                None => {
                    tokio::time::sleep(interval).await;
                    let options = bollard::query_parameters::EventsOptionsBuilder::default()
                        .filters(&filters)
                        .build();
                    events = engine.client().events(Some(options)).boxed();
                }
            },
        }
        let list = match engine.list(&[(labels::SERVICE, "")], false).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "discovery cannot list containers");
                continue;
            }
        };
        let (now, skipped) = collect(&list);
        for s in skipped {
            if warned.get(&s.name) != Some(&s.why) {
                tracing::warn!(container = %s.name, why = %s.why, "labelled container not used");
                warned.insert(s.name.clone(), s.why.clone());
            }
        }
        let gone: Vec<String> = sent
            .keys()
            .filter(|k| !now.contains_key(*k))
            .cloned()
            .collect();
        let mut changes: Vec<Found> = now
            .values()
            .filter(|f| sent.get(&f.service) != Some(f))
            .cloned()
            .collect();
        changes.extend(gone.into_iter().map(|service| Found {
            service,
            ..Default::default()
        }));
        for found in changes {
            let service = found.service.clone();
            match reporter
                .send(Report::Discovered(found.clone()), "docker:discovery")
                .await
            {
                Ok(_) => {
                    if found.is_empty() {
                        sent.remove(&service);
                    } else {
                        sent.insert(service, found);
                    }
                }
                Err(NotApplied::Stopped) => return,
                Err(e) => {
                    // Refused (e.g. labels that do not make a valid service): say it once.
                    let why = e.to_string();
                    if warned.get(&service) != Some(&why) {
                        tracing::warn!(service = %service, error = %why, "discovered containers refused");
                        warned.insert(service.clone(), why);
                    }
                    sent.insert(service, found);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bollard::models::{ContainerSummaryStateEnum, PortSummary};

    fn container(
        name: &str,
        labels: &[(&str, &str)],
        port: Option<(u16, u16)>,
    ) -> ContainerSummary {
        ContainerSummary {
            id: Some(format!("{name}-id")),
            names: Some(vec![format!("/{name}")]),
            labels: Some(
                labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            state: Some(ContainerSummaryStateEnum::RUNNING),
            status: Some("Up 3 seconds".into()),
            ports: port.map(|(private, public)| {
                vec![PortSummary {
                    ip: Some("0.0.0.0".into()),
                    private_port: private,
                    public_port: Some(public),
                    typ: None,
                }]
            }),
            ..Default::default()
        }
    }

    #[test]
    fn labels_make_arms_and_bad_labels_are_skipped_with_a_reason() {
        let list = vec![
            container("a", &[("sluice.service", "web")], Some((8080, 40001))),
            container(
                "b",
                &[("sluice.service", "web"), ("sluice.arm", "canary")],
                Some((8080, 40002)),
            ),
            container(
                "c",
                &[("sluice.service", "web"), ("sluice.managed", "true")],
                Some((8080, 40003)),
            ),
            container("d", &[("sluice.service", "Bad Name")], Some((8080, 40004))),
            container(
                "e",
                &[("sluice.service", "api"), ("sluice.port", "http")],
                Some((8080, 40005)),
            ),
            container("f", &[("other", "x")], Some((8080, 40006))),
            container(
                "g",
                &[
                    ("sluice.service", "api"),
                    ("sluice.hosts", "api.example.com, x.example.com"),
                ],
                Some((9000, 40007)),
            ),
        ];
        let (found, skipped) = collect(&list);
        let web = &found["web"];
        assert_eq!(web.stable.len(), 1);
        assert_eq!(web.stable[0].upstream.spec, "127.0.0.1:40001");
        assert_eq!(web.canary[0].name, "b");
        let api = &found["api"];
        assert_eq!(api.stable[0].upstream.addr.port(), 40007);
        assert_eq!(api.hosts, vec!["api.example.com", "x.example.com"]);
        let names: Vec<&str> = skipped.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, vec!["d", "e"]);
        assert!(skipped[1].why.contains("not a port"));
    }

    #[test]
    fn unhealthy_or_starting_containers_wait() {
        let mut c = container("a", &[("sluice.service", "web")], Some((8080, 40001)));
        c.status = Some("Up 2 seconds (health: starting)".into());
        assert!(collect(std::slice::from_ref(&c)).0.is_empty());
        c.status = Some("Up 9 seconds (healthy)".into());
        assert_eq!(collect(&[c]).0["web"].stable.len(), 1);
    }
}
