//! The label values of every metric family: small closed enums, so that no label can take a
//! value from the wire (a token, a session id, a path) and the series count stays bounded.

use std::fmt;

macro_rules! label_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident { $( $(#[$vmeta:meta])* $variant:ident => $label:literal, )+ }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum $name {
            $( $(#[$vmeta])* $variant, )+
        }

        impl $name {
            /// Every value, in declaration order ([`Self::index`] order).
            pub const ALL: &'static [$name] = &[$($name::$variant),+];
            /// How many values there are.
            pub const COUNT: usize = Self::ALL.len();

            /// The label value.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $label,)+
                }
            }

            /// Position in [`Self::ALL`], for per-value arrays.
            pub const fn index(self) -> usize {
                self as usize
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

label_enum! {
    /// `kind`: the streaming route a session came in on.
    pub enum Kind {
        Exec => "exec",
        Attach => "attach",
        PortForward => "portforward",
    }
}

label_enum! {
    /// `protocol`: how the bridge serves the session.
    pub enum Protocol {
        /// `v5.channel.k8s.io` translated to SPDY remote command (Mode A).
        V5 => "v5",
        /// `SPDY/3.1+portforward.k8s.io` carried in WebSocket messages (Mode B).
        Tunnel => "tunnel",
        /// `v4.channel.k8s.io` port-forward translated to SPDY stream pairs (Mode C).
        Channel => "channel",
        /// A legacy WebSocket remote-command protocol relayed untouched.
        PassthroughWebSocket => "passthrough_websocket",
        /// A SPDY/3.1 upgrade relayed untouched.
        PassthroughSpdy => "passthrough_spdy",
    }
}

label_enum! {
    /// `outcome`: how a session ended, and whose doing it was (style habit 4).
    pub enum Outcome {
        /// The session ran to its end: status Success, or an orderly close.
        Success => "success",
        /// The remote command exited with a non-zero code (reported to the client).
        ExitNonzero => "exit_nonzero",
        /// The client broke the protocol (malformed CLOSE, text in a tunnel, oversized
        /// message).
        ClientError => "client_error",
        /// The runtime refused, was unreachable, failed or vanished, or reported a failure.
        UpstreamError => "upstream_error",
        /// The bridge failed, or the session ended without saying how (see
        /// [`super::SessionGuard`]).
        InternalError => "internal_error",
        /// The client went away (or idled out) before the session's natural end.
        ClientGone => "client_gone",
    }
}

label_enum! {
    /// `channel` of `ws_spdy_bridge_bytes_total`: which stream the bytes travelled on.
    pub enum Channel {
        /// v5 channel 0.
        Stdin => "stdin",
        /// v5 channel 1.
        Stdout => "stdout",
        /// v5 channel 2.
        Stderr => "stderr",
        /// v5 channel 3: the status JSON.
        Error => "error",
        /// v5 channel 4: terminal sizes as the client sent them.
        Resize => "resize",
        /// Opaque bytes: the port-forward tunnel (SPDY frames) and pass-through connections
        /// (the whole upgraded byte stream, framing included).
        Tunnel => "tunnel",
        /// Port-forward channel mode: payload of the ports' data channels.
        Data => "data",
    }
}

label_enum! {
    /// `direction` of `ws_spdy_bridge_bytes_total`.
    pub enum Direction {
        ClientToRuntime => "client_to_runtime",
        RuntimeToClient => "runtime_to_client",
    }
}

label_enum! {
    /// `channel` of `ws_spdy_bridge_close_signals_total`: the channel a v5 CLOSE message
    /// (`ff <channel>`) named.
    pub enum CloseSignal {
        Stdin => "stdin",
        Stdout => "stdout",
        Stderr => "stderr",
        Error => "error",
        Resize => "resize",
        /// A malformed CLOSE (`ff` alone, extra bytes) or one naming no channel; the session
        /// is torn down (C-36, C-37).
        Invalid => "invalid",
    }
}

impl CloseSignal {
    /// The signal for `ff <channel>`.
    pub fn for_channel(channel: u8) -> CloseSignal {
        match channel {
            0 => CloseSignal::Stdin,
            1 => CloseSignal::Stdout,
            2 => CloseSignal::Stderr,
            3 => CloseSignal::Error,
            4 => CloseSignal::Resize,
            _ => CloseSignal::Invalid,
        }
    }
}

label_enum! {
    /// `reason` of `ws_spdy_bridge_handshake_refusals_total`: requests answered with an error
    /// before any session started (the runtime was not contacted, its token not spent).
    pub enum RefusalReason {
        /// No route: not `<base>/{exec,attach,portforward}/{token}`.
        NotFound => "not_found",
        /// CRI mode: the bridge token is unknown, expired, spent, or for another route.
        UnknownToken => "unknown_token",
        /// Standalone: the token does not make a valid runtime URL.
        InvalidToken => "invalid_token",
        /// Neither a WebSocket nor a SPDY/3.1 upgrade.
        NotAnUpgrade => "not_an_upgrade",
        /// A WebSocket upgrade that is not a GET.
        Method => "method",
        /// `Sec-WebSocket-Version` is not 13.
        WebSocketVersion => "websocket_version",
        /// No `Sec-WebSocket-Key`.
        MissingKey => "missing_key",
        /// No sub-protocol the bridge serves for this route (403, or the no-tunnel 400).
        UnsupportedProtocol => "unsupported_protocol",
        /// Standalone exec/attach: the stream options in the query are missing or invalid.
        StreamOptions => "stream_options",
        /// Port-forward channel mode: the `ports` query is missing or invalid.
        Ports => "ports",
        /// The connection cannot switch protocols (not HTTP/1.1 with upgrades), or the request
        /// cannot be forwarded.
        NotUpgradable => "not_upgradable",
        /// The concurrent-session limit was reached (503).
        TooManySessions => "too_many_sessions",
        /// The bridge is draining and takes no new sessions.
        Draining => "draining",
    }
}

/// The CRI methods `ws_spdy_bridge_cri_calls_total` names (`runtime.v1` and
/// `runtime.v1alpha2`, RuntimeService and ImageService); any other path counts as `other`.
pub const CRI_METHODS: &[&str] = &[
    "Version",
    "RunPodSandbox",
    "StopPodSandbox",
    "RemovePodSandbox",
    "PodSandboxStatus",
    "ListPodSandbox",
    "CreateContainer",
    "StartContainer",
    "StopContainer",
    "RemoveContainer",
    "ListContainers",
    "ContainerStatus",
    "UpdateContainerResources",
    "ReopenContainerLog",
    "ExecSync",
    "Exec",
    "Attach",
    "PortForward",
    "ContainerStats",
    "ListContainerStats",
    "PodSandboxStats",
    "ListPodSandboxStats",
    "UpdateRuntimeConfig",
    "Status",
    "CheckpointContainer",
    "GetContainerEvents",
    "ListMetricDescriptors",
    "ListPodSandboxMetrics",
    "RuntimeConfig",
    "UpdatePodSandboxResources",
    "ListImages",
    "ImageStatus",
    "PullImage",
    "RemoveImage",
    "ImageFsInfo",
];

/// The `method` label of a gRPC path: the CRI method's name, or `other` for anything that is
/// not `/runtime.{v1,v1alpha2}.{RuntimeService,ImageService}/<known method>`.
pub fn cri_method(path: &str) -> &'static str {
    let method = ["/runtime.v1.", "/runtime.v1alpha2."]
        .iter()
        .find_map(|p| path.strip_prefix(p))
        .and_then(|rest| {
            rest.strip_prefix("RuntimeService/")
                .or_else(|| rest.strip_prefix("ImageService/"))
        });
    method
        .and_then(|m| CRI_METHODS.iter().find(|&&known| known == m))
        .copied()
        .unwrap_or("other")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indexes_follow_declaration_order() {
        for (i, k) in Outcome::ALL.iter().enumerate() {
            assert_eq!(k.index(), i);
        }
        assert_eq!(Channel::COUNT, 7);
        assert_eq!(RefusalReason::Draining.as_str(), "draining");
    }

    #[test]
    fn cri_methods_are_bounded() {
        assert_eq!(cri_method("/runtime.v1.RuntimeService/Exec"), "Exec");
        assert_eq!(
            cri_method("/runtime.v1alpha2.ImageService/ListImages"),
            "ListImages"
        );
        assert_eq!(cri_method("/runtime.v1.RuntimeService/NoSuch"), "other");
        assert_eq!(cri_method("/grpc.health.v1.Health/Check"), "other");
        assert_eq!(cri_method("/runtime.v1.RuntimeService/Exec/x"), "other");
    }

    #[test]
    fn close_signals_name_their_channel() {
        assert_eq!(CloseSignal::for_channel(0), CloseSignal::Stdin);
        assert_eq!(CloseSignal::for_channel(4), CloseSignal::Resize);
        assert_eq!(CloseSignal::for_channel(9), CloseSignal::Invalid);
    }
}
