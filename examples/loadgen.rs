// cargo run --release --example loadgen -- --conns 16 --requests 20000
//
// Load through one engine on one thread; prints one JSON line (requests/s,
// CPU per request, max RSS, latency). `--idle C` measures memory per idle
// connection instead.

fn main() {
    let out = rotary_examples::Output::stdio();
    let args = std::env::args().skip(1).collect();
    std::process::exit(rotary_examples::loadgen::main_with_args(args, &out));
}
