//! What a guest may declare for an upload. No I/O.

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
            Refusal::Filename => write!(f, "filename must be 1 to {MAX_FILENAME} characters without control characters"),
            Refusal::Size { max } => write!(f, "size must be from 1 to {max} bytes"),
            Refusal::ContentType => f.write_str("this file type is not allowed"),
        }
    }
}

pub fn check_upload(filename: &str, content_type: &str, size: i64, max: u64, allowed: &[String]) -> Result<(), Refusal> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
