// cargo run --release --example rotation
//
// The rotation demo: a coordinator rotates its certificate from CA A to CA B;
// a "pinned" runner keeps handing jobs the stale chain, the rotary runner heals
// within one max age. Self-contained (loopback only); `-- --help` for flags.

fn main() {
    let out = rotary_examples::Output::stdio();
    let args = std::env::args().skip(1).collect();
    std::process::exit(rotary_examples::rotation::main_with_args(args, &out));
}
