//! The `sluice` command line: every subcommand and its flags (clap).

use super::client::DEFAULT_ADMIN_URL;
use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "sluice",
    version,
    about = "A traffic gate: canary releases with instant automatic cut-back"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(clap::Args)]
pub struct Remote {
    /// Admin API of the gate.
    #[arg(long, env = "SLUICE_ADMIN_URL", default_value = DEFAULT_ADMIN_URL, global = true)]
    pub admin_url: String,
    /// Bearer token of the admin API.
    #[arg(long, env = "SLUICE_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
    /// Print the API's JSON answer instead of a summary.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Subcommand)]
pub enum Command {
    /// Show what Sluice does, in one command: a canary that goes bad is cut back live.
    Demo {
        /// Requests per second.
        #[arg(long, default_value_t = 1000)]
        rate: u32,
        /// Sticky clients.
        #[arg(long, default_value_t = 200)]
        clients: usize,
        /// Turn the canary shield off (clients then see the few failures before the cut).
        #[arg(long)]
        no_shield: bool,
        /// SQLite file the demo keeps its history in (replaced on each run).
        #[arg(long, default_value = "sluice-demo.db")]
        db: PathBuf,
    },
    /// Create or update the history database's tables, then show how many rows each holds.
    Migrate {
        /// Config file (its [store] section).
        #[arg(long, short, default_value = "config/sluice.toml")]
        config: PathBuf,
    },
    /// Run the gate.
    Run {
        /// Config file.
        #[arg(long, short, default_value = "config/sluice.toml")]
        config: PathBuf,
    },
    /// Validate config files; exits non-zero naming the file and key of each problem.
    CheckConfig {
        /// Files to check.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Show services, their arms and live stats.
    Status {
        /// One service only.
        service: Option<String>,
        #[command(flatten)]
        remote: Remote,
    },
    /// Set a service's canary upstreams (a new canary version).
    Canary {
        /// Service name.
        service: String,
        /// Canary upstream host:port (repeat for several).
        #[arg(long = "upstream", required = true)]
        upstreams: Vec<String>,
        /// Starting weight in percent (default 0).
        #[arg(long)]
        weight: Option<f64>,
        /// Version label kept in history (v2, a git sha, ...).
        #[arg(long)]
        label: Option<String>,
        #[command(flatten)]
        remote: Remote,
    },
    /// Set the canary weight in percent (fractions allowed).
    Weight {
        /// Service name.
        service: String,
        /// Percent of new clients sent to the canary, 0..=100.
        percent: f64,
        #[command(flatten)]
        remote: Remote,
    },
    /// Make the canary the new stable.
    Promote {
        /// Service name.
        service: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// Cut the canary back to 0 and hold it there.
    Rollback {
        /// Service name.
        service: String,
        /// Why (kept in the event).
        #[arg(long, default_value = "")]
        reason: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// Give a rolled-back canary traffic again (with a fresh window).
    Resume {
        /// Service name.
        service: String,
        /// Weight in percent (default: the weight it had).
        #[arg(long)]
        weight: Option<f64>,
        #[command(flatten)]
        remote: Remote,
    },
    /// Ask the gate to re-read its config file.
    Reload {
        #[command(flatten)]
        remote: Remote,
    },
    /// Stored events, newest first.
    History {
        /// One service.
        #[arg(long)]
        service: Option<String>,
        /// Only these kinds (repeat).
        #[arg(long = "kind")]
        kinds: Vec<String>,
        /// One deployment.
        #[arg(long)]
        deployment: Option<String>,
        /// From (epoch ms, 2026-11-22T04:00:00Z, or -1h).
        #[arg(long, allow_hyphen_values = true)]
        since: Option<String>,
        /// Until (same forms).
        #[arg(long, allow_hyphen_values = true)]
        until: Option<String>,
        /// Rows per page.
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Continue after a previous page.
        #[arg(long)]
        cursor: Option<String>,
        #[command(flatten)]
        remote: Remote,
    },
    /// Deployments, newest first.
    Deployments {
        /// One service.
        service: Option<String>,
        #[command(flatten)]
        remote: Remote,
    },
    /// One deployment: its events and its health trend per minute; or control it.
    Deployment {
        /// Deployment id.
        id: String,
        /// pause, resume, abort (instant rollback) or promote (skip the remaining steps).
        #[arg(value_enum)]
        action: Option<DeployAction>,
        #[command(flatten)]
        remote: Remote,
    },
    /// What happened in one deployment: a post-incident draft (Markdown) from its stored
    /// evidence: timeline, the rule and its evidence, failed requests, figures, who acted.
    Report {
        /// Deployment id.
        id: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// A container service's releases: live ones and those in history.
    Releases {
        /// Service name.
        service: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// Start a deployment of a new version and follow it until it ends.
    ///
    /// Exits 0 when it succeeds, 2 when it is rolled back, 3 when it is aborted.
    Deploy {
        /// Service name.
        service: String,
        /// canary (weighted steps), blue-green (switch in one swap) or rolling (batches).
        #[arg(long, value_enum, default_value = "canary")]
        strategy: Strategy,
        /// New version's upstream host:port (repeat for several).
        #[arg(
            long = "upstream",
            required_unless_present = "image",
            conflicts_with = "image"
        )]
        upstreams: Vec<String>,
        /// Image to run as the new version (a service with [services.docker]).
        #[arg(long)]
        image: Option<String>,
        /// Version label kept in history (v2, a git sha, ...).
        #[arg(long)]
        label: Option<String>,
        /// Canary step, in order: WEIGHT[:BAKE[:MIN_SAMPLES]] (10:30s:200) or `pause`.
        #[arg(long = "step")]
        steps: Vec<String>,
        /// Canary: step back one step on soft (latency) breaches instead of cutting to 0.
        #[arg(long)]
        step_back: bool,
        /// Blue-green: how long green's probes must pass before the switch.
        #[arg(long)]
        verify_for: Option<String>,
        /// Blue-green: how long blue stays warm after the switch.
        #[arg(long)]
        keep_blue_for: Option<String>,
        /// Blue-green: wait for a promote instead of switching once verified.
        #[arg(long)]
        no_auto_switch: bool,
        /// Rolling: instances replaced per batch.
        #[arg(long)]
        batch_size: Option<usize>,
        /// Rolling: old instances out of rotation at once.
        #[arg(long)]
        max_unavailable: Option<usize>,
        /// Rolling: pause between batches.
        #[arg(long)]
        pause_between: Option<String>,
        /// Rolling: how long an old instance may take to finish its requests.
        #[arg(long)]
        drain_timeout: Option<String>,
        /// Rolling: how long a batch must stay healthy before the next one.
        #[arg(long)]
        health_wait: Option<String>,
        /// How long a phase may wait for samples, a healthy judge or probes beyond its own
        /// minimum (default 30m; 0s: forever).
        #[arg(long)]
        progress_deadline: Option<String>,
        /// What a stalled deployment does: pause (default), rollback or
        /// promote_if_probes_healthy.
        #[arg(long)]
        on_deadline: Option<String>,
        /// Start it and print its id without following it.
        #[arg(long)]
        detach: bool,
        #[command(flatten)]
        remote: Remote,
    },
    /// Freeze deployments (all, or one service): new ones are refused. Without --reason,
    /// shows the freezes in force.
    Freeze {
        /// One service (default: all).
        service: Option<String>,
        /// Why (required to freeze).
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        remote: Remote,
    },
    /// The certificates the TLS listeners serve (name, source, issuer, expiry) and how each
    /// ACME name stands.
    Certificates {
        #[command(flatten)]
        remote: Remote,
    },
    /// Lift a freeze (all, or one service).
    Unfreeze {
        /// One service (default: the global freeze).
        service: Option<String>,
        #[command(flatten)]
        remote: Remote,
    },
    /// Follow the gate's events live (breaches, cut-backs, changes), one line each.
    Events {
        /// Only these services (repeat).
        #[arg(long = "service")]
        services: Vec<String>,
        /// Only these kinds (repeat): breach, rolled_back, weight_set, ...
        #[arg(long = "kind")]
        kinds: Vec<String>,
        /// Also show the kept events after this sequence number (0: all kept).
        #[arg(long)]
        since: Option<u64>,
        #[command(flatten)]
        remote: Remote,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum DeployAction {
    Pause,
    Resume,
    Abort,
    Promote,
}

impl DeployAction {
    pub fn as_str(self) -> &'static str {
        match self {
            DeployAction::Pause => "pause",
            DeployAction::Resume => "resume",
            DeployAction::Abort => "abort",
            DeployAction::Promote => "promote",
        }
    }
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum Strategy {
    Canary,
    #[value(alias = "blue_green")]
    BlueGreen,
    Rolling,
}
