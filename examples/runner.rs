// cargo run --example runner -- --url https://127.0.0.1:8443 --token demo --ca-file CA.pem
//
// A minimal CI runner skeleton on rotary: long-polls POST /api/v4/jobs/request
// and writes the chain of the connection that delivered each job to a CA file.
// Point it at `cargo run --example rotation -- --serve 127.0.0.1:8443`.

fn main() {
    let out = rotary_examples::Output::stdio();
    let args = std::env::args().skip(1).collect();
    std::process::exit(rotary_examples::runner::main_with_args(args, &out));
}
