//! Every fuzz target's seeds, minimized corpus and crash inputs, replayed on
//! stable Rust: what fuzzing found once stays fixed (see fuzz/run.sh).

use std::path::Path;

#[test]
fn every_fuzz_input_runs_clean() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let seeds = xftrace::testkit::fuzz::seeds();
    for (name, harness) in xftrace::testkit::fuzz::TARGETS {
        let mut n = 0;
        for (_, bytes) in seeds.iter().filter(|(t, _)| t == name) {
            harness(bytes);
            n += 1;
        }
        for dir in ["corpus", "regressions"] {
            let Ok(entries) = std::fs::read_dir(root.join(dir).join(name)) else {
                continue;
            };
            for e in entries {
                let p = e.unwrap().path();
                harness(&std::fs::read(&p).unwrap());
                n += 1;
            }
        }
        assert!(n > 0, "no inputs for fuzz target {name}");
        eprintln!("fuzz target {name}: {n} inputs replayed");
    }
}
