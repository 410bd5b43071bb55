//! Per-transport frame counts (`centrifugo_transport_messages_*`): counted for every frame a
//! connection sends or receives, so on the fan-out path. Each thread adds to its own
//! cache-line-aligned slot, which keeps a broadcast's counting free of contention; a scrape
//! sums the slots.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use super::primitives::Gauge;

/// What a frame to or from a client is, as the `frame_type` label names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameType {
    Connect,
    Subscribe,
    Unsubscribe,
    Publish,
    Presence,
    PresenceStats,
    History,
    Ping,
    Send,
    Rpc,
    Refresh,
    SubRefresh,
    PushPublication,
    PushJoin,
    PushLeave,
    PushUnsubscribe,
    PushMessage,
    PushSubscribe,
    PushConnect,
    PushDisconnect,
    PushRefresh,
    ServerPing,
    ClientPong,
    Unknown,
}

impl FrameType {
    pub const COUNT: usize = FrameType::Unknown as usize + 1;

    const ALL: [FrameType; Self::COUNT] = [
        Self::Connect,
        Self::Subscribe,
        Self::Unsubscribe,
        Self::Publish,
        Self::Presence,
        Self::PresenceStats,
        Self::History,
        Self::Ping,
        Self::Send,
        Self::Rpc,
        Self::Refresh,
        Self::SubRefresh,
        Self::PushPublication,
        Self::PushJoin,
        Self::PushLeave,
        Self::PushUnsubscribe,
        Self::PushMessage,
        Self::PushSubscribe,
        Self::PushConnect,
        Self::PushDisconnect,
        Self::PushRefresh,
        Self::ServerPing,
        Self::ClientPong,
        Self::Unknown,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::Connect => "connect",
            Self::Subscribe => "subscribe",
            Self::Unsubscribe => "unsubscribe",
            Self::Publish => "publish",
            Self::Presence => "presence",
            Self::PresenceStats => "presence_stats",
            Self::History => "history",
            Self::Ping => "ping",
            Self::Send => "send",
            Self::Rpc => "rpc",
            Self::Refresh => "refresh",
            Self::SubRefresh => "sub_refresh",
            Self::PushPublication => "push_publication",
            Self::PushJoin => "push_join",
            Self::PushLeave => "push_leave",
            Self::PushUnsubscribe => "push_unsubscribe",
            Self::PushMessage => "push_message",
            Self::PushSubscribe => "push_subscribe",
            Self::PushConnect => "push_connect",
            Self::PushDisconnect => "push_disconnect",
            Self::PushRefresh => "push_refresh",
            Self::ServerPing => "server_ping",
            Self::ClientPong => "client_pong",
            Self::Unknown => "unknown",
        }
    }
}

/// Slots per transport; threads beyond this share them (still correct, a little contended).
const SLOTS: usize = 8;
/// Per frame type: frames sent, bytes sent, frames received, bytes received.
const FIGURES: usize = 4;

#[repr(align(64))]
#[derive(Debug)]
struct Slot([AtomicU64; FrameType::COUNT * FIGURES]);

impl Default for Slot {
    fn default() -> Self {
        Self(std::array::from_fn(|_| AtomicU64::new(0)))
    }
}

static NEXT_SLOT: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static THREAD_SLOT: usize = NEXT_SLOT.fetch_add(1, Ordering::Relaxed) % SLOTS;
}

/// One transport's frame counts.
#[derive(Debug)]
pub struct TransportTraffic {
    pub name: &'static str,
    /// Connections open on this transport (`spinwire_transport_connections`).
    pub open: Gauge,
    slots: Box<[Slot]>,
}

/// Totals for one frame type on one transport.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Figures {
    pub sent: u64,
    pub sent_bytes: u64,
    pub received: u64,
    pub received_bytes: u64,
}

impl TransportTraffic {
    pub fn new(name: &'static str) -> Self {
        Self { name, open: Gauge::default(), slots: (0..SLOTS).map(|_| Slot::default()).collect() }
    }

    fn add(&self, frame: FrameType, figure: usize, bytes: usize) {
        let slot = &self.slots[THREAD_SLOT.with(|slot| *slot)];
        let base = frame as usize * FIGURES + figure;
        slot.0[base].fetch_add(1, Ordering::Relaxed);
        slot.0[base + 1].fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// Counters no node reads (for handles built outside a session, in tests).
    pub fn detached() -> std::sync::Arc<Self> {
        std::sync::Arc::new(Self::new("detached"))
    }

    /// A frame of `bytes` (encoded, before transport framing) went to a client.
    pub fn sent(&self, frame: FrameType, bytes: usize) {
        self.add(frame, 0, bytes);
    }

    /// A command (or pong) of `bytes` came from a client.
    pub fn received(&self, frame: FrameType, bytes: usize) {
        self.add(frame, 2, bytes);
    }

    /// Totals per frame type, for the frame types seen at all.
    pub fn figures(&self) -> Vec<(FrameType, Figures)> {
        FrameType::ALL
            .iter()
            .filter_map(|&frame| {
                let base = frame as usize * FIGURES;
                let total = |figure: usize| {
                    self.slots.iter().map(|slot| slot.0[base + figure].load(Ordering::Relaxed)).sum()
                };
                let figures = Figures {
                    sent: total(0),
                    sent_bytes: total(1),
                    received: total(2),
                    received_bytes: total(3),
                };
                (figures != Figures::default()).then_some((frame, figures))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_from_many_threads_add_up() {
        let traffic = std::sync::Arc::new(TransportTraffic::new("test"));
        let threads: Vec<_> = (0..12)
            .map(|_| {
                let traffic = traffic.clone();
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        traffic.sent(FrameType::PushPublication, 10);
                    }
                    traffic.received(FrameType::ClientPong, 2);
                })
            })
            .collect();
        threads.into_iter().for_each(|thread| thread.join().unwrap());
        let figures = traffic.figures();
        assert_eq!(
            figures,
            vec![
                (
                    FrameType::PushPublication,
                    Figures { sent: 12_000, sent_bytes: 120_000, ..Default::default() }
                ),
                (FrameType::ClientPong, Figures { received: 12, received_bytes: 24, ..Default::default() }),
            ]
        );
        assert_eq!(
            FrameType::ALL.iter().map(|f| *f as usize).collect::<Vec<_>>(),
            (0..FrameType::COUNT).collect::<Vec<_>>()
        );
    }
}
