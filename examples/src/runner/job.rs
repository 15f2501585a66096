//! GitLab's job payload (the `201` answer to `POST /api/v4/jobs/request`),
//! typed: the fields this runner acts on, as GitLab's
//! `Entities::Ci::JobRequest::Response` sends them. Every field may be
//! missing or `null` (GitLab sends `"artifacts": null` for a job without
//! any); unknown fields are ignored. The demo coordinator builds its jobs
//! from the same types, so the two cannot disagree on a name.

use serde::{Deserialize, Deserializer, Serialize};

/// `null` and a missing field both mean the type's default.
fn nullable<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// One job, as GitLab hands it to a runner.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    /// The job's id.
    #[serde(default, deserialize_with = "nullable")]
    pub id: u64,
    /// The job token: `JOB-TOKEN` of its API calls, the password of its
    /// `git` checkout. A secret: masked in the trace.
    #[serde(default, deserialize_with = "nullable")]
    pub token: String,
    /// Names for the trace.
    #[serde(default, deserialize_with = "nullable")]
    pub job_info: JobInfo,
    /// What to check out.
    #[serde(default, deserialize_with = "nullable")]
    pub git_info: GitInfo,
    /// The job's timeout.
    #[serde(default, deserialize_with = "nullable")]
    pub runner_info: RunnerInfo,
    /// The job's variables, in order (a later one wins).
    #[serde(default, deserialize_with = "nullable")]
    pub variables: Vec<Variable>,
    /// The steps (`script`, `after_script`, `release`, ...), in order.
    #[serde(default, deserialize_with = "nullable")]
    pub steps: Vec<Step>,
    /// What to upload when the steps are done.
    #[serde(default, deserialize_with = "nullable")]
    pub artifacts: Vec<Artifact>,
    /// Earlier jobs whose artifacts this one unpacks before its steps.
    #[serde(default, deserialize_with = "nullable")]
    pub dependencies: Vec<Dependency>,
}

/// `job_info`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobInfo {
    /// The job's name in `.gitlab-ci.yml`.
    #[serde(default, deserialize_with = "nullable")]
    pub name: String,
    /// Its stage.
    #[serde(default, deserialize_with = "nullable")]
    pub stage: String,
    /// The project's name.
    #[serde(default, deserialize_with = "nullable")]
    pub project_name: String,
}

/// `git_info`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GitInfo {
    /// `https://gitlab-ci-token:<job token>@host/group/project.git`: the
    /// userinfo is the checkout's credentials.
    #[serde(default, deserialize_with = "nullable")]
    pub repo_url: String,
    /// The branch or tag.
    #[serde(rename = "ref", default, deserialize_with = "nullable")]
    pub git_ref: String,
    /// The commit to check out.
    #[serde(default, deserialize_with = "nullable")]
    pub sha: String,
    /// What to fetch (`+refs/heads/main:refs/remotes/origin/main`,
    /// `+refs/merge-requests/7/head:...`); empty: the ref itself.
    #[serde(default, deserialize_with = "nullable")]
    pub refspecs: Vec<String>,
    /// A shallow fetch of this many commits; 0: the whole history.
    #[serde(default, deserialize_with = "nullable")]
    pub depth: u32,
}

/// `runner_info`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunnerInfo {
    /// The job's timeout in seconds (0: the runner's own limit).
    #[serde(default, deserialize_with = "nullable")]
    pub timeout: u64,
}

/// One CI/CD variable.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Variable {
    /// Its name.
    #[serde(default, deserialize_with = "nullable")]
    pub key: String,
    /// Its value.
    #[serde(default, deserialize_with = "nullable")]
    pub value: String,
    /// Shown in the UI; not a secret.
    #[serde(default, deserialize_with = "nullable")]
    pub public: bool,
    /// Never shown in the trace: replaced by `[MASKED]`.
    #[serde(default, deserialize_with = "nullable")]
    pub masked: bool,
    /// A file variable: the value goes to a file, the variable holds its path.
    #[serde(default, deserialize_with = "nullable")]
    pub file: bool,
}

/// When a step or an artifact applies, given how the job is going.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum When {
    /// Only while every earlier step succeeded (the default).
    #[default]
    OnSuccess,
    /// Only once a step failed.
    OnFailure,
    /// Whatever happened.
    Always,
}

impl When {
    /// Does it apply when the job has (`failed`) or has not failed so far?
    pub fn applies(self, failed: bool) -> bool {
        match self {
            When::OnSuccess => !failed,
            When::OnFailure => failed,
            When::Always => true,
        }
    }
}

/// One step: a script run in `bash`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    /// `script`, `after_script`, `release`, ...
    #[serde(default, deserialize_with = "nullable")]
    pub name: String,
    /// Its lines, run in order; the step fails at the first that fails.
    #[serde(default, deserialize_with = "nullable")]
    pub script: Vec<String>,
    /// Its timeout in seconds (0: the job's).
    #[serde(default, deserialize_with = "nullable")]
    pub timeout: u64,
    /// Whether it runs, given the steps before it.
    #[serde(default, deserialize_with = "nullable")]
    pub when: When,
    /// A failure of this step does not fail the job (`after_script`).
    #[serde(default, deserialize_with = "nullable")]
    pub allow_failure: bool,
}

/// One entry of `artifacts` (`artifacts:paths`, or one report).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Artifact {
    /// The archive's name (without extension); default `artifacts`.
    #[serde(default, deserialize_with = "nullable")]
    pub name: String,
    /// Also every file git does not track.
    #[serde(default, deserialize_with = "nullable")]
    pub untracked: bool,
    /// Files, directories and globs, relative to the project directory.
    #[serde(default, deserialize_with = "nullable")]
    pub paths: Vec<String>,
    /// Globs to leave out (needs the `artifacts_exclude` feature, which
    /// this runner does not announce).
    #[serde(default, deserialize_with = "nullable")]
    pub exclude: Vec<String>,
    /// When to upload it, given how the job ended.
    #[serde(default, deserialize_with = "nullable")]
    pub when: When,
    /// `archive` for `artifacts:paths`; a report's type (`junit`, ...).
    #[serde(default, deserialize_with = "nullable")]
    pub artifact_type: String,
    /// `zip`, `gzip` or `raw`.
    #[serde(default, deserialize_with = "nullable")]
    pub artifact_format: String,
    /// How long GitLab keeps it (`30 days`); empty: the instance's default.
    #[serde(default, deserialize_with = "nullable")]
    pub expire_in: String,
}

/// An earlier job whose artifacts this one needs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dependency {
    /// That job's id (`GET /api/v4/jobs/:id/artifacts`).
    #[serde(default, deserialize_with = "nullable")]
    pub id: u64,
    /// That job's name.
    #[serde(default, deserialize_with = "nullable")]
    pub name: String,
    /// The token to download them with (not the job's own).
    #[serde(default, deserialize_with = "nullable")]
    pub token: String,
    /// The archive; absent when that job kept no artifacts.
    #[serde(default)]
    pub artifacts_file: Option<ArtifactFile>,
}

/// A dependency's archive.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArtifactFile {
    /// Its file name (`artifacts.zip`).
    #[serde(default, deserialize_with = "nullable")]
    pub filename: String,
    /// Its size in bytes.
    #[serde(default, deserialize_with = "nullable")]
    pub size: u64,
}

impl Job {
    /// Parse a `201` body.
    ///
    /// # Errors
    /// Not JSON, a field of the wrong type, or no `id` or `token`.
    pub fn parse(body: &[u8]) -> Result<Job, String> {
        let job: Job = serde_json::from_slice(body).map_err(|e| format!("the job's JSON: {e}"))?;
        if job.id == 0 || job.token.is_empty() {
            return Err("a job without id or token".into());
        }
        Ok(job)
    }

    /// The value of variable `key` (the last one wins, as in GitLab).
    pub fn variable(&self, key: &str) -> Option<&str> {
        self.variables
            .iter()
            .rev()
            .find(|v| v.key == key)
            .map(|v| v.value.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A payload shaped as GitLab 17 sends it, nulls and unknown fields
    /// included.
    const GITLAB: &str = r#"{
      "id": 4021, "token": "glcbt-64_abc", "allow_git_fetch": true,
      "job_info": {"id": 4021, "name": "test", "stage": "test", "project_id": 9,
                   "project_name": "demo", "time_in_queue_seconds": 1},
      "git_info": {"repo_type": "git",
                   "repo_url": "https://gitlab-ci-token:glcbt-64_abc@gitlab.example.com/g/demo.git",
                   "ref": "main", "sha": "1f2e3d", "before_sha": "0000", "ref_type": "branch",
                   "refspecs": ["+refs/pipelines/77:refs/pipelines/77",
                                "+refs/heads/main:refs/remotes/origin/main"], "depth": 20},
      "runner_info": {"timeout": 3600, "runner_session_url": null},
      "variables": [{"key": "CI_JOB_ID", "value": "4021", "public": true, "masked": false},
                    {"key": "SECRET", "value": "hunter22", "public": false, "masked": true},
                    {"key": "KUBECONFIG", "value": "apiVersion: v1", "public": false, "file": true,
                     "masked": false, "raw": false}],
      "steps": [{"name": "script", "script": ["make", "make test"], "timeout": 3600,
                 "when": "on_success", "allow_failure": false},
                {"name": "after_script", "script": ["echo done"], "timeout": 300,
                 "when": "always", "allow_failure": true}],
      "image": null, "services": [], "cache": [],
      "artifacts": [{"name": "bin", "untracked": false, "paths": ["out/"], "exclude": [],
                     "when": "on_success", "artifact_type": "archive",
                     "artifact_format": "zip", "expire_in": "1 week"},
                    {"name": "junit", "paths": ["report.xml"], "when": "always",
                     "artifact_type": "junit", "artifact_format": "gzip", "expire_in": null}],
      "credentials": [{"type": "registry", "url": "r", "username": "u", "password": "p"}],
      "dependencies": [{"id": 4019, "name": "lint", "token": "glcbt-64_abc"},
                       {"id": 4020, "name": "build", "token": "glcbt-64_abc",
                        "artifacts_file": {"filename": "artifacts.zip", "size": 1024}}],
      "features": {"trace_sections": true}
    }"#;

    #[test]
    fn a_gitlab_payload_parses_with_nulls_and_unknown_fields() {
        let job = Job::parse(GITLAB.as_bytes()).expect("GitLab's payload");
        assert_eq!((job.id, job.token.as_str()), (4021, "glcbt-64_abc"));
        assert_eq!(job.git_info.git_ref, "main");
        assert_eq!(job.git_info.refspecs.len(), 2);
        assert_eq!(job.git_info.depth, 20);
        assert_eq!(job.runner_info.timeout, 3600);
        assert_eq!(job.steps[1].when, When::Always);
        assert!(job.steps[1].allow_failure);
        assert_eq!(job.steps[0].script, ["make", "make test"]);
        assert!(job.variables[1].masked && job.variables[2].file);
        assert_eq!(job.variable("SECRET"), Some("hunter22"));
        assert_eq!(job.artifacts[0].expire_in, "1 week");
        assert_eq!(job.artifacts[1].expire_in, "", "null is the default");
        assert_eq!(job.artifacts[1].artifact_format, "gzip");
        // The first dependency kept no artifacts; the second did.
        assert_eq!(job.dependencies[0].artifacts_file, None);
        assert_eq!(
            job.dependencies[1].artifacts_file.as_ref().map(|f| f.size),
            Some(1024)
        );
    }

    #[test]
    fn nulls_everywhere_are_defaults_and_a_job_needs_an_id_and_token() {
        let job = Job::parse(
            br#"{"id":1,"token":"t","steps":null,"variables":null,"artifacts":null,
                 "dependencies":null,"git_info":null,"runner_info":{"timeout":null}}"#,
        )
        .expect("nulls");
        assert!(job.steps.is_empty() && job.artifacts.is_empty());
        assert_eq!(job.runner_info.timeout, 0);
        assert!(Job::parse(br#"{"id":1}"#).is_err());
        assert!(Job::parse(br#"{"token":"t"}"#).is_err());
        assert!(Job::parse(br#"{"id":"one","token":"t"}"#).is_err());
        assert!(Job::parse(b"<html>").is_err());
        assert!(Job::parse(br#"{"id":1,"token":"t","steps":[{"when":"never"}]}"#).is_err());
    }

    #[test]
    fn when_decides_by_how_the_job_is_going() {
        assert!(When::OnSuccess.applies(false) && !When::OnSuccess.applies(true));
        assert!(!When::OnFailure.applies(false) && When::OnFailure.applies(true));
        assert!(When::Always.applies(false) && When::Always.applies(true));
    }
}
