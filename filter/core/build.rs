//! Compresses the dashboard page (src/admin/dashboard.html) at build time: 20 KB of HTML,
//! CSS and JS would otherwise sit in the wasm module's data section; deflated it is ~6 KB.
//! The page is cut at its one `"__USAGE_URL__"` into two raw deflate pieces, so admin.rs
//! can put the usage URL between them as a stored block and serve the result as gzip.

use miniz_oxide::deflate::core::{create_comp_flags_from_zip_params, CompressorOxide};
use miniz_oxide::deflate::stream::deflate;
use miniz_oxide::{MZFlush, MZStatus};
use std::{env, error::Error, fs, path::Path};

const PAGE: &str = "src/admin/dashboard.html";
const MARKER: &str = "\"__USAGE_URL__\"";

/// `data` as raw deflate at the best level. `last`: the final block, else the piece ends
/// with a sync flush (byte-aligned, not final) so that more blocks can follow it.
fn deflate_piece(data: &[u8], last: bool) -> Vec<u8> {
    // Raw deflate (negative window bits), level 10, default strategy.
    let mut c = CompressorOxide::new(create_comp_flags_from_zip_params(10, -15, 0));
    let flush = if last { MZFlush::Finish } else { MZFlush::Sync };
    let mut out = vec![0; data.len() + 1024];
    let r = deflate(&mut c, data, &mut out, flush);
    let done = if last {
        r.status == Ok(MZStatus::StreamEnd)
    } else {
        r.status == Ok(MZStatus::Ok)
    };
    assert!(
        done && r.bytes_consumed == data.len(),
        "deflate {:?}",
        r.status
    );
    out.truncate(r.bytes_written);
    out
}

fn main() -> Result<(), Box<dyn Error>> {
    println!("cargo:rerun-if-changed={PAGE}");
    println!("cargo:rerun-if-changed=build.rs");
    let page = fs::read_to_string(PAGE)?;
    assert_eq!(page.matches(MARKER).count(), 1, "one {MARKER} in {PAGE}");
    let (head, tail) = page.split_once(MARKER).ok_or("no marker")?;
    let out = env::var("OUT_DIR")?;
    let out = Path::new(&out);
    fs::write(
        out.join("dashboard_head.deflate"),
        deflate_piece(head.as_bytes(), false),
    )?;
    fs::write(
        out.join("dashboard_tail.deflate"),
        deflate_piece(tail.as_bytes(), true),
    )?;
    fs::write(
        out.join("dashboard_len.txt"),
        (head.len() + tail.len()).to_string(),
    )?;
    Ok(())
}
