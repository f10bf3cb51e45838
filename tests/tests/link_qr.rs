//! `relay-ctl link --qr-png DIR` writes one PNG per user and mode whose QR code decodes to the
//! printed `tg://` link; `--qr` prints codes; an unwritable DIR fails with its path named.

use std::{collections::BTreeMap, path::Path, process::Command};

use relay_tests::relay::relay_ctl_bin;

const CONFIG: &str = r#"
[server]
listen = ["127.0.0.1:4443"]
modes = ["classic", "secure", "tls"]

[xdp]
mode = "off"

[[users]]
name = "alice"
secret = "00112233445566778899aabbccddeeff"

[[users]]
name = "bob"
secret = "0123456789abcdef0123456789abcdef"
"#;

/// Runs `relay-ctl link --config <dir>/relay.toml --host proxy.example.org <extra>`.
fn link(dir: &Path, extra: &[&str]) -> std::process::Output {
    let file = dir.join("relay.toml");
    std::fs::write(&file, CONFIG).expect("write config");
    Command::new(relay_ctl_bin())
        .args(["link", "--config"])
        .arg(&file)
        .args(["--host", "proxy.example.org"])
        .args(extra)
        .output()
        .expect("run relay-ctl link")
}

/// `relay-ctl link` output: (user, mode) → tg link, skipping everything else.
fn tg_links(stdout: &str) -> BTreeMap<(String, String), String> {
    let mut out = BTreeMap::new();
    let mut user = None;
    for line in stdout.lines() {
        if let Some(name) = line.strip_prefix("# user ") {
            user = Some(name.trim().to_owned());
            continue;
        }
        if let [mode, url] = line.split_whitespace().collect::<Vec<_>>().as_slice()
            && url.starts_with("tg://proxy?")
        {
            let user = user.clone().expect("link before a user");
            out.insert((user, (*mode).to_owned()), (*url).to_owned());
        }
    }
    out
}

/// The text of the single QR code in a grayscale PNG.
fn decode_png(path: &Path) -> String {
    let file = std::fs::File::open(path).expect("open png");
    let mut reader = png::Decoder::new(std::io::BufReader::new(file))
        .read_info()
        .expect("png header");
    let mut buf = vec![0; reader.output_buffer_size().expect("png size")];
    let info = reader.next_frame(&mut buf).expect("png frame");
    assert_eq!(info.color_type, png::ColorType::Grayscale, "{path:?}");
    assert_eq!(info.bit_depth, png::BitDepth::Eight, "{path:?}");
    let (w, h) = (info.width as usize, info.height as usize);
    let mut image = rqrr::PreparedImage::prepare_from_greyscale(w, h, |x, y| buf[y * w + x]);
    let grids = image.detect_grids();
    assert_eq!(grids.len(), 1, "QR codes in {path:?}");
    grids[0].decode().expect("decode QR code").1
}

#[test]
fn qr_png_files_decode_to_the_printed_links() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out_dir = dir.path().join("codes/new");
    let out = link(
        dir.path(),
        &["--qr-png", out_dir.to_str().expect("utf-8 path")],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "relay-ctl link --qr-png failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    let links = tg_links(&stdout);
    assert_eq!(links.len(), 6, "two users, three modes:\n{stdout}");
    let mut files: Vec<String> = std::fs::read_dir(&out_dir)
        .expect("read qr dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    let mut expected: Vec<String> = links
        .keys()
        .map(|(user, mode)| format!("{user}-{mode}.png"))
        .collect();
    expected.sort();
    assert_eq!(files, expected);
    for ((user, mode), tg) in &links {
        let decoded = decode_png(&out_dir.join(format!("{user}-{mode}.png")));
        assert_eq!(&decoded, tg, "{user} {mode}");
    }
}

#[test]
fn qr_prints_a_code_after_each_mode() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = link(dir.path(), &["--qr", "--user", "alice"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(tg_links(&stdout).len(), 3, "{stdout}");
    // A code's quiet zone is a full line of full blocks; one code per mode.
    let quiet_lines = stdout
        .lines()
        .filter(|l| !l.is_empty() && l.chars().all(|c| c == '\u{2588}'))
        .count();
    assert!(quiet_lines >= 3 * 2, "{stdout}");
}

#[test]
fn unwritable_qr_png_dir_is_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, b"x").expect("write");
    let target = file.join("codes");
    let out = link(
        dir.path(),
        &["--qr-png", target.to_str().expect("utf-8 path")],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "must fail");
    assert!(
        stderr.contains("creating the QR code directory") && stderr.contains("not-a-dir"),
        "{stderr}"
    );
}
