//! QR codes of proxy links for `relay-ctl link --qr` and `--qr-png`.
//!
//! Encoding is the `qrcode` crate's; this module only draws its module matrix, as Unicode
//! half blocks for a terminal or as a grayscale PNG (`png` crate).

use std::{
    fs,
    io::Write as _,
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
};

use qrcode::{Color, EcLevel, QrCode, render::unicode::Dense1x2};

/// Light modules around the code, in modules: the 4 the QR standard asks for.
const QUIET_ZONE: usize = 4;
/// Pixels per module side in PNG files: large enough to print or show on another screen.
const PNG_SCALE: usize = 8;

/// Why a link could not be turned into a QR code or written out.
#[derive(Debug, thiserror::Error)]
pub enum QrError {
    /// The text does not fit in a QR code.
    #[error("encoding a QR code: {0}")]
    Encode(#[from] qrcode::types::QrError),
    /// The output directory could not be created.
    #[error("creating the QR code directory {path}: {source}")]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
    /// A PNG file could not be written.
    #[error("writing {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
    /// The PNG encoder refused the image.
    #[error("encoding PNG {path}: {source}")]
    Png {
        /// The file.
        path: PathBuf,
        /// What the encoder said.
        source: png::EncodingError,
    },
    /// A file name part would leave the directory (a `/` or NUL in a user name).
    #[error("{0:?} cannot be part of a file name")]
    BadName(String),
}

/// `text` as a QR code at error-correction level M (a fair trade of size for robustness).
fn encode(text: &str) -> Result<QrCode, QrError> {
    Ok(QrCode::with_error_correction_level(text, EcLevel::M)?)
}

/// `text` as a QR code drawn with Unicode half blocks, two modules per character cell, with
/// its quiet zone; lines are joined by `\n`, without a trailing newline.
///
/// Dark modules are drawn as spaces and light ones as blocks, so the code reads right on the
/// usual light-on-dark terminal; on a dark-on-light terminal it is inverted, which phone
/// cameras (iOS, Google Lens) also read.
pub fn terminal(text: &str) -> Result<String, QrError> {
    Ok(encode(text)?
        .render::<Dense1x2>()
        .dark_color(Dense1x2::Light)
        .light_color(Dense1x2::Dark)
        .quiet_zone(true)
        .build())
}

/// `text` as an 8-bit grayscale PNG: black modules on white, [`PNG_SCALE`] pixels a module,
/// with the quiet zone. `path` only names the image in errors.
pub fn png(text: &str, path: &Path) -> Result<Vec<u8>, QrError> {
    let code = encode(text)?;
    let modules = code.width();
    let colors = code.to_colors();
    let side = (modules + 2 * QUIET_ZONE) * PNG_SCALE;
    let mut pixels = vec![0xffu8; side * side];
    for (i, color) in colors.iter().enumerate() {
        if *color != Color::Dark {
            continue;
        }
        let (mx, my) = (i % modules + QUIET_ZONE, i / modules + QUIET_ZONE);
        for y in my * PNG_SCALE..(my + 1) * PNG_SCALE {
            pixels[y * side + mx * PNG_SCALE..y * side + (mx + 1) * PNG_SCALE].fill(0);
        }
    }
    let png_error = |source| QrError::Png {
        path: path.to_owned(),
        source,
    };
    // The side is at most (177 + 8) * 8 pixels, far below u32::MAX.
    let side_u32 =
        u32::try_from(side).map_err(|_| png_error(png::EncodingError::LimitsExceeded))?;
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, side_u32, side_u32);
    encoder.set_color(png::ColorType::Grayscale);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header().map_err(png_error)?;
    writer.write_image_data(&pixels).map_err(png_error)?;
    writer.finish().map_err(png_error)?;
    Ok(out)
}

/// Writes `text` as `<dir>/<name>.png` (see [`png`]; a new file is mode 0600), creating `dir`
/// if needed; returns the file's path.
pub fn write_png(dir: &Path, name: &str, text: &str) -> Result<PathBuf, QrError> {
    if name.is_empty() || name.contains(['/', '\0']) || name == "." || name == ".." {
        return Err(QrError::BadName(name.to_owned()));
    }
    fs::create_dir_all(dir).map_err(|source| QrError::CreateDir {
        path: dir.to_owned(),
        source,
    })?;
    let path = dir.join(format!("{name}.png"));
    let bytes = png(text, &path)?;
    let write_error = |source| QrError::Write {
        path: path.clone(),
        source,
    };
    // The image holds the secret, like the link: only the owner may read it.
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .map_err(write_error)?;
    file.write_all(&bytes).map_err(write_error)?;
    file.sync_all().map_err(write_error)?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINK: &str = "tg://proxy?server=proxy.example.org&port=443&secret=ee0123456789abcdef0123456789abcdef7777772e636c6f7564666c6172652e636f6d";

    /// Decodes the single QR code in a grayscale image.
    fn decode(width: usize, height: usize, pixel: impl FnMut(usize, usize) -> u8) -> String {
        let mut image = rqrr::PreparedImage::prepare_from_greyscale(width, height, pixel);
        let grids = image.detect_grids();
        assert_eq!(grids.len(), 1, "QR codes found");
        grids[0].decode().expect("decode QR code").1
    }

    /// The printed half blocks, read back as a camera on a light-on-dark terminal would see
    /// them (a block is light, a space dark), decode to the link.
    #[test]
    fn terminal_rendering_decodes_to_the_link() {
        let art = terminal(LINK).expect("render");
        let rows: Vec<Vec<char>> = art.lines().map(|l| l.chars().collect()).collect();
        let width = rows[0].len();
        assert!(rows.iter().all(|r| r.len() == width), "ragged rows");
        // Each character cell is two modules high; scale every module to 4x4 pixels.
        const S: usize = 4;
        let height = rows.len() * 2;
        let light = |x: usize, y: usize| -> bool {
            let (top, bottom) = match rows[y / 2][x] {
                ' ' => (false, false),
                '\u{2580}' => (true, false),
                '\u{2584}' => (false, true),
                '\u{2588}' => (true, true),
                other => panic!("unexpected character {other:?}"),
            };
            if y.is_multiple_of(2) { top } else { bottom }
        };
        let text = decode(width * S, height * S, |x, y| {
            if light(x / S, y / S) { 0xff } else { 0 }
        });
        assert_eq!(text, LINK);
    }

    /// The PNG decodes to the link.
    #[test]
    fn png_decodes_to_the_link() {
        let bytes = png(LINK, Path::new("test.png")).expect("png");
        let mut reader = png::Decoder::new(std::io::Cursor::new(bytes))
            .read_info()
            .expect("png header");
        let mut buf = vec![0; reader.output_buffer_size().expect("size")];
        let info = reader.next_frame(&mut buf).expect("png frame");
        assert_eq!(info.color_type, png::ColorType::Grayscale);
        let (w, h) = (info.width as usize, info.height as usize);
        assert_eq!(decode(w, h, |x, y| buf[y * w + x]), LINK);
    }

    #[test]
    fn write_png_refuses_names_that_leave_the_directory() {
        let dir = tempfile::tempdir().expect("tempdir");
        for name in ["", ".", "..", "a/b", "../x"] {
            assert!(
                matches!(write_png(dir.path(), name, LINK), Err(QrError::BadName(_))),
                "{name:?}"
            );
        }
        let path = write_png(&dir.path().join("new/sub"), "alice-tls", LINK).expect("write");
        assert_eq!(path, dir.path().join("new/sub/alice-tls.png"));
        let mode = std::fs::metadata(&path).expect("stat").permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );
    }

    #[test]
    fn write_png_reports_an_unwritable_directory() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("file");
        std::fs::write(&file, b"x").expect("write");
        // A path under a regular file cannot be created.
        let err = write_png(&file.join("sub"), "alice-tls", LINK).expect_err("must fail");
        assert!(matches!(err, QrError::CreateDir { .. }), "{err}");
    }
}
