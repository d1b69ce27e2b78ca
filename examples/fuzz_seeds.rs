//! Write the fuzz targets' starting inputs (`xftrace::testkit::fuzz::seeds()`)
//! into a directory per target: `cargo run --example fuzz_seeds -- DIR`.
fn main() -> std::io::Result<()> {
    let dir = std::path::PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| "fuzz/seeds".into()),
    );
    for (i, (target, bytes)) in xftrace::testkit::fuzz::seeds().into_iter().enumerate() {
        let d = dir.join(target);
        std::fs::create_dir_all(&d)?;
        std::fs::write(d.join(format!("seed-{i:02}")), bytes)?;
    }
    Ok(())
}
