//! Frames a client sends. Parsing tells apart the three ways a frame can be wrong, so the
//! edge can answer with the precise error code.

use serde::Deserialize;

use crate::ErrorCode;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientFrame {
    Identify(Identify),
    Message(ChatMessage),
    Postback(Postback),
    Typing(Typing),
    Read(Read),
    LoadHistory(LoadHistory),
}

/// The frame types of protocol v1, for telling an unknown type from a malformed frame.
pub const CLIENT_TYPES: [&str; 6] = ["identify", "message", "postback", "typing", "read", "load_history"];

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Identify {
    pub visitor_id: Option<String>,
    pub visitor_token: Option<String>,
    pub name: Option<String>,
    pub email: Option<String>,
    pub user_hash: Option<String>,
    #[serde(default)]
    pub resume_conversation: bool,
    pub last_seq: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChatMessage {
    pub client_message_id: String,
    #[serde(default)]
    pub content: String,
    #[serde(default)]
    pub attachments: Vec<AttachmentRef>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AttachmentRef {
    pub id: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Postback {
    pub client_message_id: String,
    pub payload: String,
    pub label: Option<String>,
    pub message_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Typing {
    pub is_typing: bool,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Read {
    pub up_to_seq: i64,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LoadHistory {
    pub before_seq: i64,
    pub limit: Option<u32>,
}

/// Why a frame was refused, with the message the client is shown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameError {
    pub code: ErrorCode,
    pub message: String,
    /// The frame's clientMessageId, when it had a readable one.
    pub client_message_id: Option<String>,
}

impl ClientFrame {
    /// Parses one text frame. The well-formed path is a single pass; only a bad frame is
    /// parsed again to say what is wrong with it.
    pub fn parse(text: &str) -> Result<Self, FrameError> {
        match serde_json::from_str::<ClientFrame>(text) {
            Ok(frame) => Ok(frame),
            Err(err) => Err(diagnose(text, err)),
        }
    }
}

fn diagnose(text: &str, err: serde_json::Error) -> FrameError {
    let error = |code, message: String, client_message_id| FrameError { code, message, client_message_id };
    let value: serde_json::Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => return error(ErrorCode::InvalidJson, format!("frame is not valid JSON: {e}"), None),
    };
    let Some(object) = value.as_object() else {
        return error(ErrorCode::InvalidJson, "frame must be a JSON object".into(), None);
    };
    let client_message_id = object.get("clientMessageId").and_then(|v| v.as_str()).map(str::to_owned);
    match object.get("type") {
        None => error(ErrorCode::InvalidFrame, "missing field `type`".into(), client_message_id),
        Some(serde_json::Value::String(t)) if !CLIENT_TYPES.contains(&t.as_str()) => {
            let shown: String = t.chars().take(64).collect();
            error(ErrorCode::UnknownType, format!("unknown frame type {shown:?}"), client_message_id)
        }
        Some(serde_json::Value::String(_)) => {
            // serde's message names the field and the expected type, without the input.
            let detail = err.to_string();
            let detail = detail.split(" at line ").next().unwrap_or(&detail).to_owned();
            error(ErrorCode::InvalidFrame, detail, client_message_id)
        }
        Some(_) => error(ErrorCode::InvalidFrame, "field `type` must be a string".into(), client_message_id),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_spec_frames() {
        let f = ClientFrame::parse(r#"{"type":"identify","visitorId":"v1","name":"Test Guest"}"#).unwrap();
        assert_eq!(f, ClientFrame::Identify(Identify { visitor_id: Some("v1".into()), name: Some("Test Guest".into()), ..Default::default() }));
        let f = ClientFrame::parse(r#"{"type":"message","clientMessageId":"msg_1","content":"I need extra towels"}"#).unwrap();
        assert!(matches!(f, ClientFrame::Message(m) if m.content == "I need extra towels"));
        // The spec's widget sends attachment metadata along with the id; extra fields are fine.
        let f = ClientFrame::parse(r#"{"type":"message","clientMessageId":"m","content":"","attachments":[{"id":"att_1","filename":"a.png"}]}"#).unwrap();
        assert!(matches!(f, ClientFrame::Message(m) if m.attachments[0].id == "att_1"));
    }

    #[test]
    fn tells_the_three_kinds_of_bad_frame_apart() {
        assert_eq!(ClientFrame::parse("{not json").unwrap_err().code, ErrorCode::InvalidJson);
        assert_eq!(ClientFrame::parse("[1,2]").unwrap_err().code, ErrorCode::InvalidJson);
        assert_eq!(ClientFrame::parse(r#"{"type":"dance"}"#).unwrap_err().code, ErrorCode::UnknownType);
        let e = ClientFrame::parse(r#"{"type":"message","content":"hi"}"#).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidFrame);
        assert!(e.message.contains("clientMessageId"), "{}", e.message);
        let e = ClientFrame::parse(r#"{"type":"typing","isTyping":"yes"}"#).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidFrame);
        let e = ClientFrame::parse(r#"{"type":"message","clientMessageId":"c1","content":5}"#).unwrap_err();
        assert_eq!(e.client_message_id.as_deref(), Some("c1"));
        assert_eq!(ClientFrame::parse(r#"{"content":"x"}"#).unwrap_err().code, ErrorCode::InvalidFrame);
    }
}
