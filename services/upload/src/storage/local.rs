//! Files on the local disk, under one folder; the upload service's HTTP listener takes the
//! browsers' PUTs on signed URLs (see `crate::http`).

use std::io::ErrorKind;
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::AsyncReadExt as _;

use super::{CHUNK, Chunks, Object, StorageError, UploadUrl};
use crate::signing::Signer;

#[derive(Debug, Clone)]
pub struct LocalDisk {
    root: PathBuf,
    public_url: String,
    signer: Signer,
}

fn backend(err: std::io::Error) -> StorageError {
    StorageError::Backend(err.to_string())
}

/// The parts an upload URL's signature covers.
pub fn put_parts<'a>(key: &'a str, content_type: &'a str, size: &'a str, expires: &'a str) -> [&'a str; 5] {
    ["PUT", key, content_type, size, expires]
}

impl LocalDisk {
    pub async fn open(root: PathBuf, public_url: String, signer: Signer) -> std::io::Result<Self> {
        for folder in ["incoming", "files", "thumbs", "tmp"] {
            tokio::fs::create_dir_all(root.join(folder)).await?;
        }
        Ok(Self { root, public_url, signer })
    }

    pub fn signer(&self) -> &Signer {
        &self.signer
    }

    /// The file of a key. Keys are ours (`incoming/att_…`); anything else is refused.
    pub fn path(&self, key: &str) -> Option<PathBuf> {
        let (folder, name) = key.split_once('/')?;
        let safe = matches!(folder, "incoming" | "files" | "thumbs")
            && !name.is_empty()
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        safe.then(|| self.root.join(folder).join(name))
    }

    pub fn presign_put(&self, key: &str, content_type: &str, size: i64, ttl: Duration) -> UploadUrl {
        let expires_at_ms = jack_runtime::time::now_ms() + ttl.as_millis() as i64;
        let (size, expires) = (size.to_string(), expires_at_ms.to_string());
        let signature = self.signer.sign(&put_parts(key, content_type, &size, &expires));
        let url = format!(
            "{}/upload/{key}?type={}&size={size}&expires={expires}&signature={signature}",
            self.public_url,
            content_type.replace('/', "%2F").replace('+', "%2B"),
        );
        UploadUrl { url, expires_at_ms }
    }

    pub async fn get(&self, key: &str, max: u64) -> Result<Option<Object>, StorageError> {
        let Some(path) = self.path(key) else { return Ok(None) };
        let mut file = match tokio::fs::File::open(&path).await {
            Ok(file) => file,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(backend(e)),
        };
        let len = file.metadata().await.map_err(backend)?.len();
        if len > max {
            return Ok(Some(Object::TooBig(len)));
        }
        let mut bytes = Vec::with_capacity(len as usize);
        file.read_to_end(&mut bytes).await.map_err(backend)?;
        Ok(Some(Object::Bytes(bytes.into())))
    }

    pub async fn stream(&self, key: &str) -> Result<Option<(Option<u64>, Chunks)>, StorageError> {
        let Some(path) = self.path(key) else { return Ok(None) };
        let file = match tokio::fs::File::open(&path).await {
            Ok(file) => file,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(backend(e)),
        };
        let len = file.metadata().await.map_err(backend)?.len();
        Ok(Some((Some(len), Box::pin(tokio_util::io::ReaderStream::with_capacity(file, CHUNK)))))
    }

    /// Writes a whole object at once: to a temporary file, then renamed into place.
    pub async fn put(&self, key: &str, bytes: Bytes) -> Result<(), StorageError> {
        let path = self.path(key).ok_or_else(|| StorageError::Backend(format!("bad key {key}")))?;
        let tmp = self.temp_path();
        tokio::fs::write(&tmp, &bytes).await.map_err(backend)?;
        tokio::fs::rename(&tmp, &path).await.map_err(backend)
    }

    pub async fn delete(&self, key: &str) -> Result<(), StorageError> {
        let Some(path) = self.path(key) else { return Ok(()) };
        match tokio::fs::remove_file(path).await {
            Err(e) if e.kind() != ErrorKind::NotFound => Err(backend(e)),
            _ => Ok(()),
        }
    }

    /// A fresh file name in the same file system as the objects (renames stay atomic).
    pub fn temp_path(&self) -> PathBuf {
        self.root.join("tmp").join(jack_runtime::ids::new_id("part"))
    }

    /// Removes temporary files older than `age` (uploads cut off mid-way, a crash mid-write).
    pub async fn remove_stale_parts(&self, age: Duration) {
        let Ok(mut entries) = tokio::fs::read_dir(self.root.join("tmp")).await else { return };
        while let Ok(Some(entry)) = entries.next_entry().await {
            let old = entry
                .metadata()
                .await
                .ok()
                .and_then(|m| m.modified().ok())
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|e| e > age);
            if old {
                let _ = tokio::fs::remove_file(entry.path()).await;
            }
        }
    }
}
