//! Frames the edge sends. Field names are protocol v1's (camelCase); optional fields are left
//! out rather than sent as null.

use serde::{Deserialize, Serialize};

use crate::ErrorCode;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame {
    Connected(Connected),
    Identified(Identified),
    History(History),
    MessageAck(MessageAck),
    Message(Message),
    Typing(Typing),
    Read(Read),
    Error(Error),
}

impl ServerFrame {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("server frames always serialize")
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Connected {
    pub session_id: String,
    pub timestamp: String,
    pub protocol: u32,
    pub limits: Limits,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Limits {
    pub max_message_size: u64,
    pub max_file_size: u64,
    /// The content types guests may upload (from the upload service, once the edge has heard).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_file_types: Option<Vec<String>>,
    /// Frames a second this connection may send (bursts of twice that); beyond it,
    /// `RATE_LIMITED`. A client paces itself under it.
    pub max_frames_per_second: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Identified {
    pub guest_id: String,
    pub visitor_id: String,
    /// Resumes this visitor on a later connection; keep it, and identify again before
    /// `visitor_token_expires_at` to get a renewed one.
    pub visitor_token: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conversation_id: Option<String>,
    /// When `visitor_token` stops working (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub visitor_token_expires_at: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct History {
    pub conversation_id: String,
    pub messages: Vec<Message>,
    pub has_more: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MessageAck {
    pub client_message_id: String,
    pub message_id: String,
    pub seq: i64,
    pub conversation_id: String,
    pub timestamp: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Guest,
    Assistant,
    Staff,
}

/// A committed message (in `message` frames and inside `history`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Message {
    pub message_id: String,
    pub seq: i64,
    pub conversation_id: String,
    pub role: Role,
    pub content: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub quick_replies: Vec<QuickReply>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub buttons: Vec<Button>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cards: Vec<Card>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attachments: Vec<Attachment>,
    /// On a guest's own messages, so its tabs can match them with what they sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_message_id: Option<String>,
    /// On a guest's postbacks: the payload of the tapped quick reply or button.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<String>,
    pub timestamp: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct QuickReply {
    pub label: String,
    pub payload: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Button {
    #[serde(rename = "type")]
    pub kind: String,
    pub label: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Card {
    pub title: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subtitle: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_url: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub buttons: Vec<Button>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Attachment {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filename: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<i64>,
    /// A short-lived download URL of the file (set by the edge when it sends the frame).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// A short-lived URL of the image's preview.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thumbnail_url: Option<String>,
    /// When `url` and `thumbnailUrl` stop working (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Typing {
    pub is_typing: bool,
    pub role: Role,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Read {
    pub up_to_seq: i64,
    pub role: Role,
    pub timestamp: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Error {
    pub code: ErrorCode,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_message_id: Option<String>,
    pub retryable: bool,
    /// For a retryable error: how long to wait before trying again, when the edge knows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
}

impl Error {
    pub fn new(code: ErrorCode, message: impl Into<String>, client_message_id: Option<String>) -> Self {
        Self { code, message: message.into(), client_message_id, retryable: code.retryable(), retry_after_ms: None }
    }

    /// The same error, telling the client how long to wait.
    pub fn retry_after(mut self, wait: std::time::Duration) -> Self {
        self.retry_after_ms = Some(wait.as_millis().try_into().unwrap_or(u64::MAX).max(1));
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_comes_first_and_names_are_the_specs() {
        let ack = ServerFrame::MessageAck(MessageAck {
            client_message_id: "msg_1".into(),
            message_id: "msg_x".into(),
            seq: 3,
            conversation_id: "cnv_1".into(),
            timestamp: "2026-01-01T00:00:00.000Z".into(),
        });
        assert!(ack.to_json().starts_with(r#"{"type":"message_ack","clientMessageId":"msg_1""#), "{}", ack.to_json());
        let err = ServerFrame::Error(Error::new(ErrorCode::NotIdentified, "Please identify first", None));
        assert_eq!(
            err.to_json(),
            r#"{"type":"error","code":"NOT_IDENTIFIED","message":"Please identify first","retryable":false}"#
        );
    }
}
