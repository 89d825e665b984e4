//! Any S3-compatible store (AWS, MinIO, Ceph, …) through aws-sdk-s3. Browsers PUT straight to
//! it on presigned URLs whose signature covers the object, the Content-Type and the
//! Content-Length, so the store itself refuses another key, type or size.

use std::time::Duration;

use aws_sdk_s3::Client;
use aws_sdk_s3::config::Region;
use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_s3::primitives::ByteStream;
use bytes::Bytes;

use super::{Chunks, Object, StorageError, UploadUrl};
use crate::config::S3Settings;

#[derive(Debug, Clone)]
pub struct S3Store {
    client: Client,
    /// Signs upload URLs for the endpoint browsers use (the same client when there is one).
    presigner: Client,
    bucket: String,
    prefix: String,
}

fn backend(err: impl std::fmt::Display) -> StorageError {
    StorageError::Backend(err.to_string())
}

impl S3Store {
    /// Credentials and region come from the standard AWS chain (`AWS_ACCESS_KEY_ID`,
    /// `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, profiles, web identity, instance roles);
    /// `UPLOAD_S3_*` adds the bucket, an endpoint, a region override and path-style.
    pub async fn connect(settings: &S3Settings) -> Self {
        let shared = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
        let mut config = aws_sdk_s3::config::Builder::from(&shared).force_path_style(settings.path_style);
        if let Some((id, secret)) = &settings.credentials {
            config = config.credentials_provider(aws_sdk_s3::config::Credentials::new(
                id,
                secret,
                None,
                None,
                "UPLOAD_S3_ACCESS_KEY_ID",
            ));
        }
        if let Some(endpoint) = &settings.endpoint {
            config = config.endpoint_url(endpoint);
        }
        match (&settings.region, shared.region()) {
            (Some(region), _) => config = config.region(Region::new(region.clone())),
            (None, None) => config = config.region(Region::new("us-east-1")),
            (None, Some(_)) => {}
        }
        let config = config.build();
        let presigner = match &settings.public_endpoint {
            Some(public) => Client::from_conf(config.to_builder().endpoint_url(public).build()),
            None => Client::from_conf(config.clone()),
        };
        Self {
            client: Client::from_conf(config),
            presigner,
            bucket: settings.bucket.clone(),
            prefix: settings.prefix.clone(),
        }
    }

    fn key(&self, key: &str) -> String {
        if self.prefix.is_empty() { key.to_owned() } else { format!("{}/{key}", self.prefix) }
    }

    pub async fn presign_put(
        &self,
        key: &str,
        content_type: &str,
        size: i64,
        ttl: Duration,
    ) -> Result<UploadUrl, StorageError> {
        let expires_at_ms = jack_runtime::time::now_ms() + ttl.as_millis() as i64;
        let presigned = self
            .presigner
            .put_object()
            .bucket(&self.bucket)
            .key(self.key(key))
            .content_type(content_type)
            .content_length(size)
            .presigned(PresigningConfig::expires_in(ttl).map_err(backend)?)
            .await
            .map_err(backend)?;
        Ok(UploadUrl { url: presigned.uri().to_owned(), expires_at_ms })
    }

    pub async fn get(&self, key: &str, max: u64) -> Result<Option<Object>, StorageError> {
        let result = self.client.get_object().bucket(&self.bucket).key(self.key(key)).send().await;
        let output = match result {
            Ok(output) => output,
            Err(err) if err.as_service_error().is_some_and(|e| e.is_no_such_key()) => return Ok(None),
            Err(err) => return Err(backend(aws_sdk_s3::error::DisplayErrorContext(err))),
        };
        let len = output.content_length().unwrap_or(0).max(0) as u64;
        if len > max {
            return Ok(Some(Object::TooBig(len)));
        }
        let bytes = output.body.collect().await.map_err(backend)?.into_bytes();
        Ok(Some(Object::Bytes(bytes)))
    }

    pub async fn stream(&self, key: &str) -> Result<Option<(Option<u64>, Chunks)>, StorageError> {
        let result = self.client.get_object().bucket(&self.bucket).key(self.key(key)).send().await;
        let output = match result {
            Ok(output) => output,
            Err(err) if err.as_service_error().is_some_and(|e| e.is_no_such_key()) => return Ok(None),
            Err(err) => return Err(backend(aws_sdk_s3::error::DisplayErrorContext(err))),
        };
        let len = output.content_length().and_then(|l| u64::try_from(l).ok());
        // The store's answer is read as the client takes it.
        let chunks = futures_util::stream::unfold(output.body, |mut body| async move {
            body.next().await.map(|chunk| (chunk.map_err(std::io::Error::other), body))
        });
        Ok(Some((len, Box::pin(chunks))))
    }

    pub async fn exists(&self, key: &str) -> Result<bool, StorageError> {
        match self.client.head_object().bucket(&self.bucket).key(self.key(key)).send().await {
            Ok(_) => Ok(true),
            Err(err) if err.as_service_error().is_some_and(|e| e.is_not_found()) => Ok(false),
            Err(err) => Err(backend(aws_sdk_s3::error::DisplayErrorContext(err))),
        }
    }

    pub async fn put(&self, key: &str, bytes: Bytes, content_type: &str) -> Result<(), StorageError> {
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(self.key(key))
            .content_type(content_type)
            .body(ByteStream::from(bytes))
            .send()
            .await
            .map_err(|e| backend(aws_sdk_s3::error::DisplayErrorContext(e)))?;
        Ok(())
    }

    pub async fn delete(&self, key: &str) -> Result<(), StorageError> {
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(self.key(key))
            .send()
            .await
            .map_err(|e| backend(aws_sdk_s3::error::DisplayErrorContext(e)))?;
        Ok(())
    }
}
