//! An upstream that records exactly what it receives: every byte of every connection, and
//! the requests it found in them (head and body), each answered `200 ok`. Strict where it
//! must be to frame requests (Content-Length or chunked), nothing more: what the gate sent is
//! what the test looks at.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One request as the upstream framed it.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// The head, as bytes received (request line and headers, up to the blank line).
    pub head: String,
    /// The body.
    pub body: Vec<u8>,
}

impl Recorded {
    /// Every value of header `name` (case-insensitive), as received.
    pub fn header_values(&self, name: &str) -> Vec<String> {
        self.head
            .lines()
            .skip(1)
            .filter_map(|l| l.split_once(':'))
            .filter(|(n, _)| n.trim().eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim().to_string())
            .collect()
    }
}

/// The recording upstream.
pub struct Recorder {
    /// Where it listens.
    pub addr: SocketAddr,
    raw: Arc<Mutex<Vec<u8>>>,
    requests: Arc<Mutex<Vec<Recorded>>>,
}

impl Recorder {
    /// Starts it on 127.0.0.1:0, answering `200 ok`.
    pub async fn start() -> Recorder {
        Recorder::answering(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await
    }

    /// Starts it answering every request with `answer` (a whole response, as bytes).
    pub async fn answering(answer: &'static [u8]) -> Recorder {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let raw: Arc<Mutex<Vec<u8>>> = Arc::default();
        let requests: Arc<Mutex<Vec<Recorded>>> = Arc::default();
        let (r, q) = (raw.clone(), requests.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream, r.clone(), q.clone(), answer));
            }
        });
        Recorder {
            addr,
            raw,
            requests,
        }
    }

    /// Every byte received so far, all connections, lossy UTF-8.
    pub fn raw(&self) -> String {
        String::from_utf8_lossy(&self.raw.lock().unwrap()).into_owned()
    }

    /// The requests framed so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }
}

async fn serve(
    mut stream: tokio::net::TcpStream,
    raw: Arc<Mutex<Vec<u8>>>,
    requests: Arc<Mutex<Vec<Recorded>>>,
    answer: &'static [u8],
) {
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        // Frame as many requests as the buffer holds.
        while let Some((req, used)) = frame(&buf) {
            buf.drain(..used);
            requests.lock().unwrap().push(req);
            if stream.write_all(answer).await.is_err() {
                return;
            }
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                raw.lock().unwrap().extend_from_slice(&chunk[..n]);
                buf.extend_from_slice(&chunk[..n]);
            }
        }
    }
}

/// One whole request at the start of `buf`, and how many bytes it took.
fn frame(buf: &[u8]) -> Option<(Recorded, usize)> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let probe = Recorded {
        head: head.clone(),
        body: Vec::new(),
    };
    let chunked = probe
        .header_values("transfer-encoding")
        .iter()
        .any(|v| v.eq_ignore_ascii_case("chunked"));
    if chunked {
        // Chunks until the last one; trailers are not expected here.
        let mut at = end;
        let mut body = Vec::new();
        loop {
            let line_end = buf[at..].windows(2).position(|w| w == b"\r\n")? + at;
            let line = String::from_utf8_lossy(&buf[at..line_end]).into_owned();
            let size = usize::from_str_radix(line.split(';').next()?.trim(), 16).ok()?;
            at = line_end + 2;
            if size == 0 {
                if buf.len() < at + 2 {
                    return None;
                }
                return Some((Recorded { head, body }, at + 2));
            }
            if buf.len() < at + size + 2 {
                return None;
            }
            body.extend_from_slice(&buf[at..at + size]);
            at += size + 2;
        }
    }
    let len: usize = probe
        .header_values("content-length")
        .first()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    if buf.len() < end + len {
        return None;
    }
    Some((
        Recorded {
            head,
            body: buf[end..end + len].to_vec(),
        },
        end + len,
    ))
}

/// Sends `parts` on one new connection to `addr` (one write each, in order), then reads until
/// the gate closes it or `limit` passes; returns what came back.
pub async fn exchange_raw(
    addr: SocketAddr,
    parts: &[&[u8]],
    limit: std::time::Duration,
) -> (String, bool) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.set_nodelay(true).unwrap();
    for p in parts {
        s.write_all(p).await.unwrap();
        s.flush().await.unwrap();
    }
    let mut out = Vec::new();
    let closed = tokio::time::timeout(limit, async {
        let mut chunk = [0u8; 8192];
        loop {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => out.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await
    .is_ok();
    (String::from_utf8_lossy(&out).into_owned(), closed)
}
