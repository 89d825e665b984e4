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

/// The longest ids a client may send: `clientMessageId`, `messageId`, `visitorId`, attachment ids.
pub const MAX_ID_LEN: usize = 128;
/// The longest `visitorToken` (real ones are about 150 characters).
pub const MAX_TOKEN_LEN: usize = 512;
/// The longest `userHash` (a real one is 64 hex digits).
pub const MAX_USER_HASH_LEN: usize = 128;
pub const MAX_NAME_CHARS: usize = 200;
pub const MAX_EMAIL_LEN: usize = 254;
/// The longest postback `payload`, in bytes, and `label`, in characters (as the butler may send them).
pub const MAX_PAYLOAD_BYTES: usize = 1024;
pub const MAX_LABEL_CHARS: usize = 100;
/// Attachments on one message.
pub const MAX_ATTACHMENTS: usize = 10;

impl ClientFrame {
    /// Parses one text frame. The well-formed path is a single pass; only a bad frame is
    /// parsed again to say what is wrong with it.
    pub fn parse(text: &str) -> Result<Self, FrameError> {
        let frame = serde_json::from_str::<ClientFrame>(text).map_err(|err| diagnose(text, err))?;
        frame.check()?;
        Ok(frame)
    }

    /// The bounds of protocol v1 on what a client sends: nothing unbounded reaches a backend.
    fn check(&self) -> Result<(), FrameError> {
        let refuse = |message: String, client_message_id: Option<&str>| FrameError {
            code: ErrorCode::InvalidFrame,
            message,
            client_message_id: client_message_id.filter(|id| id.len() <= MAX_ID_LEN).map(str::to_owned),
        };
        let id_ok = |id: &str| !id.is_empty() && id.len() <= MAX_ID_LEN && id.bytes().all(|b| b.is_ascii_graphic());
        let too_long = |value: &Option<String>, max: usize| value.as_ref().is_some_and(|v| v.len() > max);
        match self {
            ClientFrame::Identify(i) => {
                if too_long(&i.visitor_id, MAX_ID_LEN)
                    || too_long(&i.visitor_token, MAX_TOKEN_LEN)
                    || too_long(&i.user_hash, MAX_USER_HASH_LEN)
                    || too_long(&i.email, MAX_EMAIL_LEN)
                {
                    return Err(refuse(
                        format!(
                            "visitorId may have at most {MAX_ID_LEN} characters, visitorToken {MAX_TOKEN_LEN}, userHash {MAX_USER_HASH_LEN}, email {MAX_EMAIL_LEN}"
                        ),
                        None,
                    ));
                }
                if i.name.as_ref().is_some_and(|n| n.chars().count() > MAX_NAME_CHARS) {
                    return Err(refuse(format!("name may have at most {MAX_NAME_CHARS} characters"), None));
                }
            }
            ClientFrame::Message(m) => {
                if !id_ok(&m.client_message_id) {
                    return Err(refuse(
                        format!("clientMessageId must be 1 to {MAX_ID_LEN} printable characters"),
                        Some(&m.client_message_id),
                    ));
                }
                if m.attachments.len() > MAX_ATTACHMENTS || m.attachments.iter().any(|a| !id_ok(&a.id)) {
                    return Err(refuse(
                        format!(
                            "at most {MAX_ATTACHMENTS} attachments, each id 1 to {MAX_ID_LEN} printable characters"
                        ),
                        Some(&m.client_message_id),
                    ));
                }
            }
            ClientFrame::Postback(p) => {
                if !id_ok(&p.client_message_id) {
                    return Err(refuse(
                        format!("clientMessageId must be 1 to {MAX_ID_LEN} printable characters"),
                        Some(&p.client_message_id),
                    ));
                }
                if p.message_id.as_deref().is_some_and(|id| !id_ok(id)) {
                    return Err(refuse(
                        format!("messageId must be 1 to {MAX_ID_LEN} printable characters"),
                        Some(&p.client_message_id),
                    ));
                }
                if p.payload.is_empty()
                    || p.payload.len() > MAX_PAYLOAD_BYTES
                    || p.label.as_ref().is_some_and(|l| l.chars().count() > MAX_LABEL_CHARS)
                {
                    return Err(refuse(
                        format!(
                            "payload must be 1 to {MAX_PAYLOAD_BYTES} bytes, label at most {MAX_LABEL_CHARS} characters"
                        ),
                        Some(&p.client_message_id),
                    ));
                }
            }
            ClientFrame::Typing(_) | ClientFrame::Read(_) | ClientFrame::LoadHistory(_) => {}
        }
        Ok(())
    }
}

fn diagnose(text: &str, err: serde_json::Error) -> FrameError {
    let error = |code, message: String, client_message_id| FrameError { code, message, client_message_id };
    // Well-formed JSON whose numbers do not fit a double (`1e400`) is a wrong field, not bad
    // JSON: skipping values checks the syntax without converting numbers.
    if let Err(e) = serde_json::from_str::<serde::de::IgnoredAny>(text) {
        return error(ErrorCode::InvalidJson, format!("frame is not valid JSON: {e}"), None);
    }
    let value: serde_json::Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => return error(ErrorCode::InvalidFrame, format!("a value is out of range: {e}"), None),
    };
    let Some(object) = value.as_object() else {
        return error(ErrorCode::InvalidJson, "frame must be a JSON object".into(), None);
    };
    let client_message_id =
        object.get("clientMessageId").and_then(|v| v.as_str()).filter(|id| id.len() <= MAX_ID_LEN).map(str::to_owned);
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
    use proptest::prelude::*;
    use serde_json::{Value, json};

    /// A JSON value of the kinds clients send, with the edges that matter: huge and negative
    /// numbers, long and non-ASCII strings.
    fn value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            "\\PC{0,24}".prop_map(Value::String),
            (1usize..400).prop_map(|n| Value::String("x".repeat(n))),
        ];
        leaf.prop_recursive(2, 16, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::vec(("[a-z]{1,3}|id", inner), 0..3)
                    .prop_map(|kv| Value::Object(kv.into_iter().collect()))
            ]
        })
    }

    /// A frame as a client might send it: a known or unknown type, and any of the protocol's
    /// field names with any value.
    fn frame() -> impl Strategy<Value = Value> {
        let kind = prop_oneof![prop::sample::select(CLIENT_TYPES.to_vec()).prop_map(Value::from), value()];
        let names = [
            "visitorId",
            "visitorToken",
            "userHash",
            "name",
            "email",
            "resumeConversation",
            "lastSeq",
            "clientMessageId",
            "content",
            "attachments",
            "payload",
            "label",
            "messageId",
            "isTyping",
            "upToSeq",
            "beforeSeq",
            "limit",
        ];
        (kind, prop::collection::vec((prop::sample::select(names.to_vec()), value()), 0..6)).prop_map(
            |(kind, fields)| {
                let mut object: serde_json::Map<String, Value> =
                    fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
                object.insert("type".into(), kind);
                Value::Object(object)
            },
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 3_000, failure_persistence: None, ..ProptestConfig::default() })]

        /// Any text at all is a frame or a refusal with a code; nothing panics.
        #[test]
        fn any_text_is_a_frame_or_a_precise_refusal(text in "\\PC{0,200}|[{}\\[\\]\":,0-9a-zA-Z.eE+-]{0,80}") {
            if let Err(e) = ClientFrame::parse(&text) {
                prop_assert!(e.client_message_id.as_ref().is_none_or(|id| id.len() <= MAX_ID_LEN));
            }
        }

        /// A JSON object is never called bad JSON; what passes is within every bound, and a
        /// refusal echoes only a short clientMessageId.
        #[test]
        fn objects_of_protocol_fields_pass_only_within_bounds(frame in frame()) {
            let text = frame.to_string();
            match ClientFrame::parse(&text) {
                Ok(parsed) => {
                    prop_assert!(parsed.check().is_ok());
                    if let ClientFrame::Message(m) = &parsed {
                        prop_assert!(m.client_message_id.len() <= MAX_ID_LEN && m.attachments.len() <= MAX_ATTACHMENTS);
                    }
                }
                Err(e) => {
                    prop_assert!(matches!(e.code, ErrorCode::UnknownType | ErrorCode::InvalidFrame), "{:?} for {}", e, text);
                    prop_assert!(e.client_message_id.as_ref().is_none_or(|id| id.len() <= MAX_ID_LEN));
                }
            }
        }
    }

    #[test]
    fn a_well_formed_frame_of_each_type_passes() {
        for frame in [
            json!({"type": "identify", "visitorId": "vis_1", "visitorToken": "t.t", "lastSeq": 3}),
            json!({"type": "message", "clientMessageId": "c1", "content": "hi", "attachments": [{"id": "att_1"}]}),
            json!({"type": "postback", "clientMessageId": "c2", "payload": "SPA", "label": "Spa", "messageId": "msg_1"}),
            json!({"type": "typing", "isTyping": true}),
            json!({"type": "read", "upToSeq": 4}),
            json!({"type": "load_history", "beforeSeq": 9, "limit": 20}),
        ] {
            assert!(ClientFrame::parse(&frame.to_string()).is_ok(), "{frame}");
        }
    }

    #[test]
    fn parses_the_spec_frames() {
        let f = ClientFrame::parse(r#"{"type":"identify","visitorId":"v1","name":"Test Guest"}"#).unwrap();
        assert_eq!(
            f,
            ClientFrame::Identify(Identify {
                visitor_id: Some("v1".into()),
                name: Some("Test Guest".into()),
                ..Default::default()
            })
        );
        let f = ClientFrame::parse(r#"{"type":"message","clientMessageId":"msg_1","content":"I need extra towels"}"#)
            .unwrap();
        assert!(matches!(f, ClientFrame::Message(m) if m.content == "I need extra towels"));
        // Widgets may send attachment metadata along with the id; extra fields are fine.
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
        // Numbers beyond a double are well-formed JSON: the field is what is wrong.
        let e = ClientFrame::parse(r#"{"type":"identify","lastSeq":1e400}"#).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidFrame, "{}", e.message);
        assert_eq!(
            ClientFrame::parse(r#"{"type":"identify","lastSeq":1e400"#).unwrap_err().code,
            ErrorCode::InvalidJson
        );
    }

    #[test]
    fn unbounded_fields_are_refused() {
        let long = "x".repeat(60_000);
        let e = ClientFrame::parse(&format!(
            r#"{{"type":"postback","clientMessageId":"c1","payload":"p","messageId":"{long}"}}"#
        ))
        .unwrap_err();
        assert_eq!((e.code, e.client_message_id.as_deref()), (ErrorCode::InvalidFrame, Some("c1")));
        let e = ClientFrame::parse(&format!(r#"{{"type":"message","clientMessageId":"{long}","content":"hi"}}"#))
            .unwrap_err();
        assert_eq!((e.code, e.client_message_id), (ErrorCode::InvalidFrame, None), "a long id is not echoed back");
        for frame in [
            format!(r#"{{"type":"identify","visitorId":"{long}"}}"#),
            format!(r#"{{"type":"identify","visitorToken":"{long}"}}"#),
            format!(r#"{{"type":"identify","name":"{long}"}}"#),
            format!(r#"{{"type":"message","clientMessageId":"c","content":"","attachments":[{{"id":"{long}"}}]}}"#),
            format!(r#"{{"type":"postback","clientMessageId":"c","payload":"{long}"}}"#),
            r#"{"type":"message","clientMessageId":"c","attachments":[{"id":"a"},{"id":"a"},{"id":"a"},{"id":"a"},{"id":"a"},{"id":"a"},{"id":"a"},{"id":"a"},{"id":"a"},{"id":"a"},{"id":"a"}]}"#.to_owned(),
        ] {
            assert_eq!(ClientFrame::parse(&frame).unwrap_err().code, ErrorCode::InvalidFrame, "{}", &frame[..60]);
        }
    }
}
