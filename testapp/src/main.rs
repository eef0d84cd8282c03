//! A tiny HTTP/1.1 app for Sluice's container tests. Standard library only, so it links
//! statically and runs in a `FROM scratch` image.
//!
//! Run:   testapp serve --port 8080 --version v2 [--fail-after N]
//! Try:   curl localhost:8080/            -> "v2"  (500 after N requests with --fail-after)
//!        curl localhost:8080/health      -> 200 ok, or 503 once POST /admin/unhealthy
//!        curl localhost:8080/env/GREETING  curl localhost:8080/file/data/motd
//! Check: testapp check http://127.0.0.1:8080/health   (exit 0 when it answers 200; the
//!        image's HEALTHCHECK)
//! Load:  POST /admin/hog/{mib} holds that much more memory; POST /admin/spin/{secs} keeps
//!        one CPU busy that long (for resource-rule tests)

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Memory held by /admin/hog.
static HOG: std::sync::Mutex<Vec<Vec<u8>>> = std::sync::Mutex::new(Vec::new());

struct App {
    version: String,
    fail_after: Option<u64>,
    served: AtomicU64,
    unhealthy: AtomicBool,
}

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("check") => {
            let url = args.get(2).cloned().unwrap_or_else(|| "http://127.0.0.1:8080/health".into());
            std::process::exit(if check(&url) { 0 } else { 1 });
        }
        Some("version") => println!("{}", arg(&args, "--version").unwrap_or_else(|| "v0".into())),
        _ => serve(&args),
    }
}

/// GET the URL (http://IP:PORT/path only); true on a 200 answer.
fn check(url: &str) -> bool {
    let Some(rest) = url.strip_prefix("http://") else { return false };
    let (addr, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let Ok(addr) = addr.parse() else { return false };
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(2)) else { return false };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").is_err() {
        return false;
    }
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).is_ok() && line.split_whitespace().nth(1) == Some("200")
}

fn serve(args: &[String]) {
    let port = arg(args, "--port").unwrap_or_else(|| "8080".into());
    let app = Arc::new(App {
        version: arg(args, "--version")
            .or_else(|| std::env::var("APP_VERSION").ok())
            .unwrap_or_else(|| "v0".into()),
        fail_after: arg(args, "--fail-after")
            .or_else(|| std::env::var("FAIL_AFTER").ok())
            .and_then(|v| v.parse().ok()),
        served: AtomicU64::new(0),
        unhealthy: AtomicBool::new(false),
    });
    let listener = TcpListener::bind(format!("0.0.0.0:{port}")).expect("bind");
    eprintln!("testapp {} on :{port}", app.version);
    for stream in listener.incoming().flatten() {
        let app = app.clone();
        std::thread::spawn(move || connection(stream, &app));
    }
}

fn connection(stream: TcpStream, app: &App) {
    let _ = stream.set_nodelay(true);
    let mut reader = BufReader::new(match stream.try_clone() {
        Ok(s) => s,
        Err(_) => return,
    });
    let mut out = stream;
    loop {
        let mut request = String::new();
        match reader.read_line(&mut request) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let mut parts = request.split_whitespace();
        let (method, path) = (parts.next().unwrap_or("").to_string(), parts.next().unwrap_or("/").to_string());
        let mut length = 0usize;
        let mut close = false;
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).unwrap_or(0) == 0 {
                return;
            }
            let h = header.trim_end();
            if h.is_empty() {
                break;
            }
            let lower = h.to_ascii_lowercase();
            if let Some(v) = lower.strip_prefix("content-length:") {
                length = v.trim().parse().unwrap_or(0);
            }
            if lower.starts_with("connection:") && lower.contains("close") {
                close = true;
            }
        }
        let mut body = vec![0u8; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let (status, text) = answer(app, &method, &path);
        let reply = format!(
            "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nX-Upstream: {}\r\n{}\r\n{text}",
            text.len(),
            app.version,
            if close { "Connection: close\r\n" } else { "" }
        );
        if out.write_all(reply.as_bytes()).is_err() || close {
            return;
        }
    }
}

fn answer(app: &App, method: &str, path: &str) -> (&'static str, String) {
    match (method, path) {
        ("GET", "/health") => {
            if app.unhealthy.load(Ordering::Relaxed) {
                ("503 Service Unavailable", "unhealthy\n".into())
            } else {
                ("200 OK", "ok\n".into())
            }
        }
        ("POST", "/admin/unhealthy") => {
            app.unhealthy.store(true, Ordering::Relaxed);
            ("200 OK", "now unhealthy\n".into())
        }
        ("POST", "/admin/healthy") => {
            app.unhealthy.store(false, Ordering::Relaxed);
            ("200 OK", "now healthy\n".into())
        }
        ("GET", "/version") => ("200 OK", format!("{}\n", app.version)),
        ("POST", p) if p.starts_with("/admin/hog/") => match p[11..].parse::<usize>() {
            Ok(mib) if mib <= 1024 => {
                // Touch every page so the memory is really used.
                let block = vec![1u8; mib << 20];
                let total: usize = block.iter().step_by(4096).map(|b| *b as usize).sum();
                HOG.lock().map(|mut h| h.push(block)).ok();
                ("200 OK", format!("holding {mib} MiB more ({total} pages)\n"))
            }
            _ => ("400 Bad Request", "hog 0..=1024 MiB\n".into()),
        },
        ("POST", p) if p.starts_with("/admin/spin/") => match p[12..].parse::<u64>() {
            Ok(secs) if secs <= 60 => {
                std::thread::spawn(move || {
                    let until = std::time::Instant::now() + Duration::from_secs(secs);
                    let mut x = 0u64;
                    while std::time::Instant::now() < until {
                        x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
                    }
                    std::hint::black_box(x);
                });
                ("200 OK", format!("spinning for {secs}s\n"))
            }
            _ => ("400 Bad Request", "spin 0..=60 s\n".into()),
        },
        ("GET", p) if p.starts_with("/env/") => match std::env::var(&p[5..]) {
            Ok(v) => ("200 OK", format!("{v}\n")),
            Err(_) => ("404 Not Found", "unset\n".into()),
        },
        ("GET", p) if p.starts_with("/file/") => match std::fs::read_to_string(&p[5..]) {
            Ok(v) => ("200 OK", v),
            Err(e) => ("404 Not Found", format!("{e}\n")),
        },
        _ => {
            let n = app.served.fetch_add(1, Ordering::Relaxed) + 1;
            if app.fail_after.is_some_and(|limit| n > limit) {
                ("500 Internal Server Error", format!("{} failed\n", app.version))
            } else {
                ("200 OK", format!("{}\n", app.version))
            }
        }
    }
}
