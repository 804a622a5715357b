//! The PROXY protocol (HAProxy, versions 1 and 2): the real client address sent by a
//! load balancer at the start of a TCP connection.
//!
//! This module only parses; the listener calls [`parse`] on the first bytes of a
//! connection from a trusted peer, strips the header and sets
//! [`PeerAddr`](crate::client_ip::PeerAddr) to [`ProxyHeader::source`] (or keeps the socket
//! peer when it is `None`). A connection from an untrusted peer must not be parsed at all,
//! or anyone could choose their address.
//!
//! ```
//! use wsgate_layers::proxy_protocol::{parse, ProxyHeader};
//! let buf = b"PROXY TCP4 192.0.2.1 198.51.100.1 56324 443\r\nGET / HTTP/1.1\r\n";
//! let (header, used) = parse(buf)?.expect("complete header");
//! assert_eq!(header.source(), Some("192.0.2.1:56324".parse()?));
//! assert_eq!(&buf[used..used + 3], b"GET");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The 12-byte signature that starts a version 2 header.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// The longest version 1 header, CRLF included (from the specification).
pub const V1_MAX_LEN: usize = 107;
/// Bytes of a version 2 header before its variable part.
pub const V2_FIXED_LEN: usize = 16;

/// Which version of the protocol the header was written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyVersion {
    /// The text form: `PROXY TCP4 … \r\n`.
    V1,
    /// The binary form.
    V2,
}

/// What the header says about the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyCommand {
    /// Relayed for a client; the addresses (if any) are the client's.
    Proxy,
    /// Made by the proxy itself (v2 `LOCAL`, health checks): use the socket peer.
    Local,
}

/// A parsed PROXY protocol header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxyHeader {
    /// The protocol version.
    pub version: ProxyVersion,
    /// `PROXY` or `LOCAL`.
    pub command: ProxyCommand,
    /// The original client (`source`) and the address it connected to (`destination`);
    /// `None` for `LOCAL`, `UNKNOWN`, `UNSPEC` and families other than TCP over IPv4/IPv6.
    pub addresses: Option<(SocketAddr, SocketAddr)>,
}

impl ProxyHeader {
    /// The client's address, if the header carries one.
    pub fn source(&self) -> Option<SocketAddr> {
        match self.command {
            ProxyCommand::Proxy => self.addresses.map(|(s, _)| s),
            ProxyCommand::Local => None,
        }
    }

    /// The address the client connected to, if the header carries one.
    pub fn destination(&self) -> Option<SocketAddr> {
        match self.command {
            ProxyCommand::Proxy => self.addresses.map(|(_, d)| d),
            ProxyCommand::Local => None,
        }
    }
}

/// Why a PROXY header was refused. The listener should close the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProxyProtocolError {
    /// The bytes start with neither `PROXY ` nor the version 2 signature.
    #[error("not a PROXY protocol header")]
    NotProxyProtocol,
    /// A version 1 line without CRLF within 107 bytes.
    #[error("PROXY v1 header longer than 107 bytes")]
    V1TooLong,
    /// A version 1 line that does not follow the grammar.
    #[error("malformed PROXY v1 header: {0}")]
    V1Malformed(&'static str),
    /// A version 2 version nibble other than 2.
    #[error("PROXY v2 header with version {0}")]
    V2Version(u8),
    /// A version 2 command other than LOCAL (0) or PROXY (1).
    #[error("PROXY v2 header with unknown command {0}")]
    V2Command(u8),
    /// A version 2 family/transport byte that is not defined.
    #[error("PROXY v2 header with unknown address family {0:#04x}")]
    V2Family(u8),
    /// A version 2 address block shorter than its family needs.
    #[error("PROXY v2 header: address block of {len} bytes, family needs {need}")]
    V2Short {
        /// Length given by the header.
        len: usize,
        /// Length the family needs.
        need: usize,
    },
}

/// Parses a PROXY protocol header (v1 or v2) at the start of `buf`.
///
/// * `Ok(Some((header, n)))`: a complete header of `n` bytes; the connection's own
///   data starts at `buf[n..]`.
/// * `Ok(None)`: `buf` is a valid beginning but too short; read more and call again
///   (a v1 header is at most [`V1_MAX_LEN`] bytes, a v2 header 16 + 65535).
/// * `Err(_)`: not a valid header; close the connection.
pub fn parse(buf: &[u8]) -> Result<Option<(ProxyHeader, usize)>, ProxyProtocolError> {
    const V1_PREFIX: &[u8] = b"PROXY ";
    if is_prefix_of(buf, &V2_SIGNATURE) {
        return parse_v2(buf);
    }
    if is_prefix_of(buf, V1_PREFIX) {
        return parse_v1(buf);
    }
    Err(ProxyProtocolError::NotProxyProtocol)
}

/// Whether `buf` and `sig` agree on their common length (so `buf` may still become `sig`).
fn is_prefix_of(buf: &[u8], sig: &[u8]) -> bool {
    let n = buf.len().min(sig.len());
    buf[..n] == sig[..n]
}

fn parse_v1(buf: &[u8]) -> Result<Option<(ProxyHeader, usize)>, ProxyProtocolError> {
    use ProxyProtocolError::{V1Malformed, V1TooLong};
    let window = &buf[..buf.len().min(V1_MAX_LEN)];
    let Some(cr) = window.iter().position(|b| *b == b'\r') else {
        return if buf.len() >= V1_MAX_LEN {
            Err(V1TooLong)
        } else if window.contains(&b'\n') {
            Err(V1Malformed("line feed without carriage return"))
        } else {
            Ok(None)
        };
    };
    match window.get(cr + 1) {
        None if buf.len() >= V1_MAX_LEN => return Err(V1TooLong),
        None => return Ok(None),
        Some(b'\n') => {}
        Some(_) => return Err(V1Malformed("carriage return not followed by line feed")),
    }
    // A line feed before the CRLF is refused whatever follows, as it is when it arrives
    // before the CR does: the answer must not depend on how the bytes were segmented.
    if window[..cr].contains(&b'\n') {
        return Err(V1Malformed("line feed without carriage return"));
    }
    let line = std::str::from_utf8(&window[..cr]).map_err(|_| V1Malformed("not ASCII"))?;
    let used = cr + 2;
    let mut fields = line.split(' ');
    let _proxy = fields.next();
    let family = fields.next().ok_or(V1Malformed("no protocol"))?;
    let header = |addresses| ProxyHeader {
        version: ProxyVersion::V1,
        command: ProxyCommand::Proxy,
        addresses,
    };
    match family {
        // "the receiver must ignore anything presented before the CRLF"
        "UNKNOWN" => return Ok(Some((header(None), used))),
        "TCP4" | "TCP6" => {}
        _ => return Err(V1Malformed("protocol must be TCP4, TCP6 or UNKNOWN")),
    }
    let mut next = || fields.next().ok_or(V1Malformed("missing field"));
    let (src, dst, sport, dport) = (next()?, next()?, next()?, next()?);
    if fields.next().is_some() {
        return Err(V1Malformed("extra field"));
    }
    let (src, dst): (IpAddr, IpAddr) = if family == "TCP4" {
        (
            v1_ip::<Ipv4Addr>(src)?.into(),
            v1_ip::<Ipv4Addr>(dst)?.into(),
        )
    } else {
        (
            v1_ip::<Ipv6Addr>(src)?.into(),
            v1_ip::<Ipv6Addr>(dst)?.into(),
        )
    };
    let addresses = (
        SocketAddr::new(src, v1_port(sport)?),
        SocketAddr::new(dst, v1_port(dport)?),
    );
    Ok(Some((header(Some(addresses)), used)))
}

fn v1_ip<T: std::str::FromStr>(s: &str) -> Result<T, ProxyProtocolError> {
    s.parse()
        .map_err(|_| ProxyProtocolError::V1Malformed("bad address for the protocol"))
}

fn v1_port(s: &str) -> Result<u16, ProxyProtocolError> {
    let err = ProxyProtocolError::V1Malformed("bad port");
    // Decimal digits only, no sign, no leading zero (except "0" itself).
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) || (s.len() > 1 && s.starts_with('0'))
    {
        return Err(err);
    }
    s.parse().map_err(|_| err)
}

fn parse_v2(buf: &[u8]) -> Result<Option<(ProxyHeader, usize)>, ProxyProtocolError> {
    use ProxyProtocolError::{V2Command, V2Family, V2Short, V2Version};
    if buf.len() < V2_FIXED_LEN {
        return Ok(None);
    }
    let ver_cmd = buf[12];
    if ver_cmd >> 4 != 2 {
        return Err(V2Version(ver_cmd >> 4));
    }
    let command = match ver_cmd & 0x0f {
        0 => ProxyCommand::Local,
        1 => ProxyCommand::Proxy,
        c => return Err(V2Command(c)),
    };
    let fam = buf[13];
    let len = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    let need = match fam {
        0x00 => 0,          // UNSPEC
        0x11 | 0x12 => 12,  // TCP/UDP over IPv4
        0x21 | 0x22 => 36,  // TCP/UDP over IPv6
        0x31 | 0x32 => 216, // UNIX stream/datagram
        f => return Err(V2Family(f)),
    };
    // A LOCAL header's address block is to be ignored, whatever its length.
    if command == ProxyCommand::Proxy && len < need {
        return Err(V2Short { len, need });
    }
    let total = V2_FIXED_LEN + len;
    if buf.len() < total {
        return Ok(None);
    }
    let a = &buf[V2_FIXED_LEN..total];
    let addresses = match (command, fam) {
        (ProxyCommand::Proxy, 0x11) => {
            let ip = |o: usize| IpAddr::from([a[o], a[o + 1], a[o + 2], a[o + 3]]);
            let port = |o: usize| u16::from_be_bytes([a[o], a[o + 1]]);
            Some((
                SocketAddr::new(ip(0), port(8)),
                SocketAddr::new(ip(4), port(10)),
            ))
        }
        (ProxyCommand::Proxy, 0x21) => {
            let ip = |o: usize| {
                let mut b = [0u8; 16];
                b.copy_from_slice(&a[o..o + 16]);
                IpAddr::from(b)
            };
            let port = |o: usize| u16::from_be_bytes([a[o], a[o + 1]]);
            Some((
                SocketAddr::new(ip(0), port(32)),
                SocketAddr::new(ip(16), port(34)),
            ))
        }
        // LOCAL, UNSPEC, UDP and UNIX: keep the socket peer. TLVs after the addresses
        // are skipped (they are counted in `len`).
        _ => None,
    };
    Ok(Some((
        ProxyHeader {
            version: ProxyVersion::V2,
            command,
            addresses,
        },
        total,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn v2(cmd: u8, fam: u8, body: &[u8]) -> Vec<u8> {
        let mut b = V2_SIGNATURE.to_vec();
        b.push(cmd);
        b.push(fam);
        b.extend_from_slice(&(body.len() as u16).to_be_bytes());
        b.extend_from_slice(body);
        b
    }

    #[test]
    fn v1_tcp4_and_tcp6() {
        let buf = b"PROXY TCP4 192.0.2.1 198.51.100.1 56324 443\r\nGET /";
        let (h, n) = parse(buf).unwrap().unwrap();
        assert_eq!(h.version, ProxyVersion::V1);
        assert_eq!(h.source(), Some(sa("192.0.2.1:56324")));
        assert_eq!(h.destination(), Some(sa("198.51.100.1:443")));
        assert_eq!(&buf[n..], b"GET /");

        let buf = b"PROXY TCP6 2001:db8::1 2001:db8::2 65535 0\r\n";
        let (h, n) = parse(buf).unwrap().unwrap();
        assert_eq!(h.source(), Some(sa("[2001:db8::1]:65535")));
        assert_eq!(h.destination(), Some(sa("[2001:db8::2]:0")));
        assert_eq!(n, buf.len());
    }

    #[test]
    fn v1_unknown_keeps_the_peer() {
        let (h, n) = parse(b"PROXY UNKNOWN\r\n").unwrap().unwrap();
        assert_eq!((h.source(), n), (None, 15));
        let buf = b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\nX";
        let (h, n) = parse(buf).unwrap().unwrap();
        assert_eq!((h.source(), &buf[n..]), (None, &b"X"[..]));
    }

    #[test]
    fn v1_partial_input_asks_for_more() {
        let full = b"PROXY TCP4 192.0.2.1 198.51.100.1 56324 443\r\n";
        for i in 0..full.len() {
            assert_eq!(parse(&full[..i]), Ok(None), "prefix of {i} bytes");
        }
        assert!(parse(full).unwrap().is_some());
    }

    #[test]
    fn v1_malformed_inputs_are_refused() {
        use ProxyProtocolError::*;
        let bad: &[&[u8]] = &[
            b"PROXY TCP4 192.0.2.1 198.51.100.1 56324\r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.1 56324 443 9\r\n",
            b"PROXY TCP4 2001:db8::1 198.51.100.1 1 2\r\n",
            b"PROXY TCP6 192.0.2.1 2001:db8::2 1 2\r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.1 65536 443\r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.1 +1 443\r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.1 01 443\r\n",
            b"PROXY TCP4  192.0.2.1 198.51.100.1 1 443\r\n",
            b"PROXY UDP4 192.0.2.1 198.51.100.1 1 443\r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.1 1 443\rX",
            b"PROXY TCP4 192.0.2.1 198.51.100.1 1 443\n",
            b"PROXY \xff\r\n",
        ];
        for b in bad {
            assert!(
                matches!(parse(b), Err(V1Malformed(_))),
                "{:?}",
                String::from_utf8_lossy(b)
            );
        }
        let long = [b"PROXY ".as_slice(), &[b'A'; 200]].concat();
        assert_eq!(parse(&long), Err(V1TooLong));
        assert_eq!(parse(b"GET / HTTP/1.1\r\n"), Err(NotProxyProtocol));
        assert_eq!(parse(b"PROXX"), Err(NotProxyProtocol));
        assert_eq!(parse(b""), Ok(None));
    }

    #[test]
    fn v2_tcp4_with_tlvs_and_tcp6() {
        let mut body = vec![192, 0, 2, 1, 198, 51, 100, 1];
        body.extend_from_slice(&56324u16.to_be_bytes());
        body.extend_from_slice(&443u16.to_be_bytes());
        body.extend_from_slice(&[0x04, 0x00, 0x01, 0xAA]); // a NOOP TLV
        let mut buf = v2(0x21, 0x11, &body);
        buf.extend_from_slice(b"DATA");
        let (h, n) = parse(&buf).unwrap().unwrap();
        assert_eq!(h.version, ProxyVersion::V2);
        assert_eq!(h.source(), Some(sa("192.0.2.1:56324")));
        assert_eq!(h.destination(), Some(sa("198.51.100.1:443")));
        assert_eq!(&buf[n..], b"DATA");

        let src: Ipv6Addr = "2001:db8::1".parse().unwrap();
        let dst: Ipv6Addr = "2001:db8::2".parse().unwrap();
        let mut body = src.octets().to_vec();
        body.extend_from_slice(&dst.octets());
        body.extend_from_slice(&[0x12, 0x34, 0x01, 0xbb]);
        let buf = v2(0x21, 0x21, &body);
        let (h, n) = parse(&buf).unwrap().unwrap();
        assert_eq!(h.source(), Some(sa("[2001:db8::1]:4660")));
        assert_eq!(h.destination(), Some(sa("[2001:db8::2]:443")));
        assert_eq!(n, buf.len());
    }

    #[test]
    fn v2_local_unspec_udp_and_unix_keep_the_peer() {
        // LOCAL with an address block: ignored.
        let (h, n) = parse(&v2(0x20, 0x11, &[0; 12])).unwrap().unwrap();
        assert_eq!((h.command, h.source(), n), (ProxyCommand::Local, None, 28));
        let (h, _) = parse(&v2(0x20, 0x00, &[])).unwrap().unwrap();
        assert_eq!(h.source(), None);
        let (h, _) = parse(&v2(0x21, 0x00, &[])).unwrap().unwrap();
        assert_eq!((h.command, h.source()), (ProxyCommand::Proxy, None));
        let (h, _) = parse(&v2(0x21, 0x12, &[1; 12])).unwrap().unwrap();
        assert_eq!(h.source(), None);
        let (h, _) = parse(&v2(0x21, 0x31, &[0; 216])).unwrap().unwrap();
        assert_eq!(h.source(), None);
    }

    #[test]
    fn v2_partial_input_asks_for_more() {
        let mut body = vec![192, 0, 2, 1, 198, 51, 100, 1, 0, 1, 0, 2];
        body.extend_from_slice(&[0x04, 0x00, 0x00]);
        let buf = v2(0x21, 0x11, &body);
        for i in 0..buf.len() {
            assert_eq!(parse(&buf[..i]), Ok(None), "prefix of {i} bytes");
        }
        assert!(parse(&buf).unwrap().is_some());
    }

    #[test]
    fn v2_malformed_inputs_are_refused() {
        use ProxyProtocolError::*;
        assert_eq!(parse(&v2(0x11, 0x11, &[0; 12])), Err(V2Version(1)));
        assert_eq!(parse(&v2(0x22, 0x11, &[0; 12])), Err(V2Command(2)));
        assert_eq!(parse(&v2(0x21, 0x41, &[0; 12])), Err(V2Family(0x41)));
        assert_eq!(
            parse(&v2(0x21, 0x11, &[0; 8])),
            Err(V2Short { len: 8, need: 12 })
        );
        assert_eq!(
            parse(&v2(0x21, 0x21, &[0; 12])),
            Err(V2Short { len: 12, need: 36 })
        );
        let mut bad_sig = V2_SIGNATURE.to_vec();
        bad_sig[11] = b'X';
        assert_eq!(parse(&bad_sig), Err(NotProxyProtocol));
    }
}
