//! Two versions of a toy service behind a gate, in one process.
//!
//! Run:   cargo run --example two_versions
//! Try:   curl -s localhost:8080/                       (stable or canary, sticky per cookie)
//!        curl -s -H 'x-sluice-arm: canary' localhost:8080/
//!        curl -s localhost:9901/api/v1/services/web | python3 -m json.tool
//!        cargo run -- weight web 50                    (then watch the split change)
//! Stop:  Ctrl-C

#![allow(clippy::unwrap_used, clippy::expect_used)] // an example stops on a broken set-up

use sluice::config::Config;
use sluice::demo::DemoUpstream;

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt().with_env_filter("info").init();
    let stable = DemoUpstream::spawn("v1 (stable)")?;
    let canary = DemoUpstream::spawn("v2 (canary)")?;
    let config = Config::parse(
        &format!(
            r#"
[server]
listen = "127.0.0.1:8080"
admin_listen = "127.0.0.1:9901"

[[services]]
name = "web"
stable = ["{}"]
canary = ["{}"]
canary_weight = 20.0
"#,
            stable.addr, canary.addr
        ),
        "two_versions.rs",
    )?;
    let gate = sluice::gate::start(config)?;
    println!(
        "gate on http://{}  admin on http://{}  (20 % of new clients go to v2)",
        gate.proxy_addr, gate.admin_addr
    );
    let (tx, rx) = std::sync::mpsc::channel();
    ctrlc_channel(tx);
    let _ = rx.recv();
    let report = gate.drain();
    println!("stopped after {:?}", report.took);
    Ok(())
}

/// Ctrl-C without another dependency: a tokio signal on a small runtime thread.
fn ctrlc_channel(tx: std::sync::mpsc::Sender<()>) {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let _ = tokio::signal::ctrl_c().await;
        });
        let _ = tx.send(());
    });
}
