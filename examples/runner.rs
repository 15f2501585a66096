// cargo run --example runner -- --url https://127.0.0.1:8443 --token demo --ca-file CA.pem
//
// A CI runner on rotary doing GitLab's job loop: long-polls POST
// /api/v4/jobs/request, runs each job (state, dependency artifacts through
// object storage, git clone with the delivering connection's CA bundle,
// trace increments, artifact upload) and reports success or failure. Point it
// at `cargo run --example rotation -- --serve 127.0.0.1:8443 --ca-out CA.pem`.

fn main() {
    let out = rotary_examples::Output::stdio();
    let args = std::env::args().skip(1).collect();
    std::process::exit(rotary_examples::runner::main_with_args(args, &out));
}
