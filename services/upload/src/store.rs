//! The `attachments` table.

use jack_proto::upload::v1 as pb;
use jack_runtime::db::Database;
use sqlx::Row as _;

#[derive(Debug, Clone)]
pub struct Store {
    db: Database,
}

impl Store {
    pub fn new(db: Database) -> Self {
        Self { db }
    }

    pub async fn insert(&self, a: &pb::Attachment) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO attachments (attachment_id, hotel_id, guest_id, filename, content_type, size, status, created_at_ms)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(&a.attachment_id)
        .bind(&a.hotel_id)
        .bind(&a.guest_id)
        .bind(&a.filename)
        .bind(&a.content_type)
        .bind(a.size)
        .bind(&a.status)
        .bind(a.created_at_ms)
        .execute(&self.db.write)
        .await?;
        Ok(())
    }

    /// The guest's attachments among `ids`, whatever their status.
    pub async fn of_guest(&self, hotel_id: &str, guest_id: &str, ids: &[String]) -> Result<Vec<pb::Attachment>, sqlx::Error> {
        let mut found = Vec::new();
        for id in ids {
            let row = sqlx::query(
                "SELECT attachment_id, hotel_id, guest_id, filename, content_type, size, status, created_at_ms
                 FROM attachments WHERE attachment_id = $1 AND hotel_id = $2 AND guest_id = $3",
            )
            .bind(id)
            .bind(hotel_id)
            .bind(guest_id)
            .fetch_optional(&self.db.read)
            .await?;
            if let Some(row) = row {
                found.push(pb::Attachment {
                    attachment_id: row.try_get("attachment_id")?,
                    hotel_id: row.try_get("hotel_id")?,
                    guest_id: row.try_get("guest_id")?,
                    filename: row.try_get("filename")?,
                    content_type: row.try_get("content_type")?,
                    size: row.try_get("size")?,
                    status: row.try_get("status")?,
                    created_at_ms: row.try_get("created_at_ms")?,
                });
            }
        }
        Ok(found)
    }

    /// The file is verified and kept: from now on the attachment can be sent.
    pub async fn mark_stored(&self, attachment_id: &str) -> Result<(), sqlx::Error> {
        sqlx::query("UPDATE attachments SET status = 'stored' WHERE attachment_id = $1").bind(attachment_id).execute(&self.db.write).await?;
        Ok(())
    }

    /// The named secret, created from `fresh` on first use (first writer wins, so every
    /// replica on one database signs alike).
    pub async fn secret(&self, name: &str, fresh: &str) -> Result<String, sqlx::Error> {
        sqlx::query("INSERT INTO service_secrets (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING")
            .bind(name)
            .bind(fresh)
            .execute(&self.db.write)
            .await?;
        sqlx::query("SELECT value FROM service_secrets WHERE name = $1").bind(name).fetch_one(&self.db.write).await?.try_get("value")
    }

    pub async fn close(&self) {
        self.db.close().await;
    }
}
