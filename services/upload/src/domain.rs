//! The rules of attachments. No I/O.

pub const MAX_FILENAME: usize = 255;

#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    Filename,
    Size { max: u64 },
    ContentType,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Filename => {
                write!(f, "filename must be 1 to {MAX_FILENAME} characters without control characters")
            }
            Refusal::Size { max } => write!(f, "size must be from 1 to {max} bytes"),
            Refusal::ContentType => f.write_str("this file type is not allowed"),
        }
    }
}

/// Characters that reorder the text around them (Unicode's Bidi_Control): in a filename they
/// can make `invoice\u{202E}fdp.exe` read as `invoiceexe.pdf`. They are dropped from names.
const BIDI_CONTROLS: [char; 12] = [
    '\u{061C}', '\u{200E}', '\u{200F}', '\u{202A}', '\u{202B}', '\u{202C}', '\u{202D}', '\u{202E}', '\u{2066}',
    '\u{2067}', '\u{2068}', '\u{2069}',
];

/// The name a file is kept and shown under: what was given, without characters that reorder
/// the text around them.
pub fn clean_filename(filename: &str) -> String {
    filename.chars().filter(|c| !BIDI_CONTROLS.contains(c)).collect()
}

/// What a guest may declare for an upload.
pub fn check_upload(
    filename: &str,
    content_type: &str,
    size: i64,
    max: u64,
    allowed: &[String],
) -> Result<(), Refusal> {
    if filename.trim().is_empty() || filename.chars().count() > MAX_FILENAME || filename.chars().any(char::is_control) {
        return Err(Refusal::Filename);
    }
    if size <= 0 || size as u64 > max {
        return Err(Refusal::Size { max });
    }
    let content_type = content_type.trim().to_ascii_lowercase();
    if !allowed.contains(&content_type) {
        return Err(Refusal::ContentType);
    }
    Ok(())
}

/// Where the browser uploads an attachment: never the place it is kept, so nothing written
/// with an upload URL after the check can change the checked file.
pub fn incoming_key(attachment_id: &str) -> String {
    format!("incoming/{attachment_id}")
}

/// Where a verified attachment is kept. Keys hold only our own ids, never a user's filename.
pub fn file_key(attachment_id: &str) -> String {
    format!("files/{attachment_id}")
}

/// A verified image's preview.
pub fn thumbnail_key(attachment_id: &str) -> String {
    format!("thumbs/{attachment_id}")
}

/// Types a browser may show inline; anything else is served as a download.
const INLINE: [&str; 4] = ["image/png", "image/jpeg", "image/gif", "image/webp"];

pub fn served_inline(content_type: &str) -> bool {
    INLINE.contains(&content_type)
}

/// `Content-Disposition` for a download: `inline` for the images above, else `attachment`;
/// the name in plain ASCII (anything else replaced) and in full as RFC 5987 UTF-8.
pub fn content_disposition(content_type: &str, filename: &str) -> String {
    let kind = if served_inline(content_type) { "inline" } else { "attachment" };
    let ascii: String =
        filename.chars().map(|c| if c.is_ascii_alphanumeric() || " .-_()".contains(c) { c } else { '_' }).collect();
    let encoded: String = filename
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    format!("{kind}; filename=\"{ascii}\"; filename*=UTF-8''{encoded}")
}

/// Why an uploaded file is not the one that was declared.
#[derive(Debug, PartialEq, Eq)]
pub enum Mismatch {
    Size { declared: i64, actual: u64 },
    Type { declared: String, actual: Option<&'static str> },
}

impl std::fmt::Display for Mismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Mismatch::Size { declared, actual } => write!(f, "the file is {actual} bytes, not the {declared} declared"),
            Mismatch::Type { declared, actual: Some(actual) } => {
                write!(f, "the file is {actual}, not the {declared} declared")
            }
            Mismatch::Type { declared, actual: None } => write!(f, "the file's bytes are not {declared}"),
        }
    }
}

/// The file's type by its first bytes (its "magic"), not by what anyone says it is.
pub fn sniff(bytes: &[u8]) -> Option<&'static str> {
    infer::get(bytes).map(|kind| kind.mime_type())
}

/// Whether the uploaded bytes are what was declared: the size, and the type by content.
pub fn check_file(declared_type: &str, declared_size: i64, bytes: &[u8]) -> Result<(), Mismatch> {
    if bytes.len() as u64 != declared_size as u64 {
        return Err(Mismatch::Size { declared: declared_size, actual: bytes.len() as u64 });
    }
    let actual = sniff(bytes);
    if actual != Some(declared_type) {
        return Err(Mismatch::Type { declared: declared_type.to_owned(), actual });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2_000, failure_persistence: None, ..ProptestConfig::default() })]

        /// Whatever a guest names a file, the download's header is a valid, single header
        /// value, and what is shown has no reordering characters.
        #[test]
        fn any_filename_makes_a_safe_content_disposition(name in "\\PC{0,80}|[\\x00-\\x7f\\u{202A}-\\u{202E}\\u{2066}-\\u{2069}]{0,40}", image in any::<bool>()) {
            let cleaned = clean_filename(&name);
            prop_assert!(!cleaned.chars().any(|c| BIDI_CONTROLS.contains(&c)));
            let header = content_disposition(if image { "image/png" } else { "application/pdf" }, &cleaned);
            prop_assert!(http::HeaderValue::from_str(&header).is_ok(), "{header:?}");
            prop_assert!(header.bytes().all(|b| (0x20..0x7f).contains(&b)), "{header:?}");
            prop_assert_eq!(header.matches("filename=").count(), 1);
        }
    }

    #[test]
    fn reordering_characters_are_dropped_from_names() {
        assert_eq!(clean_filename("invoice\u{202E}fdp.exe"), "invoicefdp.exe");
        assert_eq!(clean_filename("\u{2067}report\u{2069}.pdf"), "report.pdf");
        assert_eq!(clean_filename("фото отпуска.jpg"), "фото отпуска.jpg");
    }

    #[test]
    fn declared_uploads_are_checked() {
        let allowed = vec!["image/png".to_owned()];
        assert_eq!(check_upload("a.png", "image/png", 10, 100, &allowed), Ok(()));
        assert_eq!(check_upload("a.png", "image/PNG", 10, 100, &allowed), Ok(()));
        assert_eq!(check_upload("a.png", "image/png", 101, 100, &allowed), Err(Refusal::Size { max: 100 }));
        assert_eq!(check_upload("a.png", "image/png", 0, 100, &allowed), Err(Refusal::Size { max: 100 }));
        assert_eq!(check_upload("a.svg", "image/svg+xml", 10, 100, &allowed), Err(Refusal::ContentType));
        assert_eq!(check_upload("", "image/png", 10, 100, &allowed), Err(Refusal::Filename));
    }

    #[test]
    fn only_images_are_shown_inline_and_names_cannot_break_the_header() {
        assert_eq!(
            content_disposition("image/png", "room.png"),
            "inline; filename=\"room.png\"; filename*=UTF-8''room.png"
        );
        let pdf = content_disposition("application/pdf", "menu \"spa\";\r\n.pdf");
        assert!(pdf.starts_with("attachment; filename=\"menu _spa____.pdf\""), "{pdf}");
        assert!(!pdf.contains('\r') && !pdf.contains('\n'));
        assert!(content_disposition("application/pdf", "carta ñ.pdf").ends_with("filename*=UTF-8''carta%20%C3%B1.pdf"));
    }

    #[test]
    fn files_are_judged_by_their_bytes() {
        let png = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0\0\x01\0\0\0\x01\x08\x06\0\0\0";
        assert_eq!(check_file("image/png", png.len() as i64, png), Ok(()));
        assert_eq!(check_file("image/png", 99, png), Err(Mismatch::Size { declared: 99, actual: png.len() as u64 }));
        let html = b"<html><script>alert(1)</script></html>";
        assert_eq!(
            check_file("image/png", html.len() as i64, html),
            Err(Mismatch::Type { declared: "image/png".into(), actual: Some("text/html") })
        );
        assert_eq!(
            check_file("image/png", 5, b"hello"),
            Err(Mismatch::Type { declared: "image/png".into(), actual: None })
        );
        assert_eq!(
            Mismatch::Type { declared: "image/png".into(), actual: None }.to_string(),
            "the file's bytes are not image/png"
        );
        let svg = b"<svg xmlns=\"http://www.w3.org/2000/svg\" onload=\"alert(1)\"/>";
        assert!(check_file("image/png", svg.len() as i64, svg).is_err());
        assert_eq!(
            check_file("application/pdf", png.len() as i64, png),
            Err(Mismatch::Type { declared: "application/pdf".into(), actual: Some("image/png") })
        );
        assert_eq!(sniff(b"%PDF-1.7\n"), Some("application/pdf"));
    }
}
