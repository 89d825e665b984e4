//! Download URLs: `{public}/files/{attachment_id}?variant&expires&signature`, signed like the
//! upload URLs and short-lived; the upload service's HTTP listener serves them from either
//! backend with the headers that keep a browser safe (see `crate::http`).

use std::time::Duration;

use jack_proto::upload::v1 as pb;

use crate::signing::Signer;

#[derive(Debug, Clone)]
pub struct Downloads {
    signer: Signer,
    public_url: String,
    ttl: Duration,
}

/// The file itself, or its preview.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    File,
    Thumbnail,
}

impl Variant {
    pub fn name(self) -> &'static str {
        match self {
            Variant::File => "file",
            Variant::Thumbnail => "thumbnail",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "file" => Some(Variant::File),
            "thumbnail" => Some(Variant::Thumbnail),
            _ => None,
        }
    }
}

pub fn get_parts<'a>(attachment_id: &'a str, variant: &'a str, expires: &'a str) -> [&'a str; 4] {
    ["GET", attachment_id, variant, expires]
}

impl Downloads {
    pub fn new(signer: Signer, public_url: String, ttl: Duration) -> Self {
        Self { signer, public_url, ttl }
    }

    pub fn signer(&self) -> &Signer {
        &self.signer
    }

    fn url(&self, attachment_id: &str, variant: Variant, expires: &str) -> String {
        let signature = self.signer.sign(&get_parts(attachment_id, variant.name(), expires));
        format!(
            "{}/files/{attachment_id}?variant={}&expires={expires}&signature={signature}",
            self.public_url,
            variant.name()
        )
    }

    pub fn sign(&self, attachment: &pb::Attachment) -> pb::Download {
        let expires_at_ms = jack_runtime::time::now_ms() + self.ttl.as_millis() as i64;
        let expires = expires_at_ms.to_string();
        pb::Download {
            attachment_id: attachment.attachment_id.clone(),
            url: self.url(&attachment.attachment_id, Variant::File, &expires),
            thumbnail_url: attachment
                .has_thumbnail
                .then(|| self.url(&attachment.attachment_id, Variant::Thumbnail, &expires)),
            expires_at_ms,
            filename: attachment.filename.clone(),
            content_type: attachment.content_type.clone(),
            size: attachment.size,
        }
    }
}
