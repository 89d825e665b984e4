//! The `attachments` table.

use jack_proto::upload::v1 as pb;
use jack_runtime::db::{Database, Engine};
use sqlx::Row as _;

/// `SELECT` of every column of `attachments`, with a `WHERE` clause: still a static string.
macro_rules! select_where {
    ($($condition:literal),+) => {
        concat!(
            "SELECT attachment_id, hotel_id, guest_id, filename, content_type, size, status, created_at_ms, conversation_id, has_thumbnail FROM attachments WHERE ",
            $($condition),+
        )
    };
}

/// [`select_where!`] for the attachments among a JSON array of ids bound as `$1` (see
/// [`id_list`]), in each engine's words, and then `$condition`.
macro_rules! select_among_ids {
    ($engine:expr, $condition:literal) => {
        match $engine {
            Engine::Sqlite => select_where!("attachment_id IN (SELECT value FROM json_each($1)) AND ", $condition),
            Engine::Postgres => {
                select_where!("attachment_id IN (SELECT json_array_elements_text($1::json)) AND ", $condition)
            }
        }
    };
}

fn attachment(row: &sqlx::any::AnyRow) -> Result<pb::Attachment, sqlx::Error> {
    Ok(pb::Attachment {
        attachment_id: row.try_get("attachment_id")?,
        hotel_id: row.try_get("hotel_id")?,
        guest_id: row.try_get("guest_id")?,
        filename: row.try_get("filename")?,
        content_type: row.try_get("content_type")?,
        size: row.try_get("size")?,
        status: row.try_get("status")?,
        created_at_ms: row.try_get("created_at_ms")?,
        conversation_id: row.try_get::<Option<String>, _>("conversation_id")?.unwrap_or_default(),
        has_thumbnail: row.try_get::<i64, _>("has_thumbnail")? != 0,
    })
}

/// Ids as one JSON array, bound as a single parameter: one statement (and one read) for any
/// number of ids — a page of history can carry dozens of attachments.
fn id_list(ids: &[String]) -> String {
    serde_json::to_string(ids).expect("a list of strings is JSON")
}

/// Inserts an attachment; `client_address` for one asked for by a guest (an upload URL, whose
/// file is not seen yet), `None` for one stored at once.
async fn insert_on(
    conn: &mut sqlx::AnyConnection,
    a: &pb::Attachment,
    client_address: Option<&str>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO attachments (attachment_id, hotel_id, guest_id, filename, content_type, size, status, created_at_ms, conversation_id, has_thumbnail, client_address, uploaded)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
    )
    .bind(&a.attachment_id)
    .bind(&a.hotel_id)
    .bind(&a.guest_id)
    .bind(&a.filename)
    .bind(&a.content_type)
    .bind(a.size)
    .bind(&a.status)
    .bind(a.created_at_ms)
    .bind(Some(&a.conversation_id).filter(|c| !c.is_empty()))
    .bind(i64::from(a.has_thumbnail))
    .bind(client_address)
    .bind(i64::from(client_address.is_none()))
    .execute(conn)
    .await?;
    Ok(())
}

/// How much may wait to be sent: attachments asked for (and maybe uploaded) but not yet part
/// of a message. They are forgotten after a day and a bit (see `crate::janitor`).
#[derive(Debug, Clone, Copy)]
pub struct Quota {
    pub files_per_guest: u64,
    pub bytes_per_guest: u64,
    pub bytes_per_address: u64,
    pub bytes_per_hotel: u64,
}

/// Which part of the [`Quota`] a new attachment would go past.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exceeded {
    GuestFiles,
    GuestBytes,
    AddressBytes,
    HotelBytes,
}

#[derive(Debug, Clone)]
pub struct Store {
    db: Database,
}

impl Store {
    pub fn new(db: Database) -> Self {
        Self { db }
    }

    /// Whether the database answers (readiness).
    pub async fn answers(&self) -> bool {
        self.db.answers().await
    }

    /// Records a pending attachment unless its guest, or its hotel, already has as much waiting
    /// as `quota` allows; the quota exceeded when it was not recorded. Guests are checked one at
    /// a time (SQLite has one writer; on PostgreSQL a lock per guest), so concurrent requests
    /// cannot slip past the quota together.
    pub async fn insert_pending(
        &self,
        a: &pb::Attachment,
        client_address: &str,
        quota: &Quota,
    ) -> Result<Option<Exceeded>, sqlx::Error> {
        let mut tx = self.db.write.begin().await?;
        if self.db.engine == Engine::Postgres {
            sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))").bind(&a.guest_id).execute(&mut *tx).await?;
        }
        let row = sqlx::query(
            "SELECT (SELECT COUNT(*) FROM attachments WHERE guest_id = $1 AND status = 'pending') AS files,
                    (SELECT CAST(COALESCE(SUM(size), 0) AS BIGINT) FROM attachments WHERE guest_id = $1 AND status = 'pending') AS guest_bytes,
                    (SELECT CAST(COALESCE(SUM(size), 0) AS BIGINT) FROM attachments WHERE client_address = $3 AND status = 'pending') AS address_bytes,
                    (SELECT CAST(COALESCE(SUM(size), 0) AS BIGINT) FROM attachments WHERE hotel_id = $2 AND status = 'pending') AS hotel_bytes",
        )
        .bind(&a.guest_id)
        .bind(&a.hotel_id)
        .bind(client_address)
        .fetch_one(&mut *tx)
        .await?;
        let files: i64 = row.try_get("files")?;
        let bytes = |column: &str| row.try_get::<i64, _>(column).map(|b| (b + a.size) as u64);
        let exceeded = if files as u64 >= quota.files_per_guest {
            Some(Exceeded::GuestFiles)
        } else if bytes("guest_bytes")? > quota.bytes_per_guest {
            Some(Exceeded::GuestBytes)
        } else if !client_address.is_empty() && bytes("address_bytes")? > quota.bytes_per_address {
            Some(Exceeded::AddressBytes)
        } else if bytes("hotel_bytes")? > quota.bytes_per_hotel {
            Some(Exceeded::HotelBytes)
        } else {
            None
        };
        if exceeded.is_none() {
            insert_on(&mut tx, a, Some(client_address)).await?;
        }
        tx.commit().await?;
        Ok(exceeded)
    }

    pub async fn insert(&self, a: &pb::Attachment) -> Result<(), sqlx::Error> {
        let mut conn = self.db.write.acquire().await?;
        insert_on(&mut conn, a, None).await
    }

    /// The guest's attachments among `ids`, whatever their status.
    pub async fn of_guest(
        &self,
        hotel_id: &str,
        guest_id: &str,
        ids: &[String],
    ) -> Result<Vec<pb::Attachment>, sqlx::Error> {
        let sql = select_among_ids!(self.db.engine, "hotel_id = $2 AND guest_id = $3");
        let rows = sqlx::query(sql).bind(id_list(ids)).bind(hotel_id).bind(guest_id).fetch_all(&self.db.read).await?;
        rows.iter().map(attachment).collect()
    }

    /// The stored attachments among `ids` that messages of this conversation carry.
    pub async fn of_conversation(
        &self,
        conversation_id: &str,
        ids: &[String],
    ) -> Result<Vec<pb::Attachment>, sqlx::Error> {
        let sql = select_among_ids!(self.db.engine, "conversation_id = $2 AND status = 'stored'");
        let rows = sqlx::query(sql).bind(id_list(ids)).bind(conversation_id).fetch_all(&self.db.read).await?;
        rows.iter().map(attachment).collect()
    }

    /// One attachment by id (for a signed download).
    pub async fn get(&self, attachment_id: &str) -> Result<Option<pb::Attachment>, sqlx::Error> {
        let row =
            sqlx::query(select_where!("attachment_id = $1")).bind(attachment_id).fetch_optional(&self.db.read).await?;
        row.map(|r| attachment(&r)).transpose()
    }

    /// The file is verified and kept: from now on the attachment can be sent, and the
    /// participants of its conversation may download it.
    pub async fn mark_stored(
        &self,
        attachment_id: &str,
        conversation_id: &str,
        has_thumbnail: bool,
    ) -> Result<(), sqlx::Error> {
        sqlx::query("UPDATE attachments SET status = 'stored', conversation_id = COALESCE(conversation_id, $2), has_thumbnail = $3 WHERE attachment_id = $1")
            .bind(attachment_id)
            .bind(Some(conversation_id).filter(|c| !c.is_empty()))
            .bind(i64::from(has_thumbnail))
            .execute(&self.db.write)
            .await?;
        Ok(())
    }

    /// A stored attachment sent in a message for the first time: bound to that conversation.
    pub async fn bind_conversation(&self, attachment_id: &str, conversation_id: &str) -> Result<(), sqlx::Error> {
        if conversation_id.is_empty() {
            return Ok(());
        }
        sqlx::query("UPDATE attachments SET conversation_id = $2 WHERE attachment_id = $1 AND conversation_id IS NULL")
            .bind(attachment_id)
            .bind(conversation_id)
            .execute(&self.db.write)
            .await?;
        Ok(())
    }

    /// Attachments still pending (never sent in a message) created before `cutoff_ms`.
    pub async fn pending_before(&self, cutoff_ms: i64, limit: i64) -> Result<Vec<String>, sqlx::Error> {
        let rows = sqlx::query("SELECT attachment_id FROM attachments WHERE status = 'pending' AND created_at_ms < $1 ORDER BY created_at_ms LIMIT $2")
            .bind(cutoff_ms)
            .bind(limit)
            .fetch_all(&self.db.read)
            .await?;
        rows.iter().map(|r| r.try_get("attachment_id")).collect()
    }

    /// Pending attachments asked for before `cutoff_ms` whose file has not been seen yet.
    pub async fn unseen_before(&self, cutoff_ms: i64, limit: i64) -> Result<Vec<String>, sqlx::Error> {
        let rows = sqlx::query("SELECT attachment_id FROM attachments WHERE status = 'pending' AND uploaded = 0 AND created_at_ms < $1 ORDER BY created_at_ms LIMIT $2")
            .bind(cutoff_ms)
            .bind(limit)
            .fetch_all(&self.db.read)
            .await?;
        rows.iter().map(|r| r.try_get("attachment_id")).collect()
    }

    /// The attachment's file has been uploaded: it may wait to be sent for the usual while.
    pub async fn mark_uploaded(&self, attachment_id: &str) -> Result<(), sqlx::Error> {
        sqlx::query("UPDATE attachments SET uploaded = 1 WHERE attachment_id = $1")
            .bind(attachment_id)
            .execute(&self.db.write)
            .await?;
        Ok(())
    }

    /// Deletes a pending attachment's record (a stored one is never touched).
    pub async fn forget_pending(&self, attachment_id: &str) -> Result<(), sqlx::Error> {
        sqlx::query("DELETE FROM attachments WHERE attachment_id = $1 AND status = 'pending'")
            .bind(attachment_id)
            .execute(&self.db.write)
            .await?;
        Ok(())
    }

    /// The named secret (see `Database::secret`).
    pub async fn secret(&self, name: &str) -> Result<String, sqlx::Error> {
        self.db.secret(name).await
    }

    pub async fn close(&self) {
        self.db.close().await;
    }
}
