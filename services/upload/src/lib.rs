//! `jack-upload`: attachment records and upload URLs.
//!
//! This first version keeps honest attachment records: it checks what a guest declares
//! (name, type, size) and records a pending attachment, and it resolves only attachments
//! whose file is stored. No storage backend accepts direct uploads yet (S3 and local disk
//! come with the attachments issue), so `CreateUpload` says so instead of handing out a URL
//! that leads nowhere, and every attachment in a message resolves as missing.
//!
//! - [`domain`]: limits and the content-type allow-list. [`store`]: the `attachments` table.
//! - [`grpc`]: `UploadService`. [`config`] and [`startup`]: settings and start-up.

pub mod config;
pub mod domain;
pub mod grpc;
pub mod startup;
pub mod store;

pub use config::Settings;
pub use startup::UploadServer;
