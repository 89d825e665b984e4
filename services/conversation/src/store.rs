//! Conversations, messages and the outbox. SQL here runs unchanged on SQLite and PostgreSQL.
//!
//! Every write that others must hear about (a message, a read change) adds its outbox row in
//! the same transaction, so an event is announced if and only if its change committed.

use jack_proto::conversation::v1 as pb;
use jack_proto::delivery::v1 as events;
use jack_proto::prost::Message as _;
use jack_runtime::db::{Database, Engine};
use jack_runtime::{ids, time};
use sqlx::any::AnyRow;
use sqlx::{Any, Row as _, Transaction};

use crate::error::ConversationError;

type Result<T, E = ConversationError> = std::result::Result<T, E>;

#[derive(Debug, Clone)]
pub struct Store {
    db: Database,
}

/// What `add_guest_message` did.
#[derive(Debug)]
pub enum Added {
    New(pb::Message),
    Duplicate(pb::Message),
}

macro_rules! select_conversation {
    ($where:literal) => {
        concat!(
            "SELECT conversation_id, hotel_id, guest_id, channel, last_seq, guest_read_seq, butler_read_seq, created_at_ms FROM conversations WHERE ",
            $where
        )
    };
}

macro_rules! select_message {
    ($where:literal) => {
        concat!(
            "SELECT position, message_id, conversation_id, seq, role, kind, content, client_message_id, payload, reply_to_message_id, rich, hotel_id, guest_id, created_at_ms FROM messages WHERE ",
            $where
        )
    };
}

fn conversation_from_row(row: &AnyRow) -> Result<pb::Conversation> {
    Ok(pb::Conversation {
        conversation_id: row.try_get("conversation_id")?,
        hotel_id: row.try_get("hotel_id")?,
        guest_id: row.try_get("guest_id")?,
        channel: row.try_get("channel")?,
        last_seq: row.try_get("last_seq")?,
        guest_read_seq: row.try_get("guest_read_seq")?,
        butler_read_seq: row.try_get("butler_read_seq")?,
        created_at_ms: row.try_get("created_at_ms")?,
    })
}

/// A message row with its global position (the WatchMessages cursor).
pub fn message_from_row(row: &AnyRow) -> Result<(i64, pb::Message)> {
    let rich: Option<Vec<u8>> = row.try_get("rich")?;
    let mut message = match rich {
        Some(bytes) => pb::Message::decode(bytes.as_slice()).map_err(|e| ConversationError::Corrupt(e.to_string()))?,
        None => pb::Message::default(),
    };
    message.message_id = row.try_get("message_id")?;
    message.conversation_id = row.try_get("conversation_id")?;
    message.seq = row.try_get("seq")?;
    message.role = i32::try_from(row.try_get::<i64, _>("role")?).unwrap_or_default();
    message.kind = i32::try_from(row.try_get::<i64, _>("kind")?).unwrap_or_default();
    message.content = row.try_get("content")?;
    message.client_message_id = row.try_get("client_message_id")?;
    message.payload = row.try_get("payload")?;
    message.reply_to_message_id = row.try_get("reply_to_message_id")?;
    message.hotel_id = row.try_get("hotel_id")?;
    message.guest_id = row.try_get("guest_id")?;
    message.created_at_ms = row.try_get("created_at_ms")?;
    Ok((row.try_get("position")?, message))
}

/// The rich parts of a message, stored as one protobuf blob (NULL for plain text).
fn rich_blob(message: &pb::Message) -> Option<Vec<u8>> {
    let rich = pb::Message {
        quick_replies: message.quick_replies.clone(),
        buttons: message.buttons.clone(),
        cards: message.cards.clone(),
        attachments: message.attachments.clone(),
        ..Default::default()
    };
    (rich != pb::Message::default()).then(|| rich.encode_to_vec())
}

pub fn event_for(conversation: &str, hotel_id: &str, guest_id: &str, kind: events::event::Kind) -> events::Event {
    events::Event {
        conversation_id: conversation.to_owned(),
        hotel_id: hotel_id.to_owned(),
        guest_id: guest_id.to_owned(),
        at_ms: time::now_ms(),
        kind: Some(kind),
    }
}

impl Store {
    pub fn new(db: Database) -> Self {
        Self { db }
    }

    pub async fn conversation(&self, conversation_id: &str) -> Result<Option<pb::Conversation>> {
        let row = sqlx::query(select_conversation!("conversation_id = $1")).bind(conversation_id).fetch_optional(&self.db.read).await?;
        row.as_ref().map(conversation_from_row).transpose()
    }

    /// The guest's active conversation on the channel, created when asked and missing.
    pub async fn active_conversation(&self, hotel_id: &str, guest_id: &str, channel: &str, create: bool) -> Result<Option<pb::Conversation>> {
        let find = select_conversation!("guest_id = $1 AND channel = $2 AND status = 'active'");
        let row = sqlx::query(find).bind(guest_id).bind(channel).fetch_optional(&self.db.read).await?;
        if let Some(row) = row {
            return conversation_from_row(&row).map(Some);
        }
        if !create {
            return Ok(None);
        }
        sqlx::query(
            "INSERT INTO conversations (conversation_id, hotel_id, guest_id, channel, status, created_at_ms)
             VALUES ($1, $2, $3, $4, 'active', $5) ON CONFLICT DO NOTHING",
        )
        .bind(ids::new_id("cnv"))
        .bind(hotel_id)
        .bind(guest_id)
        .bind(channel)
        .bind(time::now_ms())
        .execute(&self.db.write)
        .await?;
        let row = sqlx::query(find).bind(guest_id).bind(channel).fetch_optional(&self.db.write).await?;
        row.as_ref().map(conversation_from_row).transpose()
    }

    async fn begin(&self) -> Result<Transaction<'static, Any>> {
        let mut tx = self.db.write.begin().await?;
        if self.db.engine == Engine::Postgres {
            // Message and outbox positions must become visible in order, or a watcher (or
            // the relay, which deletes up to what it published) could pass over a row
            // committed late with a smaller position: serialize these writes.
            sqlx::query("SELECT pg_advisory_xact_lock(7143001)").execute(&mut *tx).await?;
        }
        Ok(tx)
    }

    async fn find_by_client_id(tx: &mut Transaction<'static, Any>, conversation_id: &str, client_message_id: &str) -> Result<Option<pb::Message>> {
        let row = sqlx::query(select_message!("conversation_id = $1 AND client_message_id = $2"))
            .bind(conversation_id)
            .bind(client_message_id)
            .fetch_optional(&mut **tx)
            .await?;
        Ok(row.as_ref().map(message_from_row).transpose()?.map(|(_, m)| m))
    }

    /// Commits messages in one transaction (one disk sync for the whole batch): each gets the
    /// next seq of its conversation and an outbox event. Each item is `(message, owner)`:
    /// `message` carries everything but ids, seq, owner and time, which are filled in here;
    /// when `owner` is given the conversation must belong to that guest. An item refused for
    /// its own reasons (a reused client id, a conversation not found) writes nothing and does
    /// not affect the others; a storage failure fails the whole batch.
    pub async fn add_messages(&self, items: Vec<(pb::Message, Option<String>)>) -> Result<Vec<Result<Added>>> {
        let mut tx = self.begin().await?;
        let mut out = Vec::with_capacity(items.len());
        for (message, owner) in items {
            out.push(Self::add_in(&mut tx, message, owner.as_deref()).await?);
        }
        tx.commit().await?;
        Ok(out)
    }

    /// One message inside a transaction. The outer error is a storage failure; the inner
    /// one a refusal of this message alone, which has written nothing.
    async fn add_in(tx: &mut Transaction<'static, Any>, mut message: pb::Message, owner: Option<&str>) -> Result<Result<Added>> {
        if let Some(client_id) = message.client_message_id.as_deref() {
            if let Some(stored) = Self::find_by_client_id(tx, &message.conversation_id, client_id).await? {
                let same = stored.role == message.role
                    && crate::domain::same_message(&stored, message.kind, &message.content, message.payload.as_deref(), &message.attachments);
                return Ok(if same { Ok(Added::Duplicate(stored)) } else { Err(ConversationError::ClientMessageIdReused) });
            }
        }
        let row = sqlx::query(
            "UPDATE conversations SET last_seq = last_seq + 1 WHERE conversation_id = $1 AND ($2 = '' OR guest_id = $2)
             RETURNING last_seq, hotel_id, guest_id",
        )
        .bind(&message.conversation_id)
        .bind(owner.unwrap_or_default())
        .fetch_optional(&mut **tx)
        .await?;
        let Some(row) = row else {
            return Ok(Err(ConversationError::ConversationNotFound));
        };
        message.seq = row.try_get("last_seq")?;
        message.hotel_id = row.try_get("hotel_id")?;
        message.guest_id = row.try_get("guest_id")?;
        message.message_id = ids::new_id("msg");
        message.created_at_ms = time::now_ms();
        sqlx::query(
            "INSERT INTO messages (message_id, conversation_id, seq, role, kind, content, client_message_id, payload,
                 reply_to_message_id, rich, hotel_id, guest_id, created_at_ms)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
        )
        .bind(&message.message_id)
        .bind(&message.conversation_id)
        .bind(message.seq)
        .bind(i64::from(message.role))
        .bind(i64::from(message.kind))
        .bind(&message.content)
        .bind(&message.client_message_id)
        .bind(&message.payload)
        .bind(&message.reply_to_message_id)
        .bind(rich_blob(&message))
        .bind(&message.hotel_id)
        .bind(&message.guest_id)
        .bind(message.created_at_ms)
        .execute(&mut **tx)
        .await?;
        let event = event_for(&message.conversation_id, &message.hotel_id, &message.guest_id, events::event::Kind::Message(message.clone()));
        sqlx::query("INSERT INTO outbox (event) VALUES ($1)").bind(event.encode_to_vec()).execute(&mut **tx).await?;
        Ok(Ok(Added::New(message)))
    }

    /// Messages after `after_seq` (oldest first) or the page before `before_seq`.
    pub async fn list_messages(&self, conversation_id: &str, after_seq: Option<i64>, before_seq: Option<i64>, limit: u32) -> Result<(Vec<pb::Message>, bool)> {
        let fetch = i64::from(limit) + 1;
        let rows = match after_seq {
            Some(after) => {
                sqlx::query(select_message!("conversation_id = $1 AND seq > $2 ORDER BY seq ASC LIMIT $3"))
                    .bind(conversation_id)
                    .bind(after)
                    .bind(fetch)
                    .fetch_all(&self.db.read)
                    .await?
            }
            None => {
                sqlx::query(select_message!("conversation_id = $1 AND seq < $2 ORDER BY seq DESC LIMIT $3"))
                    .bind(conversation_id)
                    .bind(before_seq.unwrap_or(i64::MAX))
                    .bind(fetch)
                    .fetch_all(&self.db.read)
                    .await?
            }
        };
        let has_more = rows.len() > limit as usize;
        let mut messages = rows.iter().take(limit as usize).map(|r| message_from_row(r).map(|(_, m)| m)).collect::<Result<Vec<_>>>()?;
        if after_seq.is_none() {
            messages.reverse();
        }
        Ok((messages, has_more))
    }

    /// Messages after a global position, for WatchMessages, and the last position scanned
    /// (which moves past messages the filter left out). `roles` is empty for all roles.
    pub async fn messages_after_position(&self, after: i64, roles: &[i32], hotel_id: Option<&str>, limit: u32) -> Result<(Vec<(i64, pb::Message)>, Option<i64>)> {
        let rows = sqlx::query(select_message!("position > $1 ORDER BY position ASC LIMIT $2"))
            .bind(after)
            .bind(i64::from(limit))
            .fetch_all(&self.db.read)
            .await?;
        let mut out = Vec::with_capacity(rows.len());
        let mut last = None;
        for row in &rows {
            let (position, message) = message_from_row(row)?;
            last = Some(position);
            let role_ok = roles.is_empty() || roles.contains(&message.role);
            let hotel_ok = hotel_id.is_none_or(|h| h == message.hotel_id);
            if role_ok && hotel_ok {
                out.push((position, message));
            }
        }
        Ok((out, last))
    }

    /// The newest message position (0 when there are none).
    pub async fn last_position(&self) -> Result<i64> {
        let row = sqlx::query("SELECT COALESCE(MAX(position), 0) AS p FROM messages").fetch_one(&self.db.read).await?;
        Ok(row.try_get("p")?)
    }

    /// Moves a side's read position forward (never back, never past the last message) and
    /// announces the change. Returns the position after the call.
    pub async fn mark_read(&self, conversation: &pb::Conversation, reader: pb::Role, up_to_seq: i64) -> Result<i64> {
        let guest_side = reader == pb::Role::Guest;
        let mut tx = self.begin().await?;
        let sql = if guest_side {
            "UPDATE conversations SET guest_read_seq = $2 WHERE conversation_id = $1 AND guest_read_seq < $2 AND last_seq >= $2"
        } else {
            "UPDATE conversations SET butler_read_seq = $2 WHERE conversation_id = $1 AND butler_read_seq < $2 AND last_seq >= $2"
        };
        let changed = sqlx::query(sql).bind(&conversation.conversation_id).bind(up_to_seq).execute(&mut *tx).await?.rows_affected() == 1;
        if changed {
            let read = events::Read { role: reader as i32, up_to_seq };
            let event = event_for(&conversation.conversation_id, &conversation.hotel_id, &conversation.guest_id, events::event::Kind::Read(read));
            sqlx::query("INSERT INTO outbox (event) VALUES ($1)").bind(event.encode_to_vec()).execute(&mut *tx).await?;
        }
        let row = sqlx::query(select_conversation!("conversation_id = $1")).bind(&conversation.conversation_id).fetch_one(&mut *tx).await?;
        tx.commit().await?;
        let now = conversation_from_row(&row)?;
        Ok(if guest_side { now.guest_read_seq } else { now.butler_read_seq })
    }

    /// The oldest outbox rows, in order.
    pub async fn outbox(&self, limit: u32) -> Result<Vec<(i64, events::Event)>> {
        let rows = sqlx::query("SELECT position, event FROM outbox ORDER BY position ASC LIMIT $1").bind(i64::from(limit)).fetch_all(&self.db.read).await?;
        rows.iter()
            .map(|row| {
                let bytes: Vec<u8> = row.try_get("event")?;
                let event = events::Event::decode(bytes.as_slice()).map_err(|e| ConversationError::Corrupt(e.to_string()))?;
                Ok((row.try_get("position")?, event))
            })
            .collect()
    }

    /// Forgets outbox rows that delivery accepted.
    pub async fn outbox_done(&self, up_to_position: i64) -> Result<()> {
        sqlx::query("DELETE FROM outbox WHERE position <= $1").bind(up_to_position).execute(&self.db.write).await?;
        Ok(())
    }

    pub async fn close(&self) {
        self.db.close().await;
    }
}
