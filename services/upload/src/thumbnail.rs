//! Previews of images: a JPEG of at most 320×320, made once when the file is verified.
//!
//! A small file can describe a huge canvas (a few hundred KB of PNG decode to hundreds of MB),
//! so what decoding may allocate is bounded by bytes, not pixels: the decoder's limits refuse
//! an image from its header, before its pixels are allocated, and such an image gets no preview.

use image::{ImageReader, Limits};

/// The longest side of a preview.
pub const SIZE: u32 = 320;

/// A JPEG preview of an image file, or None when it cannot be made (not decodable, or it would
/// take more than `max_decoded` bytes to decode).
pub fn make(bytes: &[u8], max_decoded: u64) -> Option<Vec<u8>> {
    let mut reader = ImageReader::new(std::io::Cursor::new(bytes)).with_guessed_format().ok()?;
    let mut limits = Limits::default();
    limits.max_alloc = Some(max_decoded);
    reader.limits(limits);
    let image = reader.decode().ok()?;
    let preview = image.thumbnail(SIZE, SIZE).to_rgb8();
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 80).encode_image(&preview).ok()?;
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 16-bit RGBA PNG of zeros, written row by row (its pixels are never all in memory).
    fn huge_png(width: u32, height: u32) -> Vec<u8> {
        use std::io::Write as _;
        let mut out = Vec::new();
        let mut encoder = png::Encoder::new(&mut out, width, height);
        encoder.set_color(png::ColorType::Rgba);
        encoder.set_depth(png::BitDepth::Sixteen);
        encoder.set_compression(png::Compression::Fastest);
        let mut writer = encoder.write_header().unwrap();
        let mut rows = writer.stream_writer().unwrap();
        let row = vec![0u8; width as usize * 8];
        for _ in 0..height {
            rows.write_all(&row).unwrap();
        }
        rows.finish().unwrap();
        writer.finish().unwrap();
        out
    }

    #[test]
    fn an_image_that_would_decode_past_the_limit_gets_no_preview() {
        // 3000×3000 at 8 bytes a pixel: 72 MB decoded from a file of a few hundred KB.
        let png = huge_png(3000, 3000);
        assert!(png.len() < 2 << 20, "{} bytes", png.len());
        assert!(make(&png, 64 << 20).is_none());
        // The same file is previewed when the limit allows it; so is an ordinary photo.
        let small = huge_png(400, 300);
        assert!(make(&small, 64 << 20).is_some());
    }

    #[test]
    fn a_preview_is_a_small_jpeg() {
        let mut png = Vec::new();
        let big = image::RgbImage::from_fn(1200, 600, |x, _| image::Rgb([(x % 256) as u8, 90, 160]));
        image::DynamicImage::ImageRgb8(big)
            .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
            .unwrap();
        let preview = make(&png, 64 << 20).expect("a preview");
        assert_eq!(crate::domain::sniff(&preview), Some("image/jpeg"));
        let decoded = image::load_from_memory(&preview).unwrap();
        assert_eq!((decoded.width(), decoded.height()), (320, 160));
        assert!(make(b"%PDF-1.7 not an image", 64 << 20).is_none());
    }
}
