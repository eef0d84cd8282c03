//! Sluice: a traffic gate that makes deployments safe.
//!
//! A reverse proxy (pingora) that splits each service's traffic between a stable and a
//! canary version by weight, measures every request inline per version, and cuts a bad
//! canary back by publishing one new immutable routing table. See `DESIGN.md` for the flow
//! and the invariants; each module's `//!` line names its concept.

pub mod access_log;
pub mod acme;
pub mod admin;
pub mod analysis;
pub mod api;
pub mod cli;
pub mod config;
pub mod connections;
pub mod demo;
pub mod docker;
pub mod events;
pub mod framing;
pub mod gate;
pub mod judge;
pub mod linger;
pub mod listeners;
pub mod metrics;
pub mod notify;
pub mod probes;
pub mod proxy;
pub mod proxy_protocol;
pub mod request_id;
pub mod rollout;
pub mod routes;
pub mod routing;
pub mod stats;
pub mod store;
pub mod time;
pub mod tls;
pub mod trust;
pub mod types;
pub mod upstream;
