// cargo run --example runner -- --url https://127.0.0.1:8443 --token demo --ca-file CA.pem
//
// A shell-executor GitLab runner on rotary: long-polls POST
// /api/v4/jobs/request as GitLab expects, and runs each job (a fresh CA file,
// git checkout, dependencies' artifacts, steps in bash with masking, trace
// increments, artifacts zipped and uploaded, the final state with its exit
// code), retrying every API call by GitLab Runner's rules. Point it at
// `cargo run --example rotation -- --serve 127.0.0.1:8443 --ca-out CA.pem`,
// or at a GitLab with a glrt- runner authentication token.

fn main() {
    let out = rotary_examples::Output::stdio();
    let args = std::env::args().skip(1).collect();
    std::process::exit(rotary_examples::runner::main_with_args(args, &out));
}
