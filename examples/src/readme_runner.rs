use rotary::{Body, Client, Config, Origin, Proxies, RequestOptions};
use std::io::{Cursor, Read};
use std::{error::Error, fs::File, path::Path, time::Duration};

/// Poll once; run the job if one came (`Ok(true)`), its files in `dir`.
pub fn run_one_job(
    client: &Client,
    base: &str,
    runner_token: &str,
    dir: &Path,
) -> Result<bool, Box<dyn Error>> {
    let poll = http::Request::post(format!("{base}/api/v4/jobs/request"))
        .header("content-type", "application/json")
        .body(format!(r#"{{"token":"{runner_token}"}}"#))?;
    let long_poll = RequestOptions::default().deadline(Duration::from_secs(90));
    let resp = client.send_with(poll, long_poll)?;
    if resp.status() != 201 {
        return Ok(false); // 204: no job yet
    }
    let job = resp.into_body().bytes()?; // parse it with serde_json
    let (id, token) = (number(&job, "id")?, string(&job, "token")?);
    // The job's CA file: the chain as it is now, not the long poll's.
    let chain = client.fresh_chain(&Origin::parse(base)?, Duration::ZERO)?;
    std::fs::write(dir.join("ca.pem"), chain.ca_bundle()?)?;
    // Each dependency's artifacts, with its own token: a 302 to object
    // storage (JOB-TOKEN stays behind), streamed to disk.
    for (dep, dep_token) in dependencies(&job) {
        let get = http::Request::get(format!("{base}/api/v4/jobs/{dep}/artifacts"))
            .header("job-token", dep_token)
            .body(())?;
        let follow = RequestOptions::default().follow_redirects(5);
        let mut resp = client.send_with(get, follow)?;
        if resp.status() != 200 {
            return Err(format!("artifacts of job {dep}: {}", resp.status()).into());
        }
        let mut file = File::create(dir.join(format!("dep-{dep}.zip")))?;
        std::io::copy(resp.body_mut(), &mut file)?;
    }
    // Your executor: checkout, steps, trace; it leaves artifacts.zip.
    run_the_job(dir)?;
    // The artifact as the multipart form GitLab reads, streamed from the
    // file (Body::reader reads any impl Read on this thread as it goes).
    let boundary = "rotary-sketch-7f3a9c";
    let head = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; \
         filename=\"artifacts.zip\"\r\nContent-Type: application/zip\r\n\r\n"
    );
    let tail = format!("\r\n--{boundary}--\r\n");
    let zip = File::open(dir.join("artifacts.zip"))?;
    let len = head.len() as u64 + zip.metadata()?.len() + tail.len() as u64;
    let form = Cursor::new(head).chain(zip).chain(Cursor::new(tail));
    let post = http::Request::post(format!(
        "{base}/api/v4/jobs/{id}/artifacts?artifact_format=zip&artifact_type=archive"
    ))
    .header("job-token", &token)
    .header(
        "content-type",
        format!("multipart/form-data; boundary={boundary}"),
    )
    .body(Body::reader(form, Some(len)))?;
    let resp = client.send(post)?;
    if resp.status() != 201 {
        return Err(format!("artifact upload: {}", resp.status()).into());
    }
    let done = format!(r#"{{"token":"{token}","state":"success"}}"#);
    let put = http::Request::put(format!("{base}/api/v4/jobs/{id}"))
        .header("content-type", "application/json")
        .body(done)?;
    let resp = client.send(put)?;
    if resp.status() != 200 {
        return Err(format!("job state: {}", resp.status()).into());
    }
    Ok(true)
}

/// The loop: one client (an engine on its own thread), jobs one by one.
pub fn main() -> Result<(), Box<dyn Error>> {
    let mut config = Config::default(); // max age 15 min with jitter, the host's trust store
    config.proxy = Proxies::from_env()?; // https_proxy, no_proxy
    config.sensitive_headers = vec![http::HeaderName::from_static("job-token")];
    let client = Client::new(config)?; // clones share it
    loop {
        let base = "https://gitlab.example.com";
        if !run_one_job(&client, base, "glrt-runner-token", Path::new("."))? {
            std::thread::sleep(Duration::from_secs(3)); // GitLab's check interval
        }
    }
}

/// A stand-in for serde_json: the number after `"key":`.
fn number(json: &[u8], key: &str) -> Result<u64, Box<dyn Error>> {
    let rest = after(json, &format!("\"{key}\":")).ok_or(format!("no {key}"))?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    Ok(digits.parse()?)
}

/// A stand-in for serde_json: the string after `"key":"`.
fn string(json: &[u8], key: &str) -> Result<String, Box<dyn Error>> {
    let rest = after(json, &format!("\"{key}\":\"")).ok_or(format!("no {key}"))?;
    Ok(rest.split('"').next().unwrap_or_default().to_owned())
}

fn after(json: &[u8], needle: &str) -> Option<String> {
    let text = String::from_utf8_lossy(json);
    let at = text.find(needle)? + needle.len();
    text.get(at..).map(str::to_owned)
}

/// A stand-in for serde_json: (id, token) of each dependency with artifacts.
fn dependencies(json: &[u8]) -> Vec<(u64, String)> {
    let Some(list) = after(json, "\"dependencies\":[") else {
        return Vec::new();
    };
    let list = list.split(']').next().unwrap_or_default();
    list.split("{\"id\":")
        .filter(|dep| dep.contains("\"artifacts_file\":{"))
        .filter_map(|dep| {
            let id = number(format!("\"id\":{dep}").as_bytes(), "id").ok()?;
            Some((id, string(dep.as_bytes(), "token").ok()?))
        })
        .collect()
}

/// A stand-in for the executor: the job's artifact.
fn run_the_job(dir: &Path) -> std::io::Result<()> {
    std::fs::write(dir.join("artifacts.zip"), b"PK\x05\x06 a stand-in archive")
}
