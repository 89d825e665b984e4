//! Forgets uploads that never became part of a message: a guest asked for a URL (and maybe
//! uploaded) but never sent the message. Their records and uploaded bytes go after a day and
//! a bit — longer than the widget keeps an unsent message (24 h), so a message queued offline
//! still finds its attachment — and half-written upload files after an hour. A URL that
//! expired with nothing uploaded is forgotten within minutes: what was only asked for does not
//! count against a guest's, an address's or a hotel's quota for a day.

use std::time::Duration;

use jack_runtime::CancellationToken;

use crate::domain;
use crate::storage::Storage;
use crate::store::Store;

/// How often the sweep runs.
const EVERY: Duration = Duration::from_secs(60);
/// Room to spare after the latest an upload can end (its URL's expiry, or its body timeout
/// after a start at the last moment; see `crate::http`).
const UPLOAD_GRACE: Duration = Duration::from_secs(60);
/// Pending attachments older than this (past the upload URL's own life) are forgotten.
pub const PENDING_FOR: Duration = Duration::from_secs(25 * 3600);
/// Records handled per sweep, so one sweep stays short.
const BATCH: i64 = 500;

pub async fn run(
    store: Store,
    storage: Storage,
    url_ttl: Duration,
    body_timeout: Duration,
    shutdown: CancellationToken,
) {
    jack_runtime::housekeeping::every(EVERY, shutdown, || async {
        match sweep(&store, &storage, jack_runtime::time::now_ms(), url_ttl, body_timeout).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(forgotten = n, "unsent uploads forgotten"),
            Err(err) => tracing::warn!(error = %err, "upload sweep failed"),
        }
    })
    .await;
}

/// One sweep at `now_ms`: the number of attachments forgotten.
pub async fn sweep(
    store: &Store,
    storage: &Storage,
    now_ms: i64,
    url_ttl: Duration,
    body_timeout: Duration,
) -> anyhow::Result<usize> {
    let mut forgotten = 0;
    // URLs that expired: uploaded ones wait for their message, the others are forgotten.
    let expired = now_ms - (url_ttl + body_timeout + UPLOAD_GRACE).as_millis() as i64;
    loop {
        let unseen = store.unseen_before(expired, BATCH).await?;
        for id in &unseen {
            if storage.exists(&domain::incoming_key(id)).await? {
                store.mark_uploaded(id).await?;
            } else {
                store.forget_pending(id).await?;
                forgotten += 1;
            }
        }
        if unseen.len() < BATCH as usize {
            break;
        }
    }
    let cutoff = now_ms - (PENDING_FOR + url_ttl).as_millis() as i64;
    loop {
        let stale = store.pending_before(cutoff, BATCH).await?;
        for id in &stale {
            storage.delete(&domain::incoming_key(id)).await?;
            store.forget_pending(id).await?;
        }
        forgotten += stale.len();
        if stale.len() < BATCH as usize {
            break;
        }
    }
    if let Storage::Local(disk) = storage {
        disk.remove_stale_parts(Duration::from_secs(3600)).await;
    }
    Ok(forgotten)
}

#[cfg(test)]
mod tests {
    use jack_proto::upload::v1 as pb;
    use jack_runtime::db::Database;

    use super::*;
    use crate::signing::Signer;
    use crate::storage::LocalDisk;

    fn attachment(id: &str, status: &str, created_at_ms: i64) -> pb::Attachment {
        pb::Attachment {
            attachment_id: id.into(),
            hotel_id: "h".into(),
            guest_id: "g".into(),
            filename: "a.png".into(),
            content_type: "image/png".into(),
            size: 3,
            status: status.into(),
            created_at_ms,
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn unsent_uploads_are_forgotten_after_a_day_and_nothing_else_is() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite:{}", dir.path().join("upload.db").display());
        let store =
            Store::new(Database::open(&url, &crate::startup::MIGRATIONS, &crate::startup::MIGRATIONS).await.unwrap());
        let disk = LocalDisk::open(
            dir.path().join("files"),
            "http://x".into(),
            Signer::new("0123456789abcdef0123456789abcdef"),
        )
        .await
        .unwrap();
        let storage = Storage::Local(disk);
        let now = jack_runtime::time::now_ms();
        let day = 24 * 3600 * 1000;
        store.insert(&attachment("att_old", "pending", now - 2 * day)).await.unwrap();
        store.insert(&attachment("att_recent", "pending", now - 3600 * 1000)).await.unwrap();
        store.insert(&attachment("att_sent", "stored", now - 30 * day)).await.unwrap();
        for id in ["att_old", "att_recent"] {
            storage.put(&domain::incoming_key(id), bytes::Bytes::from_static(b"abc"), "image/png").await.unwrap();
        }
        storage.put(&domain::file_key("att_sent"), bytes::Bytes::from_static(b"abc"), "image/png").await.unwrap();

        assert_eq!(sweep(&store, &storage, now, Duration::from_secs(300), Duration::from_secs(30)).await.unwrap(), 1);
        assert!(store.get("att_old").await.unwrap().is_none());
        assert!(storage.get(&domain::incoming_key("att_old"), 10).await.unwrap().is_none());
        assert!(store.get("att_recent").await.unwrap().is_some(), "a message queued offline may still come");
        assert!(storage.get(&domain::incoming_key("att_recent"), 10).await.unwrap().is_some());
        assert!(store.get("att_sent").await.unwrap().is_some(), "a sent attachment is never forgotten");
        assert!(storage.get(&domain::file_key("att_sent"), 10).await.unwrap().is_some());
        assert_eq!(sweep(&store, &storage, now, Duration::from_secs(300), Duration::from_secs(30)).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn an_upload_url_that_expired_unused_is_forgotten_within_minutes() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite:{}", dir.path().join("upload.db").display());
        let store =
            Store::new(Database::open(&url, &crate::startup::MIGRATIONS, &crate::startup::MIGRATIONS).await.unwrap());
        let disk = LocalDisk::open(
            dir.path().join("files"),
            "http://x".into(),
            Signer::new("0123456789abcdef0123456789abcdef"),
        )
        .await
        .unwrap();
        let storage = Storage::Local(disk);
        let now = jack_runtime::time::now_ms();
        let quota = crate::store::Quota {
            files_per_guest: 10,
            bytes_per_guest: 1 << 20,
            bytes_per_address: 1 << 20,
            bytes_per_hotel: 1 << 20,
        };
        let ten_minutes_ago = now - 600 * 1000;
        for id in ["att_unused", "att_uploaded"] {
            assert_eq!(
                store.insert_pending(&attachment(id, "pending", ten_minutes_ago), "192.0.2.1", &quota).await.unwrap(),
                None
            );
        }
        assert_eq!(
            store.insert_pending(&attachment("att_fresh", "pending", now), "192.0.2.1", &quota).await.unwrap(),
            None
        );
        storage
            .put(&domain::incoming_key("att_uploaded"), bytes::Bytes::from_static(b"abc"), "image/png")
            .await
            .unwrap();

        assert_eq!(sweep(&store, &storage, now, Duration::from_secs(300), Duration::from_secs(30)).await.unwrap(), 1);
        assert!(store.get("att_unused").await.unwrap().is_none(), "its URL expired with nothing uploaded");
        assert!(store.get("att_uploaded").await.unwrap().is_some(), "uploaded, it waits for its message");
        assert!(store.get("att_fresh").await.unwrap().is_some(), "its URL still works");
        // Seen once, an uploaded file is not looked for again.
        assert!(store.unseen_before(now, 10).await.unwrap().iter().all(|id| id != "att_uploaded"));
    }
}
