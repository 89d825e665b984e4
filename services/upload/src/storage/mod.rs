//! Where attachment files live: the local disk (the embedded default) or any S3-compatible
//! store. Both hand out upload URLs bound to one object, type and size, and read and write
//! objects for verification.

pub mod local;
mod s3;

use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;

pub use local::LocalDisk;
pub use s3::S3Store;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("file storage failed: {0}")]
    Backend(String),
}

/// A URL a browser PUTs one file to.
#[derive(Debug, Clone)]
pub struct UploadUrl {
    pub url: String,
    pub expires_at_ms: i64,
}

#[derive(Debug, Clone)]
pub enum Storage {
    Local(LocalDisk),
    S3(S3Store),
}

impl Storage {
    pub async fn presign_put(
        &self,
        key: &str,
        content_type: &str,
        size: i64,
        ttl: Duration,
    ) -> Result<UploadUrl, StorageError> {
        match self {
            Storage::Local(disk) => Ok(disk.presign_put(key, content_type, size, ttl)),
            Storage::S3(s3) => s3.presign_put(key, content_type, size, ttl).await,
        }
    }

    /// The whole object, when it exists and is at most `max` bytes; a bigger one is
    /// reported by its size without being read.
    pub async fn get(&self, key: &str, max: u64) -> Result<Option<Object>, StorageError> {
        match self {
            Storage::Local(disk) => disk.get(key, max).await,
            Storage::S3(s3) => s3.get(key, max).await,
        }
    }

    /// The object as a stream of chunks, read as the client takes them, and its size when known.
    pub async fn stream(&self, key: &str) -> Result<Option<(Option<u64>, Chunks)>, StorageError> {
        match self {
            Storage::Local(disk) => disk.stream(key).await,
            Storage::S3(s3) => s3.stream(key).await,
        }
    }

    /// Whether the object exists.
    pub async fn exists(&self, key: &str) -> Result<bool, StorageError> {
        match self {
            Storage::Local(disk) => Ok(disk.path(key).is_some_and(|p| p.exists())),
            Storage::S3(s3) => s3.exists(key).await,
        }
    }

    pub async fn put(&self, key: &str, bytes: Bytes, content_type: &str) -> Result<(), StorageError> {
        match self {
            Storage::Local(disk) => disk.put(key, bytes).await,
            Storage::S3(s3) => s3.put(key, bytes, content_type).await,
        }
    }

    pub async fn delete(&self, key: &str) -> Result<(), StorageError> {
        match self {
            Storage::Local(disk) => disk.delete(key).await,
            Storage::S3(s3) => s3.delete(key).await,
        }
    }
}

/// An object being read, chunk by chunk.
pub type Chunks = Pin<Box<dyn futures_util::Stream<Item = std::io::Result<Bytes>> + Send>>;

/// How much of an object is read at a time when it is streamed.
const CHUNK: usize = 64 * 1024;

#[derive(Debug)]
pub enum Object {
    /// The object's bytes.
    Bytes(Bytes),
    /// Too big to read: its size.
    TooBig(u64),
}
