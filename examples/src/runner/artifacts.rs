//! Artifacts both ways. Down: every dependency that kept an archive is
//! fetched with its own token (`GET /api/v4/jobs/:id/artifacts`, following
//! the redirect to object storage, which never sees the token), streamed
//! to disk and unpacked into the project directory; paths that would land
//! outside it are refused. Up: each `artifacts` entry whose `when` matches
//! how the job ended is packed (`zip`: the archive; `gzip`: one gzip
//! member per file, as reports go; `raw`: one file as is) and POSTed as
//! multipart, streamed from the file with the entry's `artifact_type`,
//! `artifact_format` and `expire_in`. A job with no artifacts uploads
//! nothing.

use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use ring::digest::{Context, SHA256};
use rotary::RequestOptions;

use super::api::{ApiError, Part};
use super::job::Artifact;
use super::{retry, Ctx, JobFailure};
use crate::coordinator::hex;

/// Tries of a download or an upload.
const ATTEMPTS: u32 = 5;
/// Most entries unpacked from one archive, and most files packed into one.
const MAX_ENTRIES: usize = 100_000;
/// Most bytes unpacked from one archive (a zip bomb stops here).
const MAX_UNPACKED: u64 = 16 << 30;

fn failure(why: String) -> JobFailure {
    JobFailure::system(why)
}

/// A deadline that grows with the size: a minute, plus one per 16 MiB/s.
fn transfer_deadline(size: u64) -> Duration {
    Duration::from_secs(60 + size / (1024 * 1024))
}

/// Fetch and unpack each dependency's archive.
pub(crate) fn download_dependencies(ctx: &mut Ctx<'_>) -> Result<(), JobFailure> {
    for dep in &ctx.job.dependencies {
        let Some(file) = &dep.artifacts_file else {
            ctx.trace.line(format!(
                "Skipping artifacts of {} ({}): it kept none",
                dep.name, dep.id
            ));
            continue;
        };
        if let Some(s) = ctx.must_stop() {
            return Err(ctx.stopped(&s));
        }
        ctx.trace.line(format!(
            "Downloading artifacts for {} ({})...",
            dep.name, dep.id
        ));
        let url = ctx
            .url(&format!("/api/v4/jobs/{}/artifacts", dep.id))
            .map_err(failure)?;
        let zip = ctx
            .dir
            .join("tmp")
            .join(format!("dependency-{}.zip", dep.id));
        let opts = RequestOptions::default()
            .deadline(transfer_deadline(file.size))
            .follow_redirects(5)
            .retry_safe(true);
        let mut backoff = ctx.api.backoff();
        let mut attempt = 0;
        let d = loop {
            attempt += 1;
            let req = http::Request::get(url.as_str())
                .header("job-token", dep.token.as_str())
                .body(Bytes::new())
                .map_err(|e| failure(e.to_string()))?;
            let out = File::create(&zip)
                .map_err(|e| failure(format!("creating {}: {e}", zip.display())))?;
            let mut w = BufWriter::new(out);
            let got = ctx.api.download(req, opts, &mut w);
            let flushed = w.flush();
            let wait = match got {
                Ok(d) if d.status.is_success() => {
                    flushed.map_err(|e| failure(format!("writing {}: {e}", zip.display())))?;
                    break d;
                }
                Ok(d) if retry::retryable(d.status) && attempt < ATTEMPTS => {
                    retry::server_wait(&d.headers, SystemTime::now())
                        .unwrap_or_else(|| backoff.next())
                }
                Ok(d) => {
                    return Err(failure(format!(
                        "downloading artifacts of job {}: {}",
                        dep.id, d.status
                    )))
                }
                Err(ApiError::Write(e)) => {
                    return Err(failure(format!("writing {}: {e}", zip.display())))
                }
                Err(e) if attempt < ATTEMPTS && ctx.api.stopped().is_none() => {
                    (ctx.log)(format!(
                        "job {}: download of job {}'s artifacts: {e}",
                        ctx.job.id, dep.id
                    ));
                    backoff.next()
                }
                Err(e) => {
                    return Err(failure(format!(
                        "downloading artifacts of job {}: {e}",
                        dep.id
                    )))
                }
            };
            ctx.api.idle(wait);
        };
        if file.size > 0 && d.bytes != file.size {
            return Err(failure(format!(
                "artifacts of job {}: {} bytes, the job said {}",
                dep.id, d.bytes, file.size
            )));
        }
        let from = d
            .served_by
            .redirected_to
            .as_ref()
            .and_then(|u| u.authority().map(|a| a.to_string()))
            .unwrap_or_else(|| "the coordinator".into());
        let (entries, bytes) = unzip(&zip, &ctx.project)
            .map_err(|e| failure(format!("unpacking the artifacts of job {}: {e}", dep.id)))?;
        let _ = std::fs::remove_file(&zip);
        ctx.trace.line(format!(
            "Downloaded artifacts of job {} from {from}: {} bytes, sha256 {}; {entries} entries, {bytes} bytes unpacked",
            dep.id, d.bytes, d.sha256
        ));
        (ctx.log)(format!(
            "job {}: dependency artifacts {} bytes sha256 {} from {from}",
            ctx.job.id, d.bytes, d.sha256
        ));
        ctx.tick();
    }
    Ok(())
}

/// Unpack `zip` into `into`; (entries, bytes). Entries whose names leave
/// `into` are refused, symbolic links skipped.
fn unzip(zip: &Path, into: &Path) -> Result<(usize, u64), String> {
    let f = File::open(zip).map_err(|e| format!("{}: {e}", zip.display()))?;
    let mut archive = zip::ZipArchive::new(f).map_err(|e| format!("not a zip archive: {e}"))?;
    if archive.len() > MAX_ENTRIES {
        return Err(format!("more than {MAX_ENTRIES} entries"));
    }
    let mut total = 0u64;
    for i in 0..archive.len() {
        let mut entry = archive.by_index(i).map_err(|e| e.to_string())?;
        let Some(name) = entry.enclosed_name() else {
            return Err(format!(
                "entry {:?} leaves the project directory",
                entry.name()
            ));
        };
        let mode = entry.unix_mode();
        if mode.is_some_and(|m| m & 0o170000 == 0o120000) {
            continue;
        }
        let path = into.join(name);
        if entry.is_dir() {
            std::fs::create_dir_all(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            continue;
        }
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
        }
        let mut out = File::create(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let room = MAX_UNPACKED - total;
        let n = io::copy(&mut (&mut entry).take(room + 1), &mut out)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        total += n;
        if total > MAX_UNPACKED {
            return Err(format!("more than {MAX_UNPACKED} bytes unpacked"));
        }
        if let Some(m) = mode {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(m & 0o777));
        }
    }
    Ok((archive.len(), total))
}

/// Upload every artifacts entry that applies to a job that `failed` or not.
pub(crate) fn upload(ctx: &mut Ctx<'_>, failed: bool) -> Result<(), JobFailure> {
    for (n, art) in ctx.job.artifacts.iter().enumerate() {
        if !art.when.applies(failed) {
            continue;
        }
        if let Some(s) = ctx.must_stop() {
            return Err(ctx.stopped(&s));
        }
        let files = match collect(&ctx.project, art) {
            Ok(f) => f,
            Err(why) => {
                ctx.trace
                    .line(format!("WARNING: artifacts {:?}: {why}", art.paths));
                continue;
            }
        };
        if art.untracked {
            ctx.trace
                .line("WARNING: artifacts:untracked is not supported by this runner; paths only");
        }
        if files.is_empty() {
            ctx.trace.line(format!(
                "WARNING: {:?}: no matching files. Ensure that the artifact path is relative to the working directory",
                art.paths
            ));
            continue;
        }
        let format = if art.artifact_format.is_empty() {
            "zip"
        } else {
            art.artifact_format.as_str()
        };
        let kind = if art.artifact_type.is_empty() {
            "archive"
        } else {
            art.artifact_type.as_str()
        };
        let packed = ctx.dir.join("tmp").join(format!("upload-{n}"));
        let filename = match format {
            "zip" => {
                pack_zip(&ctx.project, &files, &packed).map_err(failure)?;
                format!(
                    "{}.zip",
                    if art.name.is_empty() {
                        "artifacts"
                    } else {
                        &art.name
                    }
                )
            }
            "gzip" => {
                pack_gzip(&ctx.project, &files, &packed).map_err(failure)?;
                format!("{kind}.gz")
            }
            "raw" => {
                let [only] = files.as_slice() else {
                    return Err(failure(format!(
                        "a raw artifact must be one file, {:?} matched {}",
                        art.paths,
                        files.len()
                    )));
                };
                std::fs::copy(ctx.project.join(only), &packed)
                    .map_err(|e| failure(format!("{}: {e}", only.display())))?;
                only.file_name()
                    .map_or_else(|| "artifact".into(), |f| f.to_string_lossy().into_owned())
            }
            other => {
                return Err(failure(format!("unknown artifact format {other:?}")));
            }
        };
        let (size, sha) = hash_file(&packed).map_err(failure)?;
        ctx.trace.line(format!(
            "Uploading {filename} ({kind}, {format}): {} files, {size} bytes",
            files.len()
        ));
        (ctx.log)(format!(
            "job {}: artifact {size} bytes sha256 {sha}",
            ctx.job.id
        ));
        send(ctx, art, format, kind, &filename, &packed, size)?;
        let _ = std::fs::remove_file(&packed);
        ctx.trace
            .line(format!("Uploaded {filename}: {size} bytes, sha256 {sha}"));
        ctx.tick();
    }
    Ok(())
}

/// POST one packed artifact, multipart, streamed from the file; a new body
/// for every try.
fn send(
    ctx: &mut Ctx<'_>,
    art: &Artifact,
    format: &str,
    kind: &str,
    filename: &str,
    packed: &Path,
    size: u64,
) -> Result<(), JobFailure> {
    let mut query = format!("artifact_format={format}&artifact_type={kind}");
    if !art.expire_in.is_empty() {
        query.push_str(&format!("&expire_in={}", form_encode(&art.expire_in)));
    }
    let url = ctx
        .url(&format!("/api/v4/jobs/{}/artifacts?{query}", ctx.job.id))
        .map_err(failure)?;
    let opts = RequestOptions::default().deadline(transfer_deadline(size));
    let mut backoff = ctx.api.backoff();
    let mut attempt = 0;
    loop {
        attempt += 1;
        let boundary = format!("rotary-{:016x}", fastrand::u64(..));
        let safe_name = filename.replace(['"', '\\', '\r', '\n'], "_");
        let preamble = format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{safe_name}\"\r\n\
             Content-Type: application/octet-stream\r\n\r\n"
        );
        let file = File::open(packed).map_err(|e| failure(format!("{}: {e}", packed.display())))?;
        let parts = vec![
            Part::Bytes(Bytes::from(preamble)),
            Part::File(file),
            Part::Bytes(Bytes::from(format!("\r\n--{boundary}--\r\n"))),
        ];
        let req = http::Request::post(url.as_str())
            .header("job-token", ctx.job.token.as_str())
            .header(
                "content-type",
                format!("multipart/form-data; boundary={boundary}"),
            )
            .body(())
            .map_err(|e| failure(e.to_string()))?;
        let wait = match ctx.api.upload(req, parts, opts) {
            Ok(a) => {
                let s = a.response.status();
                match s.as_u16() {
                    201 => return Ok(()),
                    413 => return Err(failure(format!("uploading {filename}: too large (413)"))),
                    403 => {
                        ctx.canceled =
                            ctx.canceled || a.response.headers().contains_key("job-status");
                        return Err(failure(format!("uploading {filename}: refused (403)")));
                    }
                    _ if retry::retryable(s)
                        && attempt < ATTEMPTS
                        && ctx.api.stopped().is_none() =>
                    {
                        retry::server_wait(a.response.headers(), SystemTime::now())
                            .unwrap_or_else(|| backoff.next())
                    }
                    _ => {
                        return Err(failure(format!(
                            "uploading {filename}: coordinator answered {s}"
                        )))
                    }
                }
            }
            Err(e) if attempt < ATTEMPTS && ctx.api.stopped().is_none() => {
                (ctx.log)(format!("job {}: uploading {filename}: {e}", ctx.job.id));
                backoff.next()
            }
            Err(e) => return Err(failure(format!("uploading the artifact: {e}"))),
        };
        (ctx.log)(format!(
            "job {}: uploading {filename}: try {} of {ATTEMPTS} in {}",
            ctx.job.id,
            attempt + 1,
            crate::args::show(wait)
        ));
        ctx.api.idle(wait);
    }
}

/// `1 day` → `1+day`; what a query value may not hold, escaped.
fn form_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b' ' => "+".to_owned(),
            b if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) => (b as char).to_string(),
            b => format!("%{b:02X}"),
        })
        .collect()
}

/// The files an entry names, relative to `project`, sorted: each path is
/// a file, a directory (everything under it) or a glob; none may leave
/// the project directory.
fn collect(project: &Path, art: &Artifact) -> Result<Vec<PathBuf>, String> {
    let mut out = Vec::new();
    for p in &art.paths {
        let rel = Path::new(p);
        if rel.is_absolute() || rel.components().any(|c| c == Component::ParentDir) {
            return Err(format!("{p:?} leaves the project directory"));
        }
        let matches: Vec<PathBuf> = if p.contains(['*', '?', '[']) {
            let pattern = project.join(p);
            let pattern = pattern
                .to_str()
                .ok_or_else(|| format!("{p:?} is not UTF-8"))?;
            glob::glob(pattern)
                .map_err(|e| format!("{p:?}: {e}"))?
                .filter_map(Result::ok)
                .collect()
        } else {
            vec![project.join(rel)]
        };
        for m in matches {
            walk(project, &m, &mut out)?;
        }
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// `path` (a file, or a directory and everything under it, symbolic
/// links left out) into `out`, relative to `project`.
fn walk(project: &Path, path: &Path, out: &mut Vec<PathBuf>) -> Result<(), String> {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return Ok(());
    };
    if out.len() >= MAX_ENTRIES {
        return Err(format!("more than {MAX_ENTRIES} files"));
    }
    if meta.is_file() {
        if let Ok(rel) = path.strip_prefix(project) {
            out.push(rel.to_path_buf());
        }
    } else if meta.is_dir() {
        let entries = std::fs::read_dir(path).map_err(|e| format!("{}: {e}", path.display()))?;
        for e in entries.flatten() {
            walk(project, &e.path(), out)?;
        }
    }
    Ok(())
}

/// Zip `files` (relative to `project`) into `to`. Each file is deflated
/// unless a sample of it does not shrink (already compressed, or random),
/// then stored: compressing such bytes costs time and gains nothing.
fn pack_zip(project: &Path, files: &[PathBuf], to: &Path) -> Result<(), String> {
    use zip::write::SimpleFileOptions;
    use zip::CompressionMethod;
    let out = File::create(to).map_err(|e| format!("{}: {e}", to.display()))?;
    let mut zip = zip::ZipWriter::new(BufWriter::new(out));
    for rel in files {
        let path = project.join(rel);
        let mut f = File::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let meta = f
            .metadata()
            .map_err(|e| format!("{}: {e}", path.display()))?;
        let method = if compresses(&mut f).map_err(|e| format!("{}: {e}", path.display()))? {
            CompressionMethod::Deflated
        } else {
            CompressionMethod::Stored
        };
        use std::os::unix::fs::PermissionsExt;
        let options = SimpleFileOptions::default()
            .compression_method(method)
            .unix_permissions(meta.permissions().mode() & 0o777)
            .large_file(meta.len() >= u64::from(u32::MAX));
        let name = rel
            .to_str()
            .ok_or_else(|| format!("{} is not UTF-8", rel.display()))?;
        zip.start_file(name, options).map_err(|e| e.to_string())?;
        io::copy(&mut f, &mut zip).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    let mut w = zip.finish().map_err(|e| e.to_string())?;
    w.flush().map_err(|e| format!("{}: {e}", to.display()))
}

/// Whether deflate shrinks the first 64 KiB of `f` by a tenth; `f` is
/// rewound.
fn compresses(f: &mut File) -> io::Result<bool> {
    use std::io::Seek;
    let mut sample = Vec::new();
    (&mut *f).take(64 * 1024).read_to_end(&mut sample)?;
    f.rewind()?;
    if sample.len() < 512 {
        return Ok(true);
    }
    let mut enc = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(&sample)?;
    let packed = enc.finish()?;
    Ok(packed.len() * 10 < sample.len() * 9)
}

/// One gzip member per file, named after it, one after another (GitLab's
/// `gzip` artifact format for reports).
fn pack_gzip(project: &Path, files: &[PathBuf], to: &Path) -> Result<(), String> {
    let mut out = BufWriter::new(File::create(to).map_err(|e| format!("{}: {e}", to.display()))?);
    for rel in files {
        let path = project.join(rel);
        let mut f = File::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let name = rel.to_string_lossy().into_owned();
        let mut gz = flate2::GzBuilder::new()
            .filename(name)
            .write(&mut out, flate2::Compression::default());
        io::copy(&mut f, &mut gz).map_err(|e| format!("{}: {e}", path.display()))?;
        gz.finish().map_err(|e| format!("{}: {e}", to.display()))?;
    }
    out.flush().map_err(|e| format!("{}: {e}", to.display()))
}

/// The size and SHA-256 of `path`.
fn hash_file(path: &Path) -> Result<(u64, String), String> {
    let mut f = File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut hash = Context::new(&SHA256);
    let mut buf = vec![0u8; 256 * 1024];
    let mut size = 0u64;
    loop {
        let n = f
            .read(&mut buf)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        if n == 0 {
            break;
        }
        hash.update(&buf[..n]);
        size += n as u64;
    }
    Ok((size, hex(hash.finish().as_ref())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_globs_and_directories_are_collected_and_packed_both_ways() {
        let dir = crate::TempDir::new("artifacts-test").expect("temp dir");
        let project = dir.path().join("p");
        std::fs::create_dir_all(project.join("out/sub")).expect("dirs");
        std::fs::write(project.join("out/a.txt"), "aaaa".repeat(1000)).expect("write");
        std::fs::write(project.join("out/sub/b.bin"), [7u8; 10]).expect("write");
        std::fs::write(project.join("report.xml"), "<x/>").expect("write");
        std::fs::write(project.join("other.xml"), "<y/>").expect("write");
        let art = |paths: &[&str]| Artifact {
            paths: paths.iter().map(|p| p.to_string()).collect(),
            ..Artifact::default()
        };
        let files = collect(&project, &art(&["out/", "*.xml", "missing"])).expect("collect");
        let names: Vec<String> = files.iter().map(|p| p.display().to_string()).collect();
        assert_eq!(
            names,
            ["other.xml", "out/a.txt", "out/sub/b.bin", "report.xml"]
        );
        assert!(collect(&project, &art(&["../etc"])).is_err());
        assert!(collect(&project, &art(&["/etc/passwd"])).is_err());
        // Packed and unpacked elsewhere: the same bytes.
        let zip = dir.path().join("a.zip");
        pack_zip(&project, &files, &zip).expect("zip");
        let back = dir.path().join("back");
        let (entries, bytes) = unzip(&zip, &back).expect("unzip");
        assert_eq!(entries, 4);
        assert_eq!(bytes, 4000 + 10 + 4 + 4);
        assert_eq!(
            std::fs::read(back.join("out/a.txt")).expect("read"),
            "aaaa".repeat(1000).as_bytes()
        );
        // gzip members, one per file.
        let gz = dir.path().join("r.gz");
        pack_gzip(&project, &[PathBuf::from("report.xml")], &gz).expect("gzip");
        let mut text = String::new();
        flate2::read::MultiGzDecoder::new(File::open(&gz).expect("open"))
            .read_to_string(&mut text)
            .expect("gunzip");
        assert_eq!(text, "<x/>");
    }

    #[test]
    fn an_archive_entry_leaving_the_directory_is_refused() {
        let dir = crate::TempDir::new("zip-slip-test").expect("temp dir");
        let zip_path = dir.path().join("evil.zip");
        let mut z = zip::ZipWriter::new(File::create(&zip_path).expect("create"));
        z.start_file("../escaped.txt", zip::write::SimpleFileOptions::default())
            .expect("entry");
        z.write_all(b"x").expect("write");
        z.finish().expect("finish");
        let into = dir.path().join("into");
        let e = unzip(&zip_path, &into).expect_err("refused");
        assert!(e.contains("leaves the project directory"), "{e}");
        assert!(!dir.path().join("escaped.txt").exists());
    }

    #[test]
    fn random_bytes_are_stored_and_text_is_deflated() {
        let dir = crate::TempDir::new("compress-test").expect("temp dir");
        let text = dir.path().join("t");
        std::fs::write(&text, "hello world ".repeat(1000)).expect("write");
        let random = dir.path().join("r");
        let mut bytes = vec![0u8; 10_000];
        fastrand::fill(&mut bytes);
        std::fs::write(&random, &bytes).expect("write");
        assert!(compresses(&mut File::open(&text).expect("open")).expect("sample"));
        assert!(!compresses(&mut File::open(&random).expect("open")).expect("sample"));
        assert_eq!(form_encode("1 day"), "1+day");
        assert_eq!(form_encode("a&b"), "a%26b");
    }
}
