//! `ingot-bench`: measures direct Chromium and the same work through ingot, interleaved in
//! one run, and writes the figures with their ratios to `BENCHMARKS.md`.

fn main() {
    eprintln!("ingot-bench: not written yet");
    std::process::exit(2);
}
