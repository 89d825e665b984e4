//! `jack-upload`: attachments. A guest declares a file (name, type, size); the service
//! records it and answers with a URL that accepts exactly that file, once, for a few
//! minutes. When a message carries the attachment, the uploaded bytes are checked (present,
//! of the declared size, of the declared type by their magic bytes) and kept under a key no
//! upload URL can reach, with a preview for images; only then does the message go through.
//! The participants of its conversation get short-lived download URLs; the butler side can
//! send files too.
//!
//! - [`domain`]: limits, the allow-list, object keys, the check of a file's bytes.
//! - [`storage`]: the local disk (embedded default) and S3-compatible stores.
//! - [`signing`]: signed URLs. [`http`]: where browsers PUT files (local backend) and
//!   download them (both). [`downloads`]: download URLs. [`thumbnail`]: image previews.
//! - [`store`]: the `attachments` table. [`grpc`]: `UploadService`. [`janitor`]: forgets
//!   uploads never sent in a message.
//! - [`config`] and [`startup`]: settings and start-up.

pub mod config;
pub mod domain;
pub mod downloads;
pub mod grpc;
pub mod http;
pub mod janitor;
pub mod signing;
pub mod startup;
pub mod storage;
pub mod store;
pub mod thumbnail;

pub use config::Settings;
pub use startup::UploadServer;
