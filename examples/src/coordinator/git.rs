//! The demo's private repository: made with `git` when the first job is
//! handed out (one commit on `main`), and served under
//! `/demo/project.git` by `git http-backend`, git's own smart-HTTP server,
//! run as a CGI program per request. Like GitLab, it answers only requests
//! whose Basic credentials carry a running job's token
//! (`gitlab-ci-token:<job token>`), and `401` with a Basic challenge to
//! anyone else.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::time::Duration;

use base64::Engine as _;

use super::http1::{Body, Head};
use super::{gitlab, Reply, Shared};

/// Where the repository is served.
pub(super) const PREFIX: &str = "/demo/project.git";
/// Largest request body handed to `git http-backend` (a fetch's wants and
/// haves).
const MAX_REQUEST: usize = 16 * 1024 * 1024;
/// Largest answer taken from it (the demo repository is a few KiB).
const MAX_RESPONSE: u64 = 64 * 1024 * 1024;
/// How long one `git http-backend` may take.
const CGI_TIMEOUT: Duration = Duration::from_secs(30);

/// The bare repository and the commit jobs check out.
#[derive(Debug)]
pub(super) struct Repo {
    /// `GIT_PROJECT_ROOT`: holds `project.git`.
    root: PathBuf,
    /// The commit on `main`.
    pub(super) sha: String,
}

/// `git` without the user's or the system's configuration.
fn git() -> Command {
    let mut c = Command::new("git");
    c.env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .stdin(Stdio::null());
    c
}

fn run(c: &mut Command) -> Result<String, String> {
    let out = c.output().map_err(|e| format!("running git: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "git failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

impl Repo {
    /// A bare `project.git` under `dir` with one commit on `main`.
    ///
    /// # Errors
    /// `git` is missing or failed.
    pub(super) fn create(dir: &Path) -> Result<Repo, String> {
        let work = dir.join("repo-work");
        let root = dir.join("repos");
        std::fs::create_dir_all(&work).map_err(|e| format!("{}: {e}", work.display()))?;
        std::fs::create_dir_all(&root).map_err(|e| format!("{}: {e}", root.display()))?;
        run(git().args(["init", "-q", "-b", "main"]).arg(&work))?;
        std::fs::write(
            work.join("README.md"),
            "# project\n\nThe rotary demo coordinator's repository.\n",
        )
        .map_err(|e| format!("writing the demo repository: {e}"))?;
        std::fs::write(
            work.join("greeting.txt"),
            "hello from the demo repository\n",
        )
        .map_err(|e| format!("writing the demo repository: {e}"))?;
        run(git()
            .current_dir(&work)
            .args(["add", "README.md", "greeting.txt"]))?;
        run(git().current_dir(&work).args([
            "-c",
            "user.name=rotary demo",
            "-c",
            "user.email=demo@rotary.invalid",
            "commit",
            "-q",
            "-m",
            "demo project",
        ]))?;
        let sha = run(git().current_dir(&work).args(["rev-parse", "HEAD"]))?;
        run(git()
            .args(["clone", "-q", "--bare"])
            .arg(&work)
            .arg(root.join("project.git")))?;
        let _ = std::fs::remove_dir_all(&work);
        Ok(Repo { root, sha })
    }
}

/// The password of Basic credentials.
fn basic_password(head: &Head) -> Option<String> {
    let v = head.header("authorization")?.trim();
    let (scheme, b64) = v.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .ok()?;
    let text = String::from_utf8(raw).ok()?;
    Some(text.split_once(':')?.1.to_owned())
}

/// A request under [`PREFIX`] (`rest` is what follows it).
pub(super) fn serve(head: &Head, rest: &str, body: &mut Body<'_>, shared: &Shared) -> Reply {
    shared.git_requests.fetch_add(1, Ordering::Relaxed);
    let allowed = basic_password(head).is_some_and(|p| gitlab::running_token(shared, &p));
    if !allowed {
        shared.git_refused.fetch_add(1, Ordering::Relaxed);
        return Reply::new(
            "401 Unauthorized",
            "text/plain",
            b"HTTP Basic: Access denied\n".to_vec(),
        )
        .header("WWW-Authenticate", "Basic realm=\"GitLab\"");
    }
    let Some(Ok(repo)) = shared.repo.get() else {
        return Reply::new(
            "503 Service Unavailable",
            "text/plain",
            b"no repository (is git installed?)\n".to_vec(),
        );
    };
    let input = match body.read_all(MAX_REQUEST) {
        Ok(Ok(b)) => b,
        Ok(Err(_)) => return Reply::new("413 Payload Too Large", "text/plain", Vec::new()).close(),
        Err(e) => {
            return Reply::new(
                "400 Bad Request",
                "text/plain",
                format!("{e}\n").into_bytes(),
            )
            .close()
        }
    };
    match cgi(head, rest, repo, input) {
        Ok(r) => r,
        Err(why) => Reply::new(
            "500 Internal Server Error",
            "text/plain",
            format!("git http-backend: {why}\n").into_bytes(),
        ),
    }
}

/// Run `git http-backend` for one request and turn its CGI answer into a
/// reply.
fn cgi(head: &Head, rest: &str, repo: &Repo, input: Vec<u8>) -> Result<Reply, String> {
    let query = head.target.split_once('?').map_or("", |(_, q)| q);
    let mut c = git();
    c.arg("http-backend")
        .env("GIT_PROJECT_ROOT", &repo.root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("REQUEST_METHOD", &head.method)
        .env("PATH_INFO", format!("/project.git{rest}"))
        .env("QUERY_STRING", query)
        .env(
            "CONTENT_TYPE",
            head.header("content-type").unwrap_or_default(),
        )
        .env("CONTENT_LENGTH", input.len().to_string())
        .env("REMOTE_USER", "gitlab-ci-token")
        .env("REMOTE_ADDR", "127.0.0.1")
        .env("SERVER_PROTOCOL", "HTTP/1.1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    for (header, var) in [
        ("git-protocol", "HTTP_GIT_PROTOCOL"),
        ("content-encoding", "HTTP_CONTENT_ENCODING"),
    ] {
        if let Some(v) = head.header(header) {
            c.env(var, v);
        }
    }
    let mut child = c.spawn().map_err(|e| format!("cannot run git: {e}"))?;
    // Written and read on threads of their own: the program may answer
    // before it has read everything, and must not hang this connection.
    let mut stdin = child.stdin.take();
    let writer = std::thread::spawn(move || {
        if let Some(s) = stdin.as_mut() {
            let _ = s.write_all(&input);
        }
    });
    let mut stdout = child.stdout.take().ok_or("no stdout")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut out = Vec::new();
        let r = (&mut stdout).take(MAX_RESPONSE + 1).read_to_end(&mut out);
        let _ = tx.send(r.map(|_| out));
    });
    let out = match rx.recv_timeout(CGI_TIMEOUT) {
        Ok(Ok(out)) => out,
        Ok(Err(e)) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("reading its answer: {e}"));
        }
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("no answer within {CGI_TIMEOUT:?}"));
        }
    };
    let _ = writer.join();
    let _ = child.wait();
    if out.len() as u64 > MAX_RESPONSE {
        return Err("answer too large".into());
    }
    parse_cgi(&out)
}

/// A CGI answer: header lines (`Status:` among them), a blank line, the body.
fn parse_cgi(out: &[u8]) -> Result<Reply, String> {
    let (end, sep) = match (
        out.windows(4).position(|w| w == b"\r\n\r\n"),
        out.windows(2).position(|w| w == b"\n\n"),
    ) {
        (Some(a), Some(b)) if b < a => (b, 2),
        (Some(a), _) => (a, 4),
        (None, Some(b)) => (b, 2),
        (None, None) => return Err("an answer without a header block".into()),
    };
    let head = String::from_utf8_lossy(&out[..end]);
    let mut status = "200 OK".to_owned();
    let mut content_type = String::new();
    let mut headers = Vec::new();
    for line in head.lines() {
        let Some((n, v)) = line.split_once(':') else {
            continue;
        };
        let (n, v) = (n.trim(), v.trim().to_owned());
        if n.eq_ignore_ascii_case("status") {
            status = v;
        } else if n.eq_ignore_ascii_case("content-type") {
            content_type = v;
        } else if !n.eq_ignore_ascii_case("content-length") {
            headers.push((n.to_owned(), v));
        }
    }
    let mut reply = Reply::new(status, content_type, out[end + sep..].to_vec());
    for (n, v) in headers {
        reply = reply.header(n, v);
    }
    Ok(reply)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgi_answers_parse_with_either_line_ending() {
        let r = parse_cgi(b"Status: 404 Not Found\r\nContent-Type: text/plain\r\n\r\nnope")
            .expect("answer");
        assert_eq!(
            (r.status.as_ref(), r.content_type.as_ref()),
            ("404 Not Found", "text/plain")
        );
        assert_eq!(r.body, b"nope");
        let r =
            parse_cgi(b"Content-Type: application/x-git\nExpires: never\n\nPACK").expect("answer");
        assert_eq!(r.status, "200 OK");
        assert_eq!(r.body, b"PACK");
        assert_eq!(r.headers.len(), 1);
        assert!(parse_cgi(b"no header block").is_err());
    }
}
