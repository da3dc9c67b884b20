//! WebSocket sub-protocol names and the selection rule for exec, attach and the port-forward
//! tunnel (protocol.md §4.1, §4.2, §7.2).
//!
//! A client offers its sub-protocols in one or more header lines, each a comma-separated list,
//! most preferred first:
//!
//! ```text
//! Sec-WebSocket-Protocol: v5.channel.k8s.io, v4.channel.k8s.io     (kube-rs)
//! Sec-WebSocket-Protocol: v5.channel.k8s.io                        (client-go)
//! Sec-WebSocket-Protocol: SPDY/3.1+portforward.k8s.io              (client-go port-forward)
//! ```
//!
//! Names compare exactly (case-sensitive), as in Kubernetes.

use http::HeaderMap;
use http::header::SEC_WEBSOCKET_PROTOCOL;

/// Remote command v5: binary channels, JSON Status, and the CLOSE signal. The only protocol the
/// bridge translates (Mode A).
pub const V5: &str = "v5.channel.k8s.io";
/// Remote command v4: binary channels, JSON Status, no CLOSE signal.
pub const V4: &str = "v4.channel.k8s.io";
/// Remote command v4 with base64 text messages.
pub const V4_BASE64: &str = "v4.base64.channel.k8s.io";
/// Remote command v3. Exists only over SPDY; WebSocket servers do not accept it.
pub const V3: &str = "v3.channel.k8s.io";
/// Remote command v2. Exists only over SPDY; WebSocket servers do not accept it.
pub const V2: &str = "v2.channel.k8s.io";
/// Remote command v1: binary channels, plain-text failures only.
pub const V1: &str = "channel.k8s.io";
/// Remote command v1 with base64 text messages.
pub const V1_BASE64: &str = "base64.channel.k8s.io";
/// Port-forward over SPDY; also the legacy channel-based port-forward over WebSocket.
pub const PORT_FORWARD: &str = "portforward.k8s.io";
/// Prefix of every tunnelling sub-protocol: SPDY carried inside WebSocket binary messages.
pub const TUNNEL_PREFIX: &str = "SPDY/3.1+";
/// Suffix every tunnelling sub-protocol must have.
pub const TUNNEL_SUFFIX: &str = ".k8s.io";
/// The port-forward tunnel (KEP-4006): SPDY port-forward inside WebSocket.
pub const PORT_FORWARD_TUNNEL: &str = "SPDY/3.1+portforward.k8s.io";

/// The remote-command protocols the kubelet lib's legacy WebSocket server accepts; the bridge
/// can only relay them untouched (Mode C).
pub const LEGACY_REMOTE_COMMAND: [&str; 4] = [V1, V1_BASE64, V4, V4_BASE64];

/// Every sub-protocol the client offers, over every `Sec-WebSocket-Protocol` line, each line
/// split on commas, entries trimmed, empty entries dropped, in the client's order.
///
/// Bytes that are not UTF-8 are replaced rather than dropping the whole line, so a stray byte
/// elsewhere cannot hide a valid offer; a mangled entry simply matches nothing.
pub fn offered(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .flat_map(|line| {
            String::from_utf8_lossy(line.as_bytes())
                .split(',')
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect()
}

/// What to do with an exec/attach upgrade, given the client's offer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RemoteCommandChoice {
    /// `v5.channel.k8s.io` is offered (in any position): translate (Mode A).
    V5,
    /// No v5, but a legacy protocol: the first one the client offers, for pass-through.
    Legacy(String),
    /// No sub-protocol offered at all. The kubelet lib would accept with v1 semantics.
    NoneOffered,
    /// Only protocols nobody serves for remote command: refuse with 403 and an empty body.
    Unsupported,
}

/// Chooses the remote-command protocol. v5 wins wherever it appears, although the general rule
/// is client preference: that is what the API server does, since it routes to its translator
/// whenever v5 is offered at all (C-01, C-02).
pub fn choose_remote_command(offered: &[String]) -> RemoteCommandChoice {
    if offered.iter().any(|p| p == V5) {
        return RemoteCommandChoice::V5;
    }
    if let Some(p) = offered
        .iter()
        .find(|p| LEGACY_REMOTE_COMMAND.contains(&p.as_str()))
    {
        return RemoteCommandChoice::Legacy(p.clone());
    }
    if offered.is_empty() {
        RemoteCommandChoice::NoneOffered
    } else {
        RemoteCommandChoice::Unsupported
    }
}

/// Whether `protocol` names a tunnelling sub-protocol: `SPDY/3.1+` … `.k8s.io`.
pub fn is_tunnel_protocol(protocol: &str) -> bool {
    protocol.starts_with(TUNNEL_PREFIX) && protocol.ends_with(TUNNEL_SUFFIX)
}

/// The offered tunnelling sub-protocols, in the client's order (protocol.md §7.2). An empty
/// result is the API server's 400 `unable to upgrade: no tunneling spdy protocols provided`.
pub fn tunnel_protocols(offered: &[String]) -> Vec<String> {
    offered
        .iter()
        .filter(|p| is_tunnel_protocol(p))
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    fn headers(lines: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for line in lines {
            h.append(SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_str(line).unwrap());
        }
        h
    }

    fn list(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn offers_from_every_line_are_split_trimmed_and_kept_in_order() {
        let h = headers(&[" b ,, a,", "c", " ", "d ,\te"]);
        assert_eq!(offered(&h), list(&["b", "a", "c", "d", "e"]));
    }

    #[test]
    fn no_protocol_header_offers_nothing() {
        assert!(offered(&HeaderMap::new()).is_empty());
        assert!(offered(&headers(&["", " , "])).is_empty());
    }

    #[test]
    fn non_utf8_bytes_do_not_hide_other_offers() {
        let mut h = HeaderMap::new();
        h.append(
            SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_bytes(b"x\xff, v5.channel.k8s.io").unwrap(),
        );
        let offers = offered(&h);
        assert_eq!(offers.len(), 2);
        assert_eq!(offers[1], V5);
        assert_eq!(choose_remote_command(&offers), RemoteCommandChoice::V5);
    }

    #[test]
    fn v5_alone_is_chosen() {
        assert_eq!(choose_remote_command(&list(&[V5])), RemoteCommandChoice::V5);
    }

    #[test]
    fn v5_is_chosen_from_any_position_in_a_comma_list() {
        for line in [
            "v5.channel.k8s.io, v4.channel.k8s.io",
            "v4.channel.k8s.io, v5.channel.k8s.io",
            "foo,channel.k8s.io,v5.channel.k8s.io,bar",
        ] {
            let offers = offered(&headers(&[line]));
            assert_eq!(
                choose_remote_command(&offers),
                RemoteCommandChoice::V5,
                "{line}"
            );
        }
    }

    #[test]
    fn v5_on_a_later_header_line_is_chosen() {
        let offers = offered(&headers(&["v4.channel.k8s.io", "v5.channel.k8s.io"]));
        assert_eq!(choose_remote_command(&offers), RemoteCommandChoice::V5);
    }

    #[test]
    fn protocol_names_compare_case_sensitively() {
        assert_eq!(
            choose_remote_command(&list(&["V5.Channel.K8s.Io"])),
            RemoteCommandChoice::Unsupported
        );
    }

    #[test]
    fn first_legacy_protocol_in_client_order_is_passed_through() {
        assert_eq!(
            choose_remote_command(&list(&["foo", V4_BASE64, V1, V4])),
            RemoteCommandChoice::Legacy(V4_BASE64.into())
        );
        for p in LEGACY_REMOTE_COMMAND {
            assert_eq!(
                choose_remote_command(&list(&[p])),
                RemoteCommandChoice::Legacy(p.into())
            );
        }
    }

    #[test]
    fn empty_offer_is_none_offered() {
        assert_eq!(choose_remote_command(&[]), RemoteCommandChoice::NoneOffered);
    }

    #[test]
    fn spdy_only_and_unknown_protocols_are_unsupported() {
        assert_eq!(
            choose_remote_command(&list(&[V3, V2, "foo", PORT_FORWARD_TUNNEL])),
            RemoteCommandChoice::Unsupported
        );
    }

    #[test]
    fn tunnel_protocols_need_the_spdy_prefix_and_k8s_suffix() {
        let offers = list(&[
            V5,
            PORT_FORWARD_TUNNEL,
            "SPDY/3.1+example.com",
            "SPDY/3.1+v2.portforward.k8s.io",
            "spdy/3.1+portforward.k8s.io",
            PORT_FORWARD,
        ]);
        assert_eq!(
            tunnel_protocols(&offers),
            list(&[PORT_FORWARD_TUNNEL, "SPDY/3.1+v2.portforward.k8s.io"])
        );
        assert!(tunnel_protocols(&list(&[V5])).is_empty());
    }
}
