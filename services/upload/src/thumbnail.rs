//! Previews of images: a JPEG of at most 320×320, made once when the file is verified.

use image::ImageReader;

/// The longest side of a preview.
pub const SIZE: u32 = 320;
/// Images with more pixels than this get no preview (a tiny file can claim a huge canvas).
const MAX_PIXELS: u64 = 40_000_000;

/// A JPEG preview of an image file, or None when it cannot be made (not decodable, too big).
pub fn make(bytes: &[u8]) -> Option<Vec<u8>> {
    let reader = ImageReader::new(std::io::Cursor::new(bytes)).with_guessed_format().ok()?;
    let (w, h) = reader.into_dimensions().ok()?;
    if u64::from(w) * u64::from(h) > MAX_PIXELS {
        return None;
    }
    let image = ImageReader::new(std::io::Cursor::new(bytes)).with_guessed_format().ok()?.decode().ok()?;
    let preview = image.thumbnail(SIZE, SIZE).to_rgb8();
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 80).encode_image(&preview).ok()?;
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_preview_is_a_small_jpeg() {
        let mut png = Vec::new();
        let big = image::RgbImage::from_fn(1200, 600, |x, _| image::Rgb([(x % 256) as u8, 90, 160]));
        image::DynamicImage::ImageRgb8(big).write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png).unwrap();
        let preview = make(&png).expect("a preview");
        assert_eq!(crate::domain::sniff(&preview), Some("image/jpeg"));
        let decoded = image::load_from_memory(&preview).unwrap();
        assert_eq!((decoded.width(), decoded.height()), (320, 160));
        assert!(make(b"%PDF-1.7 not an image").is_none());
    }
}
