// cargo run --example fetch -- -v https://example.com/
//
// A curl-like client: curl's -X, -H, -d, -u, -I, -L, --resolve, --cacert,
// --cert/--key, -i, -f, -s, -v, and rotary's --max-age, --repeat N
// --interval D, --dump-chain/--dump-ca FILE; a distinct exit code per failure
// phase (see --help).

fn main() {
    let out = rotary_examples::Output::stdio();
    let args = std::env::args().skip(1).collect();
    std::process::exit(rotary_examples::fetch::main_with_args(args, &out));
}
