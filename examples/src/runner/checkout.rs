//! The job's checkout, as GitLab Runner's `fetch` strategy does it: `git
//! init` in the project directory, `git fetch` of the job's refspecs (a
//! shallow one when the job asks), then `git checkout` of its commit. The
//! repository URL's userinfo (`gitlab-ci-token:<job token>`) becomes an
//! `Authorization` header given through the environment
//! (`GIT_CONFIG_COUNT`), so the token is in neither `.git/config`, nor a
//! command line, nor the trace; `GIT_SSL_CAINFO` is the job's CA file.
//! `GIT_STRATEGY=none` skips it, `clone` starts from an empty directory.

use std::path::Path;
use std::process::Command;

use base64::Engine as _;

use super::exec::{self, Ended};
use super::{Ctx, JobFailure};

/// `https://user:pass@host/p.git` → (`https://host/p.git`, Basic credentials).
pub(crate) fn split_userinfo(url: &str) -> (String, Option<(String, String)>) {
    let Some((scheme, rest)) = url.split_once("://") else {
        return (url.to_owned(), None);
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let Some((userinfo, host)) = authority.rsplit_once('@') else {
        return (url.to_owned(), None);
    };
    let (user, pass) = userinfo.split_once(':').unwrap_or((userinfo, ""));
    (
        format!("{scheme}://{host}{tail}"),
        Some((percent_decode(user), percent_decode(pass))),
    )
}

/// `%XX` escapes decoded (userinfo may carry them); anything else as is.
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match (
            b[i],
            b.get(i + 1).copied().and_then(hex),
            b.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Fetch and check out the job's commit into the project directory.
pub(crate) fn checkout(ctx: &mut Ctx<'_>, ca: Option<&Path>) -> Result<(), JobFailure> {
    let strategy = ctx
        .job
        .variable("GIT_STRATEGY")
        .unwrap_or("fetch")
        .to_owned();
    let info = &ctx.job.git_info;
    if strategy == "none" || info.repo_url.is_empty() {
        ctx.trace.line("Skipping Git repository setup");
        return Ok(());
    }
    if strategy == "clone" {
        let _ = std::fs::remove_dir_all(&ctx.project);
        std::fs::create_dir_all(&ctx.project)
            .map_err(|e| JobFailure::system(format!("creating {}: {e}", ctx.project.display())))?;
    }
    let (url, credentials) = split_userinfo(&info.repo_url);
    let depth = match ctx
        .job
        .variable("GIT_DEPTH")
        .and_then(|d| d.parse::<u32>().ok())
    {
        Some(d) => d,
        None => info.depth,
    };
    ctx.trace.line(format!(
        "Fetching changes{} from {url}...",
        if depth > 0 {
            format!(" with git depth set to {depth}")
        } else {
            String::new()
        }
    ));
    let refspecs = if info.refspecs.is_empty() {
        vec![format!(
            "+refs/heads/{0}:refs/remotes/origin/{0}",
            info.git_ref
        )]
    } else {
        info.refspecs.clone()
    };
    let target = if info.sha.is_empty() {
        format!("origin/{}", info.git_ref)
    } else {
        info.sha.clone()
    };
    let project = ctx.project.clone();
    let fresh = !project.join(".git").exists();
    let mut runs: Vec<Vec<String>> = Vec::new();
    if fresh {
        runs.push(vec!["init".into(), "-q".into()]);
        runs.push(vec![
            "remote".into(),
            "add".into(),
            "origin".into(),
            url.clone(),
        ]);
    } else {
        runs.push(vec![
            "remote".into(),
            "set-url".into(),
            "origin".into(),
            url.clone(),
        ]);
    }
    let mut fetch = vec!["fetch".into(), "--prune".into(), "--quiet".into()];
    if depth > 0 {
        fetch.push(format!("--depth={depth}"));
    }
    fetch.push("origin".into());
    fetch.extend(refspecs);
    runs.push(fetch);
    runs.push(vec![
        "checkout".into(),
        "-f".into(),
        "-q".into(),
        target.clone(),
    ]);
    for args in runs {
        if args.first().is_some_and(|a| a == "checkout") {
            ctx.trace.line(format!("Checking out {target}"));
        }
        let mut cmd = Command::new("git");
        cmd.args(&args)
            .current_dir(&project)
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("GIT_ASKPASS", "true");
        if let Some(ca) = ca {
            cmd.env("GIT_SSL_CAINFO", ca);
        }
        if let Some((user, pass)) = &credentials {
            let basic = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
            cmd.env("GIT_CONFIG_COUNT", "1")
                .env("GIT_CONFIG_KEY_0", format!("http.{url}.extraHeader"))
                .env(
                    "GIT_CONFIG_VALUE_0",
                    format!("Authorization: Basic {basic}"),
                );
        }
        let what = format!("git {}", args.first().map_or("", String::as_str));
        let ended = exec::run(cmd, ctx.deadline, ctx).map_err(JobFailure::system)?;
        ctx.trace.settle();
        match ended {
            Ended::Exited(0) => {}
            Ended::Exited(code) => {
                return Err(JobFailure {
                    reason: "script_failure",
                    exit_code: None,
                    why: format!("{what} of {url} failed (exit code {code})"),
                })
            }
            Ended::Stopped(s) => return Err(ctx.stopped(&s)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn userinfo_becomes_credentials_and_leaves_the_url() {
        let (url, cred) = split_userinfo("https://gitlab-ci-token:glcbt-1%2Fx@h:8443/g/p.git");
        assert_eq!(url, "https://h:8443/g/p.git");
        assert_eq!(cred, Some(("gitlab-ci-token".into(), "glcbt-1/x".into())));
        let (url, cred) = split_userinfo("https://h/g/p.git");
        assert_eq!((url.as_str(), cred), ("https://h/g/p.git", None));
        // An @ in the path is no userinfo.
        let (url, cred) = split_userinfo("https://h/g/p@2.git");
        assert_eq!((url.as_str(), cred), ("https://h/g/p@2.git", None));
    }
}
