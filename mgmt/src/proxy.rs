//! Who a request comes from when the API sits behind reverse proxies: the peer address,
//! unless the peer is a trusted proxy (`http.trusted_proxies`), in which case the client is
//! the nearest address in `Forwarded` (RFC 7239 `for=`) or else `X-Forwarded-For` that is not
//! itself a trusted proxy. Headers from any other peer are ignored: anyone can send them.

use std::net::{IpAddr, SocketAddr};
use warp::http::HeaderMap;

/// An address range, `192.0.2.0/24` or `2001:db8::/32` (a bare address is its own /32 or
/// /128).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    bits: u8,
}

impl std::str::FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Cidr, String> {
        let (addr, bits) = match s.trim().split_once('/') {
            Some((a, b)) => (a, Some(b)),
            None => (s.trim(), None),
        };
        let net: IpAddr = addr
            .parse()
            .map_err(|_| format!("`{s}` is not an address range (like 10.0.0.0/8 or 2001:db8::/32)"))?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let bits = match bits {
            None => max,
            Some(b) => b
                .parse::<u8>()
                .ok()
                .filter(|b| *b <= max)
                .ok_or_else(|| format!("`{s}`: the prefix length must be 0 to {max}"))?,
        };
        Ok(Cidr { net, bits })
    }
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.net, ip.to_canonical()) {
            (IpAddr::V4(n), IpAddr::V4(a)) => prefix_eq(u32::from(n).into(), u32::from(a).into(), self.bits, 32),
            (IpAddr::V6(n), IpAddr::V6(a)) => prefix_eq(u128::from(n), u128::from(a), self.bits, 128),
            _ => false,
        }
    }
}

fn prefix_eq(a: u128, b: u128, bits: u8, width: u32) -> bool {
    let shift = width - u32::from(bits);
    shift >= width || (a >> shift) == (b >> shift)
}

/// The client's address: `peer`, or when `peer` is a trusted proxy, the forwarded client.
pub fn client(trusted: &[Cidr], peer: Option<SocketAddr>, headers: &HeaderMap) -> Option<SocketAddr> {
    let p = peer?;
    let is_trusted = |ip: IpAddr| trusted.iter().any(|c| c.contains(ip));
    if !is_trusted(p.ip()) {
        return Some(p);
    }
    let hops = forwarded(headers).or_else(|| x_forwarded_for(headers));
    let Some(hops) = hops else { return Some(p) };
    // From the nearest hop back: the first address that is not one of our proxies.
    let client = hops
        .iter()
        .rev()
        .copied()
        .find(|ip| !is_trusted(*ip))
        .or_else(|| hops.first().copied());
    Some(client.map_or(p, |ip| SocketAddr::new(ip, 0)))
}

/// The `for=` addresses of every `Forwarded` header, in order (`None` when there is none or
/// one cannot be read: then the header is not relied on).
fn forwarded(headers: &HeaderMap) -> Option<Vec<IpAddr>> {
    let mut out = Vec::new();
    for v in headers.get_all("forwarded") {
        for element in v.to_str().ok()?.split(',') {
            for pair in element.split(';') {
                let Some((k, v)) = pair.trim().split_once('=') else {
                    continue;
                };
                if k.trim().eq_ignore_ascii_case("for") {
                    out.push(node(v.trim().trim_matches('"'))?);
                }
            }
        }
    }
    (!out.is_empty()).then_some(out)
}

fn x_forwarded_for(headers: &HeaderMap) -> Option<Vec<IpAddr>> {
    let mut out = Vec::new();
    for v in headers.get_all("x-forwarded-for") {
        for a in v.to_str().ok()?.split(',') {
            out.push(node(a.trim())?);
        }
    }
    (!out.is_empty()).then_some(out)
}

/// An address with an optional port: `192.0.2.1`, `192.0.2.1:80`, `[2001:db8::1]:80`, `::1`.
fn node(s: &str) -> Option<IpAddr> {
    if let Ok(ip) = s.parse() {
        return Some(ip);
    }
    if let Some(rest) = s.strip_prefix('[') {
        return rest.split(']').next()?.parse().ok();
    }
    s.parse::<SocketAddr>().ok().map(|a| a.ip())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, v.parse().expect("value"));
        }
        h
    }

    fn cidrs(list: &[&str]) -> Vec<Cidr> {
        list.iter().map(|c| c.parse().expect("cidr")).collect()
    }

    #[test]
    fn ranges_parse_and_match() {
        let c: Cidr = "10.0.0.0/8".parse().expect("v4");
        assert!(c.contains("10.200.1.1".parse().expect("ip")));
        assert!(c.contains("::ffff:10.1.1.1".parse().expect("mapped")));
        assert!(!c.contains("11.0.0.1".parse().expect("ip")));
        let c: Cidr = "2001:db8::/32".parse().expect("v6");
        assert!(c.contains("2001:db8:1::5".parse().expect("ip")));
        assert!(!c.contains("2001:db9::5".parse().expect("ip")));
        assert!("0.0.0.0/0"
            .parse::<Cidr>()
            .expect("all")
            .contains("8.8.8.8".parse().expect("ip")));
        assert!("127.0.0.1"
            .parse::<Cidr>()
            .expect("one")
            .contains("127.0.0.1".parse().expect("ip")));
        assert!("10.0.0.0/33".parse::<Cidr>().is_err() && "proxy".parse::<Cidr>().is_err());
    }

    #[test]
    fn forwarded_addresses_are_believed_only_from_trusted_proxies() {
        let trusted = cidrs(&["10.0.0.0/8"]);
        let peer = |s: &str| Some(SocketAddr::new(s.parse().expect("ip"), 5000));
        let xff = headers(&[("x-forwarded-for", "203.0.113.9, 10.0.0.7")]);
        let got = |p: &str, h: &HeaderMap| client(&trusted, peer(p), h).map(|a| a.ip().to_string());
        assert_eq!(
            got("10.0.0.1", &xff).as_deref(),
            Some("203.0.113.9"),
            "nearest untrusted hop"
        );
        assert_eq!(
            got("198.51.100.1", &xff).as_deref(),
            Some("198.51.100.1"),
            "untrusted peer"
        );
        // A client cannot slip an address in front of the one the proxy saw.
        let spoof = headers(&[("x-forwarded-for", "1.2.3.4, 203.0.113.9")]);
        assert_eq!(got("10.0.0.1", &spoof).as_deref(), Some("203.0.113.9"));
        let fwd = headers(&[
            ("forwarded", "for=\"[2001:db8::1]:4711\";proto=https"),
            ("x-forwarded-for", "9.9.9.9"),
        ]);
        assert_eq!(got("10.0.0.1", &fwd).as_deref(), Some("2001:db8::1"), "Forwarded first");
        let junk = headers(&[("x-forwarded-for", "not an address")]);
        assert_eq!(
            got("10.0.0.1", &junk).as_deref(),
            Some("10.0.0.1"),
            "unreadable: the peer"
        );
        assert_eq!(got("10.0.0.1", &HeaderMap::new()).as_deref(), Some("10.0.0.1"));
    }
}
