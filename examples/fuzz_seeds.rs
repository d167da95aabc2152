//! Writes the fuzz targets' seed corpora (`fuzz/corpus/<target>/`) from
//! the real encoders: `cargo run --example fuzz_seeds --features fuzz`.

use std::path::Path;

#[expect(
    clippy::print_stdout,
    reason = "a developer tool reporting what it wrote"
)]
fn main() -> std::io::Result<()> {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    let seeds = warren::fuzz::seeds()
        .into_iter()
        .chain(warren_p2p::fuzz::seeds());
    let mut counts = std::collections::BTreeMap::<&str, usize>::new();
    for (target, input) in seeds {
        let n = counts.entry(target).or_default();
        *n += 1;
        let dir = corpus.join(target);
        std::fs::create_dir_all(&dir)?;
        #[expect(
            clippy::disallowed_methods,
            reason = "a developer tool writing seed files"
        )]
        std::fs::write(dir.join(format!("seed-{n}")), input)?;
    }
    for (target, n) in counts {
        println!("{target}: {n} seeds");
    }
    Ok(())
}
