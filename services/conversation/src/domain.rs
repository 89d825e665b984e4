//! The rules for messages, free of I/O: what a guest or the butler may send.

use jack_proto::conversation::v1 as pb;

use crate::error::ConversationError;

/// Upper bound on stored content, whatever the edge's own (smaller) guest limit is.
pub const MAX_CONTENT_BYTES: usize = 64 * 1024;
pub const MAX_CLIENT_MESSAGE_ID: usize = 128;
pub const MAX_PAYLOAD_BYTES: usize = 1024;
pub const MAX_LABEL_CHARS: usize = 100;
pub const MAX_QUICK_REPLIES: usize = 13;
pub const MAX_BUTTONS: usize = 10;
pub const MAX_CARDS: usize = 10;
pub const MAX_ATTACHMENTS: usize = 10;
pub const DEFAULT_PAGE: u32 = 50;
pub const MAX_PAGE: u32 = 500;

fn invalid(msg: impl Into<String>) -> ConversationError {
    ConversationError::InvalidArgument(msg.into())
}

pub fn check_client_message_id(id: &str) -> Result<(), ConversationError> {
    if id.is_empty() || id.len() > MAX_CLIENT_MESSAGE_ID || !id.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(invalid(format!("clientMessageId must be 1 to {MAX_CLIENT_MESSAGE_ID} printable characters")));
    }
    Ok(())
}

fn check_content(content: &str) -> Result<(), ConversationError> {
    if content.len() > MAX_CONTENT_BYTES {
        return Err(invalid(format!("content is over {MAX_CONTENT_BYTES} bytes")));
    }
    Ok(())
}

fn check_label(what: &str, label: &str) -> Result<(), ConversationError> {
    let n = label.chars().count();
    if label.trim().is_empty() || n > MAX_LABEL_CHARS {
        return Err(invalid(format!("{what} label must be 1 to {MAX_LABEL_CHARS} characters")));
    }
    Ok(())
}

fn check_payload(what: &str, payload: &str) -> Result<(), ConversationError> {
    if payload.is_empty() || payload.len() > MAX_PAYLOAD_BYTES {
        return Err(invalid(format!("{what} payload must be 1 to {MAX_PAYLOAD_BYTES} bytes")));
    }
    Ok(())
}

/// Links the widget shows (buttons, card images): absolute http(s) URLs with a host, nothing a
/// browser would read as another scheme, and no spaces or control characters anywhere.
pub fn check_url(what: &str, url: &str) -> Result<(), ConversationError> {
    let lower = url.to_ascii_lowercase();
    let rest = lower.strip_prefix("https://").or_else(|| lower.strip_prefix("http://"));
    let host_given = rest.is_some_and(|r| r.split(['/', '?', '#']).next().is_some_and(|host| !host.is_empty()));
    if !host_given || url.len() > 2048 || url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid(format!("{what} must be an http(s) URL")));
    }
    Ok(())
}

fn check_buttons(buttons: &[pb::Button]) -> Result<(), ConversationError> {
    if buttons.len() > MAX_BUTTONS {
        return Err(invalid(format!("at most {MAX_BUTTONS} buttons")));
    }
    for b in buttons {
        check_label("button", &b.label)?;
        match b.r#type.as_str() {
            "postback" => check_payload("button", b.payload.as_deref().unwrap_or_default())?,
            "url" => check_url("button url", b.url.as_deref().unwrap_or_default())?,
            other => return Err(invalid(format!("button type must be \"postback\" or \"url\", not {other:?}"))),
        }
    }
    Ok(())
}

fn check_attachments(attachments: &[pb::AttachmentRef]) -> Result<(), ConversationError> {
    if attachments.len() > MAX_ATTACHMENTS {
        return Err(invalid(format!("at most {MAX_ATTACHMENTS} attachments")));
    }
    if attachments.iter().any(|a| a.attachment_id.is_empty() || a.attachment_id.len() > 128) {
        return Err(invalid("attachment ids must be 1 to 128 characters"));
    }
    Ok(())
}

/// A guest message or postback as the edge hands it over.
pub fn check_guest_message(req: &pb::AddGuestMessageRequest) -> Result<(), ConversationError> {
    check_client_message_id(&req.client_message_id)?;
    check_content(&req.content)?;
    check_attachments(&req.attachments)?;
    if req.reply_to_message_id.as_ref().is_some_and(|id| {
        id.is_empty() || id.len() > MAX_CLIENT_MESSAGE_ID || !id.bytes().all(|b| b.is_ascii_graphic())
    }) {
        return Err(invalid(format!("replyToMessageId must be 1 to {MAX_CLIENT_MESSAGE_ID} printable characters")));
    }
    match pb::MessageKind::try_from(req.kind).unwrap_or_default() {
        pb::MessageKind::Postback => check_payload("postback", req.payload.as_deref().unwrap_or_default())?,
        pb::MessageKind::Text | pb::MessageKind::Unspecified => {
            if req.content.trim().is_empty() && req.attachments.is_empty() {
                return Err(invalid("a message needs content or an attachment"));
            }
        }
    }
    Ok(())
}

/// An assistant or staff message.
pub fn check_butler_message(req: &pb::SendMessageRequest) -> Result<pb::Role, ConversationError> {
    let role = match pb::Role::try_from(req.role) {
        Ok(role @ (pb::Role::Assistant | pb::Role::Staff)) => role,
        _ => return Err(invalid("role must be ROLE_ASSISTANT or ROLE_STAFF")),
    };
    if let Some(id) = &req.client_message_id {
        check_client_message_id(id)?;
    }
    check_content(&req.content)?;
    let empty = req.content.trim().is_empty()
        && req.quick_replies.is_empty()
        && req.buttons.is_empty()
        && req.cards.is_empty()
        && req.attachments.is_empty();
    if empty {
        return Err(invalid("a message needs content, quick replies, buttons, cards or attachments"));
    }
    if req.quick_replies.len() > MAX_QUICK_REPLIES {
        return Err(invalid(format!("at most {MAX_QUICK_REPLIES} quick replies")));
    }
    for q in &req.quick_replies {
        check_label("quick reply", &q.label)?;
        check_payload("quick reply", &q.payload)?;
    }
    check_buttons(&req.buttons)?;
    if req.cards.len() > MAX_CARDS {
        return Err(invalid(format!("at most {MAX_CARDS} cards")));
    }
    for card in &req.cards {
        if card.title.trim().is_empty() || card.title.chars().count() > 200 {
            return Err(invalid("card title must be 1 to 200 characters"));
        }
        if let Some(url) = &card.image_url {
            check_url("card imageUrl", url)?;
        }
        check_buttons(&card.buttons)?;
    }
    check_attachments(&req.attachments)?;
    Ok(role)
}

/// The page size asked for, within bounds.
pub fn page_size(limit: u32) -> u32 {
    if limit == 0 { DEFAULT_PAGE } else { limit.min(MAX_PAGE) }
}

/// Whether a resend is the same message as the stored one.
/// Whether a resend is the stored message again: the same role, kind, text, payload, rich
/// parts (quick replies, buttons, cards) and attachments. Anything else under the same client
/// message id is another message, refused as `ALREADY_EXISTS`.
pub fn same_message(stored: &pb::Message, resent: &pb::Message) -> bool {
    stored.role == resent.role
        && stored.kind == resent.kind
        && stored.content == resent.content
        && stored.payload == resent.payload
        && stored.quick_replies == resent.quick_replies
        && stored.buttons == resent.buttons
        && stored.cards == resent.cards
        && stored.attachments.iter().map(|a| &a.attachment_id).eq(resent.attachments.iter().map(|a| &a.attachment_id))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 4_000, failure_persistence: None, ..ProptestConfig::default() })]

        /// Whatever the butler sends as a link, one that passes is an http(s) URL with a host
        /// and nothing in it a browser could read otherwise.
        #[test]
        fn a_link_that_passes_is_a_plain_http_url(url in "((?i)https?://|javascript:|data:|//|)\\PC{0,40}|[\\x00-\\x20a-z:/]{0,30}") {
            if check_url("link", &url).is_ok() {
                let lower = url.to_ascii_lowercase();
                prop_assert!(lower.starts_with("http://") || lower.starts_with("https://"), "{url:?}");
                prop_assert!(!url.chars().any(|c| c.is_whitespace() || c.is_control()), "{url:?}");
                let after_scheme = lower.split_once("://").map_or("", |(_, rest)| rest);
                prop_assert!(!after_scheme.is_empty() && !after_scheme.starts_with('/'), "a host: {url:?}");
            }
        }
    }

    #[test]
    fn links_are_plain_http_urls() {
        for ok in ["https://hotel.example/spa", "HTTP://hotel.example", "https://h.example?x=1"] {
            assert!(check_url("link", ok).is_ok(), "{ok}");
        }
        for bad in [
            "javascript:alert(1)",
            "https://",
            "https:///path",
            " https://hotel.example",
            "https://hotel.example/a b",
            "https://hotel.example/\njavascript:x",
            "//hotel.example",
            "data:text/html,x",
        ] {
            assert!(check_url("link", bad).is_err(), "{bad:?}");
        }
    }

    fn butler(content: &str) -> pb::SendMessageRequest {
        pb::SendMessageRequest {
            conversation_id: "c".into(),
            role: pb::Role::Assistant as i32,
            content: content.into(),
            ..Default::default()
        }
    }

    #[test]
    fn butler_messages_need_a_butler_role_and_something_to_show() {
        assert!(check_butler_message(&butler("Hello")).is_ok());
        assert!(check_butler_message(&butler("  ")).is_err());
        let mut guest_role = butler("Hello");
        guest_role.role = pb::Role::Guest as i32;
        assert!(check_butler_message(&guest_role).is_err());
    }

    #[test]
    fn buttons_are_checked() {
        let mut req = butler("Menu");
        req.buttons.push(pb::Button {
            r#type: "url".into(),
            label: "Open".into(),
            payload: None,
            url: Some("javascript:alert(1)".into()),
        });
        assert!(check_butler_message(&req).is_err());
        req.buttons[0].url = Some("https://hotel.example/menu".into());
        assert!(check_butler_message(&req).is_ok());
        req.buttons[0].r#type = "call".into();
        assert!(check_butler_message(&req).is_err());
    }

    #[test]
    fn guest_messages_need_an_id_and_content() {
        let mut req = pb::AddGuestMessageRequest {
            client_message_id: "m1".into(),
            content: "hi".into(),
            kind: pb::MessageKind::Text as i32,
            ..Default::default()
        };
        assert!(check_guest_message(&req).is_ok());
        req.client_message_id = String::new();
        assert!(check_guest_message(&req).is_err());
        req.client_message_id = "m1".into();
        req.content = " ".into();
        assert!(check_guest_message(&req).is_err());
    }
}
