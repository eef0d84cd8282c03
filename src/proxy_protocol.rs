//! The PROXY protocol (HAProxy's, versions 1 and 2): a load balancer in front of the gate
//! that passes TCP through (not HTTP) sends one header before the connection's first byte,
//! naming the client it accepted the connection from. A listener with `proxy_protocol = true`
//! requires that header on every connection, believes it only from `routing.trusted_proxies`,
//! and reads exactly the header's bytes (nothing of the request behind it), so the HTTP or
//! TLS that follows is read as if the connection had started there.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use tokio::io::{AsyncRead, AsyncReadExt};

/// The longest version 1 header, CRLF included (the specification's bound).
pub const V1_MAX: usize = 107;
/// The longest version 2 address block and TLVs this gate reads (the format allows 64 KiB;
/// no load balancer sends more than a few hundred bytes).
pub const V2_MAX_BODY: usize = 4096;
/// The version 2 signature.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// Why a connection's PROXY header was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProxyHeaderError {
    /// The connection does not start with a PROXY header.
    Missing,
    /// It starts with one that breaks the format (the reason says how).
    Malformed(&'static str),
    /// The connection ended or failed inside the header.
    Io(std::io::ErrorKind),
}

impl std::fmt::Display for ProxyHeaderError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProxyHeaderError::Missing => f.write_str("no PROXY protocol header"),
            ProxyHeaderError::Malformed(why) => write!(f, "malformed PROXY header: {why}"),
            ProxyHeaderError::Io(kind) => write!(f, "reading the PROXY header: {kind}"),
        }
    }
}

impl std::error::Error for ProxyHeaderError {}

/// Reads one PROXY header (either version) from the start of `r`, and not a byte more.
/// `Ok(Some(addr))`: the client the load balancer names; `Ok(None)`: a header that names no
/// client (v1 `UNKNOWN`, v2 `LOCAL` such as a health check, or a family other than TCP over
/// IPv4/IPv6), where the connection's own peer stands.
pub async fn read<R: AsyncRead + Unpin + ?Sized>(
    r: &mut R,
) -> Result<Option<SocketAddr>, ProxyHeaderError> {
    let io = |e: std::io::Error| ProxyHeaderError::Io(e.kind());
    // Both versions are at least 8 bytes long (v1 "PROXY UNKNOWN\r\n" is 15, v2 16).
    let mut start = [0u8; 16];
    r.read_exact(&mut start[..8]).await.map_err(io)?;
    if start[..6] == *b"PROXY " {
        let mut line = Vec::with_capacity(V1_MAX);
        line.extend_from_slice(&start[..8]);
        // One byte at a time: the stream under it is buffered, and a read past the CRLF
        // would take the request's first bytes.
        while !line.ends_with(b"\r\n") {
            if line.len() >= V1_MAX {
                return Err(ProxyHeaderError::Malformed(
                    "v1 header longer than 107 bytes",
                ));
            }
            let mut b = [0u8; 1];
            r.read_exact(&mut b).await.map_err(io)?;
            line.push(b[0]);
        }
        return parse_v1(&line);
    }
    if start[..8] != V2_SIGNATURE[..8] {
        return Err(ProxyHeaderError::Missing);
    }
    r.read_exact(&mut start[8..]).await.map_err(io)?;
    let len = v2_length(&start)?;
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await.map_err(io)?;
    parse_v2(&start, &body)
}

/// A version 1 line, CRLF included: `PROXY TCP4 src dst sport dport\r\n` or
/// `PROXY UNKNOWN ...\r\n`.
pub fn parse_v1(line: &[u8]) -> Result<Option<SocketAddr>, ProxyHeaderError> {
    let bad = ProxyHeaderError::Malformed;
    let text = line
        .strip_suffix(b"\r\n")
        .ok_or(bad("v1 header does not end in CRLF"))?;
    if line.len() > V1_MAX {
        return Err(bad("v1 header longer than 107 bytes"));
    }
    let text = std::str::from_utf8(text).map_err(|_| bad("v1 header is not ASCII"))?;
    let mut parts = text.split(' ');
    if parts.next() != Some("PROXY") {
        return Err(bad("v1 header does not start with PROXY"));
    }
    let family = parts.next().ok_or(bad("v1 header names no protocol"))?;
    if family == "UNKNOWN" {
        return Ok(None);
    }
    let (src, _dst, sport, dport) = match (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) {
        (Some(a), Some(b), Some(c), Some(d), None) => (a, b, c, d),
        _ => return Err(bad("v1 header needs two addresses and two ports")),
    };
    let ip: IpAddr = match family {
        "TCP4" => IpAddr::V4(src.parse().map_err(|_| bad("v1 source is not IPv4"))?),
        "TCP6" => IpAddr::V6(src.parse().map_err(|_| bad("v1 source is not IPv6"))?),
        _ => return Err(bad("v1 protocol is not TCP4, TCP6 or UNKNOWN")),
    };
    // Ports are decimal without sign or leading zeros (the specification's form).
    let port_ok = |p: &str| {
        !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) && (p == "0" || !p.starts_with('0'))
    };
    if !port_ok(sport) || !port_ok(dport) {
        return Err(bad("v1 port is not a decimal number"));
    }
    let port: u16 = sport.parse().map_err(|_| bad("v1 port is out of range"))?;
    dport
        .parse::<u16>()
        .map_err(|_| bad("v1 port is out of range"))?;
    Ok(Some(SocketAddr::new(ip, port)))
}

/// The length of the version 2 body that follows its 16-byte start.
pub fn v2_length(start: &[u8; 16]) -> Result<usize, ProxyHeaderError> {
    if start[..12] != V2_SIGNATURE {
        return Err(ProxyHeaderError::Missing);
    }
    if start[12] >> 4 != 2 {
        return Err(ProxyHeaderError::Malformed("v2 version is not 2"));
    }
    let len = usize::from(u16::from_be_bytes([start[14], start[15]]));
    if len > V2_MAX_BODY {
        return Err(ProxyHeaderError::Malformed("v2 header longer than 4 KiB"));
    }
    Ok(len)
}

/// A version 2 header: its 16-byte start and its body (addresses, then TLVs, ignored).
pub fn parse_v2(start: &[u8; 16], body: &[u8]) -> Result<Option<SocketAddr>, ProxyHeaderError> {
    let bad = ProxyHeaderError::Malformed;
    if v2_length(start)? != body.len() {
        return Err(bad("v2 length does not match its body"));
    }
    match start[12] & 0x0f {
        0 => return Ok(None), // LOCAL: the balancer's own connection (a health check).
        1 => {}
        _ => return Err(bad("v2 command is neither LOCAL nor PROXY")),
    }
    match start[13] {
        // TCP over IPv4: source, destination, source port, destination port.
        0x11 => {
            let a = body
                .get(..12)
                .ok_or(bad("v2 IPv4 addresses are cut short"))?;
            let ip = Ipv4Addr::new(a[0], a[1], a[2], a[3]);
            Ok(Some(SocketAddr::new(
                ip.into(),
                u16::from_be_bytes([a[8], a[9]]),
            )))
        }
        // TCP over IPv6.
        0x21 => {
            let a = body
                .get(..36)
                .ok_or(bad("v2 IPv6 addresses are cut short"))?;
            let mut src = [0u8; 16];
            src.copy_from_slice(&a[..16]);
            Ok(Some(SocketAddr::new(
                Ipv6Addr::from(src).into(),
                u16::from_be_bytes([a[32], a[33]]),
            )))
        }
        // UNSPEC, UDP, unix sockets: no client address the gate can use.
        f if f >> 4 <= 3 && f & 0x0f <= 2 => Ok(None),
        _ => Err(bad("v2 family or protocol is unknown")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn read_all(bytes: &[u8]) -> (Result<Option<SocketAddr>, ProxyHeaderError>, Vec<u8>) {
        let mut r = bytes;
        let got = read(&mut r).await;
        (got, r.to_vec())
    }

    #[tokio::test]
    async fn v1_names_the_client_and_leaves_the_request() {
        let (got, rest) =
            read_all(b"PROXY TCP4 1.2.3.4 5.6.7.8 1111 80\r\nGET / HTTP/1.1\r\n").await;
        assert_eq!(got, Ok(Some("1.2.3.4:1111".parse().unwrap())));
        assert_eq!(rest, b"GET / HTTP/1.1\r\n");
        let (got, _) = read_all(b"PROXY TCP6 2001:db8::1 ::1 65535 443\r\n").await;
        assert_eq!(got, Ok(Some("[2001:db8::1]:65535".parse().unwrap())));
        let (got, rest) = read_all(b"PROXY UNKNOWN\r\nX").await;
        assert_eq!((got, rest), (Ok(None), b"X".to_vec()));
    }

    #[tokio::test]
    async fn v1_faults_are_refused() {
        for bad in [
            &b"PROXY TCP4 1.2.3.4 5.6.7.8 1111\r\n"[..],
            b"PROXY TCP4 1.2.3.4 5.6.7.8 01111 80\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 70000 80\r\n",
            b"PROXY TCP4 ::1 5.6.7.8 1 80\r\n",
            b"PROXY TCP5 1.2.3.4 5.6.7.8 1 80\r\n",
            b"PROXY TCP4 1.2.3.4  5.6.7.8 1 80\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 80\n\r\n",
        ] {
            let (got, _) = read_all(bad).await;
            assert!(
                matches!(got, Err(ProxyHeaderError::Malformed(_))),
                "{:?}: {got:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let long = [b"PROXY TCP4 ".as_slice(), &[b'1'; 120], b"\r\n"].concat();
        assert!(matches!(
            read_all(&long).await.0,
            Err(ProxyHeaderError::Malformed(_))
        ));
        assert_eq!(
            read_all(b"GET / HTTP/1.1\r\n").await.0,
            Err(ProxyHeaderError::Missing)
        );
        assert!(matches!(
            read_all(b"PROXY TCP4").await.0,
            Err(ProxyHeaderError::Io(_))
        ));
    }

    fn v2(command: u8, family: u8, body: &[u8]) -> Vec<u8> {
        let mut v = V2_SIGNATURE.to_vec();
        v.push(0x20 | command);
        v.push(family);
        v.extend_from_slice(&(body.len() as u16).to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    #[tokio::test]
    async fn v2_names_the_client_and_leaves_the_request() {
        let mut body = vec![10, 0, 0, 7, 10, 0, 0, 1, 0x1f, 0x90, 0, 80];
        body.extend_from_slice(&[0x04, 0, 1, 0xaa]); // a TLV, skipped
        let mut bytes = v2(1, 0x11, &body);
        bytes.extend_from_slice(b"GET /");
        let (got, rest) = read_all(&bytes).await;
        assert_eq!(got, Ok(Some("10.0.0.7:8080".parse().unwrap())));
        assert_eq!(rest, b"GET /");
        let mut six = [0u8; 36];
        six[15] = 1;
        six[32] = 1;
        let (got, _) = read_all(&v2(1, 0x21, &six)).await;
        assert_eq!(got, Ok(Some("[::1]:256".parse().unwrap())));
        let (got, rest) = read_all(&[v2(0, 0x00, &[]), b"Z".to_vec()].concat()).await;
        assert_eq!((got, rest), (Ok(None), b"Z".to_vec()));
    }

    #[tokio::test]
    async fn v2_faults_are_refused() {
        for bad in [
            v2(1, 0x11, &[1, 2, 3]),
            v2(1, 0x21, &[0; 12]),
            v2(2, 0x11, &[0; 12]),
            v2(1, 0x99, &[0; 12]),
        ] {
            assert!(
                matches!(read_all(&bad).await.0, Err(ProxyHeaderError::Malformed(_))),
                "{bad:?}"
            );
        }
        let mut wrong_version = v2(1, 0x11, &[0; 12]);
        wrong_version[12] = 0x11;
        assert!(matches!(
            read_all(&wrong_version).await.0,
            Err(ProxyHeaderError::Malformed(_))
        ));
        let mut huge = V2_SIGNATURE.to_vec();
        huge.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
        assert!(matches!(
            read_all(&huge).await.0,
            Err(ProxyHeaderError::Malformed(_))
        ));
    }
}
