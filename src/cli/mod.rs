//! The `sluice` command's library side: its arguments ([`args`]), the admin API client
//! ([`client`]), the remote subcommands ([`remote`]) and plain-text rendering ([`render`]).
//! `main.rs` only parses and dispatches.

pub mod args;
pub mod client;
pub mod remote;
pub mod render;

pub use args::{Cli, Command, DeployAction, Remote, Strategy};
pub use remote::remote;
