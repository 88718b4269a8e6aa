//! NBD URIs: parsing `nbd://` and `nbd+unix://` and writing them back.

use std::ffi::OsStr;
use std::fmt::{self, Write as _};
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};

use super::DEFAULT_PORT;

/// The URI forms `info` accepts.
const URL_FORMS: &str = "accepted forms are nbd://HOST[:PORT][/NAME] (port 10809 by default; \
     IPv6 hosts in brackets) and nbd+unix:///NAME?socket=PATH";

/// Where an NBD server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum NbdTarget {
    /// TCP; `host` is a name or an address (IPv6 without brackets).
    Tcp { host: String, port: u16 },
    /// A Unix socket.
    Unix { socket: PathBuf },
}

/// A parsed NBD URI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct NbdUrl {
    /// The server.
    pub(super) target: NbdTarget,
    /// The export, if the URI names one (percent-decoded).
    pub(super) export: Option<String>,
}

impl NbdUrl {
    /// The URI for export `name` on this URL's server.
    pub(super) fn with_export(&self, name: &str) -> String {
        match &self.target {
            NbdTarget::Tcp { host, port } => tcp_uri(host, *port, Some(name)),
            NbdTarget::Unix { socket } => unix_uri(socket, Some(name)),
        }
    }
}

impl fmt::Display for NbdUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let export = self.export.as_deref();
        match &self.target {
            NbdTarget::Tcp { host, port } => f.write_str(&tcp_uri(host, *port, export)),
            NbdTarget::Unix { socket } => f.write_str(&unix_uri(socket, export)),
        }
    }
}

/// What is wrong with a URL.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
enum UrlProblem {
    /// No `scheme://`.
    #[error("no scheme")]
    NoScheme,
    /// `nbds` and friends.
    #[error("TLS ({scheme}) is not supported")]
    Tls { scheme: String },
    /// Anything but `nbd` and `nbd+unix`.
    #[error("unknown scheme {scheme:?}")]
    UnknownScheme { scheme: String },
    /// `nbd:///...`.
    #[error("no host")]
    NoHost,
    /// `nbd+unix://host/...`.
    #[error("nbd+unix takes no host (write nbd+unix:///NAME?socket=PATH)")]
    UnixHost,
    /// `user@host`.
    #[error("user names are not supported")]
    UserInfo,
    /// `[::1` or an IPv6 address without brackets.
    #[error("bad host {host:?} (IPv6 addresses go in brackets, as in nbd://[::1]:10809)")]
    BadHost { host: String },
    /// Not 1..=65535.
    #[error("bad port {port:?}: must be a number from 1 to 65535")]
    BadPort { port: String },
    /// A `%` not followed by two hex digits, or bytes that are not UTF-8.
    #[error("bad percent-encoding in {part:?}")]
    BadEncoding { part: String },
    /// `nbd://` with a query.
    #[error("nbd:// takes no query (socket= belongs to nbd+unix://)")]
    TcpQuery,
    /// A query parameter other than `socket`.
    #[error("unknown query parameter {param:?} (only socket= is understood)")]
    UnknownParam { param: String },
    /// `nbd+unix` without `socket=`.
    #[error("nbd+unix needs ?socket=PATH")]
    NoSocket,
    /// `#...`.
    #[error("fragments (#...) are not allowed")]
    Fragment,
}

/// A URL `info` cannot use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad NBD URL {url:?}: {problem}; {URL_FORMS}")]
pub(super) struct UrlError {
    /// The URL as given.
    url: String,
    /// What is wrong with it.
    problem: UrlProblem,
}

/// Parses `nbd://HOST[:PORT][/NAME]` and `nbd+unix:///NAME?socket=PATH`
/// (the NBD URI forms without TLS). An empty NAME is no name.
pub(super) fn parse_url(url: &str) -> Result<NbdUrl, UrlError> {
    let fail = |problem| UrlError {
        url: url.to_owned(),
        problem,
    };
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| fail(UrlProblem::NoScheme))?;
    let scheme = scheme.to_ascii_lowercase();
    let unix = match scheme.as_str() {
        "nbd" => false,
        "nbd+unix" => true,
        s if s.starts_with("nbds") => return Err(fail(UrlProblem::Tls { scheme })),
        _ => return Err(fail(UrlProblem::UnknownScheme { scheme })),
    };
    if rest.contains('#') {
        return Err(fail(UrlProblem::Fragment));
    }
    let (rest, query) = match rest.split_once('?') {
        Some((r, q)) => (r, Some(q)),
        None => (rest, None),
    };
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let export = if path.is_empty() {
        None
    } else {
        let bytes = percent_decode(path).ok_or_else(|| {
            fail(UrlProblem::BadEncoding {
                part: path.to_owned(),
            })
        })?;
        Some(String::from_utf8(bytes).map_err(|_| {
            fail(UrlProblem::BadEncoding {
                part: path.to_owned(),
            })
        })?)
    };
    let target = if unix {
        if !authority.is_empty() {
            return Err(fail(UrlProblem::UnixHost));
        }
        let mut socket = None;
        for param in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (key, value) = param.split_once('=').unwrap_or((param, ""));
            if key != "socket" {
                return Err(fail(UrlProblem::UnknownParam {
                    param: key.to_owned(),
                }));
            }
            let bytes = percent_decode(value).ok_or_else(|| {
                fail(UrlProblem::BadEncoding {
                    part: value.to_owned(),
                })
            })?;
            socket = Some(PathBuf::from(OsStr::from_bytes(&bytes)));
        }
        match socket {
            Some(socket) if !socket.as_os_str().is_empty() => NbdTarget::Unix { socket },
            _ => return Err(fail(UrlProblem::NoSocket)),
        }
    } else {
        if query.is_some() {
            return Err(fail(UrlProblem::TcpQuery));
        }
        let (host, port) = split_host_port(authority).map_err(fail)?;
        NbdTarget::Tcp { host, port }
    };
    Ok(NbdUrl { target, export })
}

/// `host`, `host:port`, `[v6]`, `[v6]:port`.
fn split_host_port(authority: &str) -> Result<(String, u16), UrlProblem> {
    if authority.contains('@') {
        return Err(UrlProblem::UserInfo);
    }
    let bad_host = || UrlProblem::BadHost {
        host: authority.to_owned(),
    };
    let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
        let (host, after) = bracketed.split_once(']').ok_or_else(bad_host)?;
        let port = match after {
            "" => None,
            _ => Some(after.strip_prefix(':').ok_or_else(bad_host)?),
        };
        if host.is_empty() || host.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(bad_host());
        }
        (host, port)
    } else {
        match authority.split_once(':') {
            Some((_, p)) if p.contains(':') => return Err(bad_host()),
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err(UrlProblem::NoHost);
    }
    let port = match port {
        None => DEFAULT_PORT,
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n > 0 && p.bytes().all(|b| b.is_ascii_digit()) => n,
            _ => return Err(UrlProblem::BadPort { port: p.to_owned() }),
        },
    };
    Ok((host.to_owned(), port))
}

/// Decodes `%XX` escapes; `None` for a `%` without two hex digits.
fn percent_decode(text: &str) -> Option<Vec<u8>> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return None;
            }
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Some(out)
}

/// Escapes everything but unreserved characters and `/`, so names and
/// socket paths with spaces, `?`, `&` or `%` survive the round trip.
fn percent_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for &b in bytes {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(char::from(b));
        } else {
            // Writing to a String cannot fail.
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// `nbd://HOST:PORT[/NAME]`, bracketing IPv6 hosts.
pub(super) fn tcp_uri(host: &str, port: u16, export: Option<&str>) -> String {
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_owned()
    };
    match export {
        Some(name) => format!("nbd://{host}:{port}/{}", percent_encode(name.as_bytes())),
        None => format!("nbd://{host}:{port}"),
    }
}

/// `nbd+unix:///NAME?socket=PATH`.
pub(super) fn unix_uri(socket: &Path, export: Option<&str>) -> String {
    format!(
        "nbd+unix:///{}?socket={}",
        percent_encode(export.unwrap_or("").as_bytes()),
        percent_encode(socket.as_os_str().as_bytes())
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An input and a check of the problem it must be rejected with.
    type Case<P> = (&'static str, fn(&P) -> bool);

    fn tcp(host: &str, port: u16, export: Option<&str>) -> NbdUrl {
        NbdUrl {
            target: NbdTarget::Tcp {
                host: host.into(),
                port,
            },
            export: export.map(Into::into),
        }
    }

    #[test]
    fn urls_parse() {
        assert_eq!(
            parse_url("nbd://127.0.0.1:10809/disk"),
            Ok(tcp("127.0.0.1", 10809, Some("disk")))
        );
        assert_eq!(
            parse_url("nbd://example.org"),
            Ok(tcp("example.org", 10809, None))
        );
        assert_eq!(
            parse_url("nbd://example.org/"),
            Ok(tcp("example.org", 10809, None))
        );
        assert_eq!(
            parse_url("NBD://h:1/a/b%20c"),
            Ok(tcp("h", 1, Some("a/b c")))
        );
        assert_eq!(
            parse_url("nbd://[::1]:2000/x"),
            Ok(tcp("::1", 2000, Some("x")))
        );
        assert_eq!(
            parse_url("nbd://[fe80::1]"),
            Ok(tcp("fe80::1", 10809, None))
        );
        assert_eq!(
            parse_url("nbd+unix:///disk?socket=/tmp/nbd.sock"),
            Ok(NbdUrl {
                target: NbdTarget::Unix {
                    socket: "/tmp/nbd.sock".into()
                },
                export: Some("disk".into()),
            })
        );
        assert_eq!(
            parse_url("nbd+unix://?socket=/tmp/a%26b%20c.sock"),
            Ok(NbdUrl {
                target: NbdTarget::Unix {
                    socket: "/tmp/a&b c.sock".into()
                },
                export: None,
            })
        );
    }

    #[test]
    fn bad_urls_name_the_url_and_the_forms() {
        let cases: [Case<UrlProblem>; 18] = [
            ("127.0.0.1:10809", |p| *p == UrlProblem::NoScheme),
            ("http://h/x", |p| {
                matches!(p, UrlProblem::UnknownScheme { .. })
            }),
            ("nbds://h/x", |p| matches!(p, UrlProblem::Tls { .. })),
            ("nbds+unix:///x?socket=/s", |p| {
                matches!(p, UrlProblem::Tls { .. })
            }),
            ("nbd:///disk", |p| *p == UrlProblem::NoHost),
            ("nbd://:10809/disk", |p| *p == UrlProblem::NoHost),
            ("nbd://u@h/disk", |p| *p == UrlProblem::UserInfo),
            ("nbd://::1/disk", |p| {
                matches!(p, UrlProblem::BadHost { .. })
            }),
            ("nbd://[::1/disk", |p| {
                matches!(p, UrlProblem::BadHost { .. })
            }),
            ("nbd://[nothost]/d", |p| {
                matches!(p, UrlProblem::BadHost { .. })
            }),
            ("nbd://h:0/d", |p| matches!(p, UrlProblem::BadPort { .. })),
            ("nbd://h:65536/d", |p| {
                matches!(p, UrlProblem::BadPort { .. })
            }),
            ("nbd://h:/d", |p| matches!(p, UrlProblem::BadPort { .. })),
            ("nbd://h:+80/d", |p| matches!(p, UrlProblem::BadPort { .. })),
            ("nbd://h/%zz", |p| {
                matches!(p, UrlProblem::BadEncoding { .. })
            }),
            ("nbd://h/d?socket=/s", |p| *p == UrlProblem::TcpQuery),
            ("nbd+unix://h/d?socket=/s", |p| *p == UrlProblem::UnixHost),
            ("nbd+unix:///d?sock=/s", |p| {
                matches!(p, UrlProblem::UnknownParam { .. })
            }),
        ];
        for (url, expected) in cases {
            let err = parse_url(url).unwrap_err();
            assert!(expected(&err.problem), "{url}: {:?}", err.problem);
            let msg = err.to_string();
            assert!(msg.contains(&format!("{url:?}")), "{msg}");
            assert!(msg.contains("nbd://HOST[:PORT][/NAME]") && msg.contains("nbd+unix:///"));
        }
        for url in ["nbd+unix:///d", "nbd+unix:///d?socket=", "nbd://h/d#frag"] {
            assert!(parse_url(url).is_err(), "{url}");
        }
    }

    #[test]
    fn uris_round_trip_through_the_parser() {
        let weird = "a b/c?d&e%f";
        let uri = tcp_uri("::1", 10809, Some(weird));
        assert_eq!(uri, "nbd://[::1]:10809/a%20b/c%3Fd%26e%25f");
        assert_eq!(parse_url(&uri), Ok(tcp("::1", 10809, Some(weird))));
        let uri = unix_uri(Path::new("/tmp/x y&z.sock"), Some(weird));
        let parsed = parse_url(&uri).unwrap();
        assert_eq!(
            parsed.target,
            NbdTarget::Unix {
                socket: "/tmp/x y&z.sock".into()
            }
        );
        assert_eq!(parsed.export.as_deref(), Some(weird));
        assert_eq!(parsed.to_string(), uri);
    }
}
