//! Protocol v1 of the guest WebSocket: JSON text frames with `type` first.
//!
//! Protocol v1's core frames (`connected`, `identify`/`identified`, `history`, `message`/
//! `message_ack`, `typing`, `read`, `error`) keep their names and fields; everything else is
//! additive. [`client`] holds what a widget sends, [`server`] what the edge answers, and
//! [`ErrorCode`] and [`close`] the ways a frame or connection is refused.

pub mod client;
pub mod server;

pub use client::{ClientFrame, FrameError};
pub use server::ServerFrame;

/// The protocol version announced in `connected`.
pub const PROTOCOL_VERSION: u32 = 1;

/// The `code` of an `error` frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ErrorCode {
    /// The frame is not JSON (or not a JSON object).
    InvalidJson,
    /// The frame's `type` is not one of protocol v1.
    UnknownType,
    /// A field is missing or of the wrong type.
    InvalidFrame,
    /// The frame needs an identified session.
    NotIdentified,
    /// The message content is over `WIDGET_MAX_MESSAGE_SIZE`.
    MessageTooLarge,
    /// An attachment id is unknown, not this guest's, or not uploaded.
    AttachmentNotFound,
    /// The uploaded file is not what was declared (its size, or its type by its bytes).
    AttachmentInvalid,
    /// Too many frames too fast; retry later.
    RateLimited,
    /// A backend is down or slow; retry later.
    Unavailable,
    /// The same clientMessageId was sent before with other content.
    DuplicateMessageId,
}

impl ErrorCode {
    /// Whether the client may send the same frame again later.
    pub fn retryable(self) -> bool {
        matches!(self, Self::RateLimited | Self::Unavailable)
    }
}

/// WebSocket close codes the edge uses.
pub mod close {
    /// No `hotelId` in the URL (protocol v1's code).
    pub const MISSING_HOTEL_ID: u16 = 4000;
    /// The `hotelId` is not 1 to 128 printable characters without spaces.
    pub const INVALID_HOTEL_ID: u16 = 4001;
    /// The hotel is not registered (only where a hotel registry is configured).
    pub const UNKNOWN_HOTEL: u16 = 4004;
    /// A frame far beyond any limit.
    pub const MESSAGE_TOO_BIG: u16 = 1009;
    /// A text frame that is not UTF-8.
    pub const INVALID_PAYLOAD: u16 = 1007;
    /// A frame that breaks the WebSocket protocol (e.g. an unmasked client frame).
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// No identify succeeded within `EDGE_IDENTIFY_TIMEOUT_MS` of the connection opening.
    pub const IDENTIFY_TIMEOUT: u16 = 4008;
    /// The guest or its conversation was forgotten while the connection sat idle (an anonymous
    /// visitor who never sent anything): reconnect, identify, and send again.
    pub const SESSION_EXPIRED: u16 = 4010;
    /// The edge is shutting down; reconnect (to another edge).
    pub const GOING_AWAY: u16 = 1001;
}
