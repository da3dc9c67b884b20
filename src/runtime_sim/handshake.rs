//! The runtime side of the HTTP/1.1 upgrade to SPDY (protocol.md §2.2–§2.4), as the kubelet
//! streaming library ≥ 1.35 answers it: sub-protocol negotiation, then the upgrade-header check.
//! Pure functions over the request headers; the HTTP front-end turns a [`Refusal`] into a
//! response.

use http::header::{CONNECTION, UPGRADE};
use http::{HeaderMap, StatusCode};

/// `X-Stream-Protocol-Version`: the client's offer and the server's choice.
pub const HEADER_PROTOCOL_VERSION: &str = "X-Stream-Protocol-Version";
/// `X-Accepted-Stream-Protocol-Versions`: the server's list on a 403.
pub const HEADER_ACCEPTED_PROTOCOL_VERSIONS: &str = "X-Accepted-Stream-Protocol-Versions";
/// The HTTP upgrade token of SPDY.
pub const SPDY_31: &str = "SPDY/3.1";

/// Remote command protocols the kubelet lib accepts over SPDY, in its order. No v5.
pub const REMOTE_COMMAND_PROTOCOLS: [&str; 4] = [
    "v4.channel.k8s.io",
    "v3.channel.k8s.io",
    "v2.channel.k8s.io",
    "channel.k8s.io",
];
/// Port-forward protocols the kubelet lib accepts over SPDY.
pub const PORT_FORWARD_PROTOCOLS: [&str; 1] = ["portforward.k8s.io"];

/// An HTTP error answer, as Go's `http.Error` writes it: `text/plain; charset=utf-8`,
/// `X-Content-Type-Options: nosniff`, the body text followed by `\n`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// Response status.
    pub status: StatusCode,
    /// Extra response header lines, in order.
    pub headers: Vec<(&'static str, String)>,
    /// Body without the trailing newline.
    pub text: String,
}

impl Refusal {
    fn new(status: StatusCode, text: String) -> Self {
        Refusal {
            status,
            headers: Vec::new(),
            text,
        }
    }
}

/// Picks the first protocol of the client's offer, in client order, that the server supports.
///
/// The offer is every `X-Stream-Protocol-Version` line, each split on commas, entries trimmed
/// of spaces, empty ones dropped. A missing or empty offer is a 400 (≥ 1.35), no common
/// protocol a 403 listing the server's protocols.
pub fn negotiate(headers: &HeaderMap, server: &[&'static str]) -> Result<&'static str, Refusal> {
    let lines: Vec<String> = headers
        .get_all(HEADER_PROTOCOL_VERSION)
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .collect();
    if lines.is_empty() {
        return Err(Refusal::new(
            StatusCode::BAD_REQUEST,
            format!(
                "unable to upgrade: header {HEADER_PROTOCOL_VERSION} does not exist in request \
                 with {} headers",
                go_header_count(headers)
            ),
        ));
    }
    let offered: Vec<&str> = lines
        .iter()
        .flat_map(|line| line.split(','))
        .map(|p| p.trim_matches(' '))
        .filter(|p| !p.is_empty())
        .collect();
    if offered.is_empty() {
        return Err(Refusal::new(
            StatusCode::BAD_REQUEST,
            format!(
                "unable to upgrade: header {HEADER_PROTOCOL_VERSION} contains {}, but no valid \
                 protocols",
                go_list(&lines)
            ),
        ));
    }
    for p in &offered {
        if let Some(chosen) = server.iter().find(|s| **s == *p) {
            return Ok(chosen);
        }
    }
    let mut refusal = Refusal::new(
        StatusCode::FORBIDDEN,
        format!(
            "unable to upgrade: unable to negotiate protocol: client supports {}, server accepts \
             {}",
            go_list(&offered),
            go_list(server)
        ),
    );
    refusal.headers = server
        .iter()
        .map(|s| (HEADER_ACCEPTED_PROTOCOL_VERSIONS, (*s).to_owned()))
        .collect();
    Err(refusal)
}

/// The upgrader's check, made after negotiation: the first `Connection` line must contain
/// `upgrade` and the first `Upgrade` line `spdy/3.1` (lower-cased substring checks).
pub fn check_upgrade_headers(headers: &HeaderMap) -> Result<(), Refusal> {
    let first_lower = |name| {
        headers
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).to_ascii_lowercase())
            .unwrap_or_default()
    };
    if first_lower(CONNECTION).contains("upgrade")
        && first_lower(UPGRADE).contains(&SPDY_31.to_ascii_lowercase())
    {
        return Ok(());
    }
    Err(Refusal::new(
        StatusCode::BAD_REQUEST,
        format!(
            "unable to upgrade: missing upgrade headers in request: {}",
            go_header_dump(headers)
        ),
    ))
}

/// Whether the request asks for a WebSocket (`Upgrade` equal to `websocket`, every
/// `Connection` line containing `upgrade`), as `wsstream.IsWebSocketRequest` decides.
pub fn is_websocket_request(headers: &HeaderMap) -> bool {
    let upgrade_is_ws = headers
        .get(UPGRADE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
    upgrade_is_ws
        && headers.get_all(CONNECTION).iter().any(|v| {
            String::from_utf8_lossy(v.as_bytes())
                .to_ascii_lowercase()
                .contains("upgrade")
        })
}

/// Go's `len(req.Header)` on the server side: distinct names, without `Host` and
/// `Transfer-Encoding`, which Go moves out of the map.
fn go_header_count(headers: &HeaderMap) -> usize {
    headers
        .keys()
        .filter(|k| !is_removed_by_go(k.as_str()))
        .count()
}

fn is_removed_by_go(name: &str) -> bool {
    name.eq_ignore_ascii_case("host") || name.eq_ignore_ascii_case("transfer-encoding")
}

/// Go's `%v` of a `[]string`: `[a b c]`.
fn go_list<S: AsRef<str>>(items: &[S]) -> String {
    let joined: Vec<&str> = items.iter().map(AsRef::as_ref).collect();
    format!("[{}]", joined.join(" "))
}

/// Go's `%#v` of an `http.Header`: `http.Header{"A-B":[]string{"x", "y"}, ...}`, keys in
/// canonical form and sorted.
fn go_header_dump(headers: &HeaderMap) -> String {
    let mut keys: Vec<(String, &str)> = headers
        .keys()
        .filter(|k| !is_removed_by_go(k.as_str()))
        .map(|k| (canonical_key(k.as_str()), k.as_str()))
        .collect();
    keys.sort();
    let entries: Vec<String> = keys
        .iter()
        .map(|(canonical, name)| {
            let values: Vec<String> = headers
                .get_all(*name)
                .iter()
                .map(|v| go_quote(v.as_bytes()))
                .collect();
            format!(
                "{}:[]string{{{}}}",
                go_quote(canonical.as_bytes()),
                values.join(", ")
            )
        })
        .collect();
    format!("http.Header{{{}}}", entries.join(", "))
}

/// `textproto.CanonicalMIMEHeaderKey` for the token names hyper accepts: upper case at the
/// start and after each `-`, lower case elsewhere.
fn canonical_key(name: &str) -> String {
    let mut upper = true;
    name.chars()
        .map(|c| {
            let out = if upper {
                c.to_ascii_uppercase()
            } else {
                c.to_ascii_lowercase()
            };
            upper = c == '-';
            out
        })
        .collect()
}

/// Go's `strconv.Quote` of a byte string: `"`-delimited, Go escapes, invalid UTF-8 as `\xNN`.
fn go_quote(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() + 2);
    out.push('"');
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\x07' => out.push_str("\\a"),
                '\x08' => out.push_str("\\b"),
                '\x0c' => out.push_str("\\f"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                '\x0b' => out.push_str("\\v"),
                c if (c as u32) < 0x20 || c == '\x7f' => {
                    out.push_str(&format!("\\x{:02x}", c as u32));
                }
                c if c.is_control() => {
                    let n = c as u32;
                    if n <= 0xffff {
                        out.push_str(&format!("\\u{n:04x}"));
                    } else {
                        out.push_str(&format!("\\U{n:08x}"));
                    }
                }
                c => out.push(c),
            }
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn first_client_protocol_supported_by_the_server_wins() {
        let h = headers(&[
            (HEADER_PROTOCOL_VERSION, "v5.channel.k8s.io"),
            (HEADER_PROTOCOL_VERSION, "v2.channel.k8s.io"),
            (HEADER_PROTOCOL_VERSION, "v4.channel.k8s.io"),
        ]);
        assert_eq!(
            negotiate(&h, &REMOTE_COMMAND_PROTOCOLS),
            Ok("v2.channel.k8s.io")
        );
    }

    #[test]
    fn comma_separated_offers_are_split_and_trimmed() {
        let h = headers(&[(
            HEADER_PROTOCOL_VERSION,
            "v5.channel.k8s.io , ,v4.channel.k8s.io",
        )]);
        assert_eq!(
            negotiate(&h, &REMOTE_COMMAND_PROTOCOLS),
            Ok("v4.channel.k8s.io")
        );
    }

    #[test]
    fn no_common_protocol_is_403_listing_the_server_protocols() {
        let h = headers(&[(HEADER_PROTOCOL_VERSION, "v5.channel.k8s.io,foo")]);
        let r = negotiate(&h, &REMOTE_COMMAND_PROTOCOLS).unwrap_err();
        assert_eq!(r.status, StatusCode::FORBIDDEN);
        assert_eq!(
            r.text,
            "unable to upgrade: unable to negotiate protocol: client supports \
             [v5.channel.k8s.io foo], server accepts [v4.channel.k8s.io v3.channel.k8s.io \
             v2.channel.k8s.io channel.k8s.io]"
        );
        let accepted: Vec<&str> = r.headers.iter().map(|(_, v)| v.as_str()).collect();
        assert_eq!(accepted, REMOTE_COMMAND_PROTOCOLS);
        assert!(
            r.headers
                .iter()
                .all(|(n, _)| *n == HEADER_ACCEPTED_PROTOCOL_VERSIONS)
        );
    }

    #[test]
    fn missing_protocol_header_is_400_counting_headers_without_host() {
        let h = headers(&[
            ("host", "x"),
            ("connection", "Upgrade"),
            ("upgrade", "SPDY/3.1"),
            ("x-a", "1"),
            ("x-a", "2"),
        ]);
        let r = negotiate(&h, &PORT_FORWARD_PROTOCOLS).unwrap_err();
        assert_eq!(r.status, StatusCode::BAD_REQUEST);
        assert_eq!(
            r.text,
            "unable to upgrade: header X-Stream-Protocol-Version does not exist in request \
             with 3 headers"
        );
    }

    #[test]
    fn empty_protocol_header_is_400_quoting_the_values() {
        let h = headers(&[
            (HEADER_PROTOCOL_VERSION, ""),
            (HEADER_PROTOCOL_VERSION, ", ,"),
        ]);
        let r = negotiate(&h, &PORT_FORWARD_PROTOCOLS).unwrap_err();
        assert_eq!(r.status, StatusCode::BAD_REQUEST);
        assert_eq!(
            r.text,
            "unable to upgrade: header X-Stream-Protocol-Version contains [ , ,], but no valid \
             protocols"
        );
    }

    #[test]
    fn upgrade_headers_are_checked_as_lower_case_substrings() {
        let ok = headers(&[
            ("connection", "keep-alive, UPGRADE"),
            ("upgrade", "spdy/3.1"),
        ]);
        assert!(check_upgrade_headers(&ok).is_ok());
        let bad = headers(&[
            ("connection", "close"),
            ("upgrade", "SPDY/3.1"),
            ("host", "h"),
            ("user-agent", "a\"b"),
            ("x-stream-protocol-version", "v4.channel.k8s.io"),
            ("x-stream-protocol-version", "v3.channel.k8s.io"),
        ]);
        let r = check_upgrade_headers(&bad).unwrap_err();
        assert_eq!(r.status, StatusCode::BAD_REQUEST);
        assert_eq!(
            r.text,
            "unable to upgrade: missing upgrade headers in request: http.Header{\
             \"Connection\":[]string{\"close\"}, \"Upgrade\":[]string{\"SPDY/3.1\"}, \
             \"User-Agent\":[]string{\"a\\\"b\"}, \"X-Stream-Protocol-Version\":[]string{\
             \"v4.channel.k8s.io\", \"v3.channel.k8s.io\"}}"
        );
    }

    #[test]
    fn websocket_requests_are_recognised() {
        assert!(is_websocket_request(&headers(&[
            ("upgrade", "WebSocket"),
            ("connection", "Upgrade")
        ])));
        assert!(!is_websocket_request(&headers(&[
            ("upgrade", "SPDY/3.1"),
            ("connection", "Upgrade")
        ])));
        assert!(!is_websocket_request(&headers(&[("upgrade", "websocket")])));
    }

    #[test]
    fn go_quote_escapes_like_strconv_quote() {
        assert_eq!(
            go_quote(b"a\tb\x01\xff\xc3\xa9"),
            "\"a\\tb\\x01\\xff\u{e9}\""
        );
    }
}
