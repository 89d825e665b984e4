//! Wire conversions: conversation's protobuf messages into protocol v1 frames.

use jack_frames::server as frames;
use jack_proto::conversation::v1 as pb;
use jack_runtime::time::rfc3339_ms;

pub fn role(role: i32) -> frames::Role {
    match pb::Role::try_from(role) {
        Ok(pb::Role::Assistant) => frames::Role::Assistant,
        Ok(pb::Role::Staff) => frames::Role::Staff,
        _ => frames::Role::Guest,
    }
}

fn button(b: &pb::Button) -> frames::Button {
    frames::Button { kind: b.r#type.clone(), label: b.label.clone(), payload: b.payload.clone(), url: b.url.clone() }
}

pub fn message(m: &pb::Message) -> frames::Message {
    let is_guest = m.role == pb::Role::Guest as i32;
    frames::Message {
        message_id: m.message_id.clone(),
        seq: m.seq,
        conversation_id: m.conversation_id.clone(),
        role: role(m.role),
        content: m.content.clone(),
        quick_replies: m
            .quick_replies
            .iter()
            .map(|q| frames::QuickReply { label: q.label.clone(), payload: q.payload.clone() })
            .collect(),
        buttons: m.buttons.iter().map(button).collect(),
        cards: m
            .cards
            .iter()
            .map(|c| frames::Card {
                title: c.title.clone(),
                subtitle: c.subtitle.clone(),
                image_url: c.image_url.clone(),
                buttons: c.buttons.iter().map(button).collect(),
            })
            .collect(),
        attachments: m
            .attachments
            .iter()
            .map(|a| frames::Attachment {
                id: a.attachment_id.clone(),
                filename: a.filename.clone(),
                content_type: a.content_type.clone(),
                size: a.size,
                url: None,
                thumbnail_url: None,
                expires_at: None,
            })
            .collect(),
        // Only the guest's own tabs learn their client ids back; butler ids stay internal.
        client_message_id: if is_guest { m.client_message_id.clone() } else { None },
        payload: if is_guest { m.payload.clone() } else { None },
        timestamp: rfc3339_ms(m.created_at_ms),
    }
}
