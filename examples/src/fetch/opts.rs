//! fetch's flags: the help text, what each flag sets, and the checks that
//! need no network (files to read, values to parse).

use std::io::Read;
use std::path::PathBuf;
use std::time::Duration;

use crate::args::Args;
use crate::{Failure, Output};

use super::resolve::Pin;

pub(super) const HELP: &str = "\
fetch: a curl-like HTTP/1.1 client on the rotary engine.

usage: cargo run --example fetch -- [FLAGS] URL

Short flags bundle as in curl: -fsSL, -XPOST, -d@-.

request:
  -X, --request METHOD   method              [GET; POST with -d; HEAD with -I]
  -H, --header 'N: V'    add a request header (repeatable); 'N:' sends no N
                         (drops the Authorization or Content-Type fetch would
                         add), 'N;' sends N with an empty value
  -T, --upload-file FILE PUT FILE (streamed from disk, a window at a time)
  -o, --output FILE      write the body to FILE as it arrives (streamed)
  -#, --progress-bar     a progress bar on stderr (default with -o or -T
                         when stderr is a terminal)
  -d, --data DATA        request body; @FILE sends FILE (streamed from disk
                         when it is the only -d), @- reads stdin; -d
                         given again appends '&' and DATA; the Content-Type is
                         application/x-www-form-urlencoded unless -H sets one
      --data-binary DATA the same as -d
  -u, --user USER:PASS   Basic authentication (Authorization: Basic ...);
                         overrides user:pass@ in the URL, which is sent the same
                         way and never in the request line or Host
  -I, --head             send HEAD; print the response head on stdout
  -L, --location         follow redirects (301, 302, 303, 307, 308)
      --max-redirs N     with -L, fail after N redirects; -1: no limit   [50]
      --resolve HOST:PORT:ADDR[,ADDR...]
                         connect to ADDR (IPv6 as [::1]; several race)
                         instead of resolving HOST, for URLs with HOST and
                         PORT; TLS still checks the certificate against HOST
                         (repeatable)
  -m, --max-time D       total deadline per request, redirects included [30s]
      --timeout D        the same

proxy (without -x: https_proxy/HTTPS_PROXY, http_proxy, all_proxy/ALL_PROXY
and no_proxy/NO_PROXY from the environment, with curl's rules):
  -x, --proxy URL        send every request through this proxy
                         ([http[s]://][user:pass@]host[:port], port 1080 by
                         default, 443 for https://): https:// in a CONNECT
                         tunnel, http:// in absolute-form; an https:// proxy
                         is reached over TLS first (two TLS sessions)
      --proxy-user U:P   Basic credentials for the proxy (over URL userinfo)
      --proxy-cacert FILE  check an https:// proxy's certificate against
                         the CA certificates in FILE only (PEM), as curl;
                         without it, the same trust as the origin's
      --noproxy LIST     hosts reached directly (comma list: suffixes, IPs,
                         CIDR ranges, host:port, '*'); over no_proxy

TLS:
  --cacert FILE          trust only the CA certificates in FILE (PEM); without
                         it, the engine's default: the host's trust store
                         (SSL_CERT_FILE and SSL_CERT_DIR honoured, as in curl)
  -E, --cert FILE        client certificate chain for mutual TLS (PEM, leaf
                         first); also its private key unless --key is given
      --key FILE         the client certificate's private key (PEM)
      --crlfile FILE     certificate revocation lists (PEM, or one DER list),
                         as curl: a certificate of the server's path that its
                         issuer's list revokes fails the handshake, named by
                         subject and serial. A list past its nextUpdate still
                         applies, with a warning (curl refuses the handshake)

output:
  -i, --include          print the status line and headers before the body
  -f, --fail             on a status of 400 or more print no body and exit 22
  -s, --silent           print nothing on stderr but -v output: no --repeat
                         lines, and no failure message unless -S
  -S, --show-error       with -s, still print a failure's message
  -v, --verbose          on stderr, as curl: '> ' lines for the request head,
                         '< ' for the response head, '* ' for the rest:
                         rotary's debug log (each address attempt of the race,
                         each redirect hop) and connection events: opened
                         (address, TLS version, cipher, full or resumed
                         handshake, chain SHA-256, and the verified path:
                         subject, issuer and SHA-256 of each certificate,
                         which one is the anchor), closed (reason), chain
                         changes
  --dump-chain FILE      write the chain the server presented (PEM, leaf first,
                         as sent: often no root) to FILE
  --dump-ca FILE         write the CA bundle a client should trust to reach
                         this server and any other with a certificate from
                         the same CA (PEM): the verified path's intermediates
                         and root, without the leaf

rotary:
  --max-age D            connection max age                   [15m]
  --repeat N             send the request N times on one engine [1]
  --interval D           wait D between repeats               [1s]
  -h, --help             this text

Status line (with -i or -I) and body go to stdout (the body to FILE with -o),
streamed as they arrive whatever the size, as curl; with --repeat, one line per
request on stderr says which connection served it and whether it was reused.
Durations take units: 500ms, 3s, 1.5 (seconds), 2m.

where fetch differs from curl:
  - the '> ' lines show the first request's head as rotary's codec encodes it,
    printed before connecting; header names are lowercase, as on the wire.
    A followed redirect's request head is not shown: a '* ' line from rotary
    names each hop's URI. The '< ' lines show the final response's head as
    rotary parsed it: lowercase names and the standard reason phrase.
  - -i and -I print the final response's head only, not each redirect's.
  - -L refuses a redirect from https:// to http:// (curl follows it).
  - -u needs USER:PASS: fetch never prompts for a password.
  - -d @FILE sends FILE as it is (curl -d strips CR and LF, --data-binary not).
  - -s: there is no progress meter to hide; bad flags are always reported.
  - a URL needs http:// or https://; no -k, cookies or compression;
    --resolve takes no '+' or '-' entries and no '*' host.
  - proxies: http:// and https:// (no SOCKS), Basic credentials only;
    --resolve does not apply to the proxy's name.
  - exit codes other than 22, 23, 26, 47 and 56 are fetch's own:

exit codes:
  0  a response arrived (whatever its status, unless -f)
  1  other failure (engine could not start, cancelled)
  2  bad flags or arguments, or a request that cannot be sent
  3  a TLS file cannot be read or holds no usable PEM: --cacert, --cert,
     --key (or it does not belong to --cert), --crlfile, or the host's store
     (as SSL_CERT_FILE or SSL_CERT_DIR name it)
  4  the host name did not resolve
  5  the TCP connection failed (to every address tried)
  6  the TLS handshake failed (untrusted chain, wrong name, revoked, ...)
  7  the HTTP exchange failed (write, response head or body, peer closed)
  8  a deadline passed (connect, proxy CONNECT, handshake or --max-time)
  9  --dump-chain or --dump-ca FILE could not be written, or --dump-ca has
     no bundle to write (the root is a compiled-in one without a
     certificate: trust the system's store instead)
  22 with -f, the status was 400 or more (as curl)
  23 the body could not be written (stdout closed, -o FILE not writable)
     (as curl)
  26 the -T or -d @FILE file cannot be read (as curl)
  56 the proxy failed: unreachable, TLS with an https:// proxy failed, or
     it refused the CONNECT (403, 407 with or without credentials), closed
     or sent a bad answer (curl: 56)
  47 a redirect could not be followed: more than --max-redirs, a loop,
     https to http, or a bad Location (curl: 47 for too many)";

/// Curl's default for `--max-redirs`.
const MAX_REDIRS: usize = 50;

/// A header from `-H`: a value to send, or (for `Name:`) none at all.
pub(super) struct Header {
    pub(super) name: String,
    pub(super) value: Option<String>,
}

/// Everything the flags say.
pub(super) struct Opts {
    pub(super) url: String,
    pub(super) method: Option<String>,
    pub(super) headers: Vec<Header>,
    /// The `-d` body, joined with `&`; empty when `data_file` holds it.
    pub(super) data: Option<Vec<u8>>,
    /// A lone `-d @FILE`: the body is streamed from FILE, never read into
    /// memory whole.
    pub(super) data_file: Option<PathBuf>,
    /// `-T FILE`: PUT the file, streamed.
    pub(super) upload: Option<PathBuf>,
    /// `-o FILE`: the body goes to FILE as it arrives.
    pub(super) output: Option<PathBuf>,
    /// `-#`: a progress bar on stderr.
    pub(super) progress: bool,
    pub(super) user: Option<String>,
    pub(super) head: bool,
    /// `Some(max)` with `-L`.
    pub(super) follow: Option<usize>,
    pub(super) resolve: Vec<Pin>,
    /// `-x`, `--proxy-user`, `--noproxy`
    pub(super) proxy: Option<String>,
    pub(super) proxy_user: Option<String>,
    pub(super) noproxy: Option<String>,
    /// `--proxy-cacert`.
    pub(super) proxy_cacert: Option<PathBuf>,
    pub(super) timeout: Duration,
    pub(super) cacert: Option<PathBuf>,
    pub(super) cert: Option<PathBuf>,
    pub(super) key: Option<PathBuf>,
    /// `--crlfile`.
    pub(super) crlfile: Option<PathBuf>,
    pub(super) include: bool,
    pub(super) fail: bool,
    pub(super) silent: bool,
    pub(super) show_error: bool,
    pub(super) verbose: bool,
    pub(super) dump_chain: Option<PathBuf>,
    pub(super) dump_ca: Option<PathBuf>,
    pub(super) max_age: Option<Duration>,
    pub(super) repeat: u32,
    pub(super) interval: Duration,
}

/// The options in `args`, or `None` when `--help` was printed. `-d @-`
/// reads `stdin` to its end.
pub(super) fn parse(
    args: Vec<String>,
    out: &Output,
    stdin: &mut dyn Read,
) -> Result<Option<Opts>, Failure> {
    let mut a = Args::new(args);
    let mut o = Opts {
        url: String::new(),
        method: None,
        headers: Vec::new(),
        data: None,
        data_file: None,
        upload: None,
        output: None,
        progress: false,
        user: None,
        head: false,
        follow: None,
        resolve: Vec::new(),
        proxy: None,
        proxy_user: None,
        noproxy: None,
        proxy_cacert: None,
        timeout: Duration::from_secs(30),
        cacert: None,
        cert: None,
        key: None,
        crlfile: None,
        include: false,
        fail: false,
        silent: false,
        show_error: false,
        verbose: false,
        dump_chain: None,
        dump_ca: None,
        max_age: None,
        repeat: 1,
        interval: Duration::from_secs(1),
    };
    let mut url = None;
    let mut location = false;
    let mut max_redirs = MAX_REDIRS;
    let mut pieces = Vec::new();
    while let Some(arg) = a.next() {
        match arg.as_str() {
            "-X" | "--request" => o.method = Some(a.value(&arg)?),
            "-H" | "--header" => o.headers.push(header(&arg, &a.value(&arg)?)?),
            "-d" | "--data" | "--data-binary" => {
                pieces.push((data(&arg, &a.value(&arg)?, stdin)?, arg));
            }
            "-T" | "--upload-file" => o.upload = Some(PathBuf::from(a.value(&arg)?)),
            "-o" | "--output" => o.output = Some(PathBuf::from(a.value(&arg)?)),
            "-#" | "--progress-bar" => o.progress = true,
            "-u" | "--user" => o.user = Some(a.value(&arg)?),
            "-I" | "--head" => o.head = true,
            "-L" | "--location" => location = true,
            "--max-redirs" => {
                max_redirs = match a.value(&arg)?.as_str() {
                    "-1" => usize::MAX,
                    n => n.parse().map_err(|_| {
                        Failure::usage(format!("{arg}: expected a count or -1, got {n:?}"))
                    })?,
                }
            }
            "--resolve" => {
                let v = a.value(&arg)?;
                o.resolve
                    .push(Pin::parse(&v).map_err(|e| Failure::usage(format!("{arg} {v:?}: {e}")))?);
            }
            "-x" | "--proxy" => o.proxy = Some(a.value(&arg)?),
            "--proxy-user" => o.proxy_user = Some(a.value(&arg)?),
            "--noproxy" => o.noproxy = Some(a.value(&arg)?),
            "--proxy-cacert" => o.proxy_cacert = Some(PathBuf::from(a.value(&arg)?)),
            "-m" | "--max-time" | "--timeout" => o.timeout = a.duration(&arg)?,
            "--cacert" => o.cacert = Some(PathBuf::from(a.value(&arg)?)),
            "-E" | "--cert" => o.cert = Some(PathBuf::from(a.value(&arg)?)),
            "--key" => o.key = Some(PathBuf::from(a.value(&arg)?)),
            "--crlfile" => o.crlfile = Some(PathBuf::from(a.value(&arg)?)),
            "-i" | "--include" => o.include = true,
            "-f" | "--fail" => o.fail = true,
            "-s" | "--silent" => o.silent = true,
            "-S" | "--show-error" => o.show_error = true,
            "-v" | "--verbose" => o.verbose = true,
            "--dump-chain" => o.dump_chain = Some(PathBuf::from(a.value(&arg)?)),
            "--dump-ca" => o.dump_ca = Some(PathBuf::from(a.value(&arg)?)),
            "--max-age" => o.max_age = Some(a.duration(&arg)?),
            "--repeat" => o.repeat = a.parse(&arg)?,
            "--interval" => o.interval = a.duration(&arg)?,
            h if Args::is_help(h) => {
                out.line(HELP);
                return Ok(None);
            }
            _ if !arg.starts_with('-') && url.is_none() => url = Some(arg),
            _ => return Err(a.unknown(&arg)),
        }
    }
    o.url = url.ok_or_else(|| Failure::usage("a URL is required"))?;
    match pieces.as_slice() {
        [] => {}
        // One file: streamed by the engine, a window at a time.
        [(Piece::File(file), _)] => {
            o.data = Some(Vec::new());
            o.data_file = Some(file.clone());
        }
        // Several pieces are joined in memory, as curl does.
        _ => {
            let mut body = Vec::new();
            for (i, (piece, flag)) in pieces.into_iter().enumerate() {
                if i > 0 {
                    body.push(b'&');
                }
                match piece {
                    Piece::Bytes(b) => body.extend(b),
                    Piece::File(file) => body.extend(std::fs::read(&file).map_err(|e| {
                        Failure::usage(format!("{flag}: cannot read {}: {e}", file.display()))
                    })?),
                }
            }
            o.data = Some(body);
        }
    }
    o.follow = location.then_some(max_redirs);
    if o.repeat == 0 {
        return Err(Failure::usage("--repeat must be at least 1"));
    }
    if o.max_age.is_some_and(|d| d.is_zero()) {
        return Err(Failure::usage("--max-age must be more than zero"));
    }
    if o.upload.is_some() && o.data.is_some() {
        return Err(Failure::usage("-T and -d both give a body: use one"));
    }
    if o.head && o.data.is_some() {
        return Err(Failure::usage("-I sends HEAD, which takes no -d body"));
    }
    if o.key.is_some() && o.cert.is_none() {
        return Err(Failure::usage("--key needs --cert"));
    }
    Ok(Some(o))
}

/// `Name: value`, `Name:` (send no Name) or `Name;` (send Name empty).
fn header(flag: &str, h: &str) -> Result<Header, Failure> {
    let (name, value) = match (h.split_once(':'), h.strip_suffix(';')) {
        (Some((n, v)), _) if v.trim().is_empty() => (n, None),
        (Some((n, v)), _) => (n, Some(v.trim().to_owned())),
        (None, Some(n)) => (n, Some(String::new())),
        (None, None) => {
            return Err(Failure::usage(format!(
                "{flag}: expected 'Name: value', got {h:?}"
            )))
        }
    };
    Ok(Header {
        name: name.trim().to_owned(),
        value,
    })
}

/// One `-d` value.
enum Piece {
    /// DATA itself, or stdin's bytes for `@-`.
    Bytes(Vec<u8>),
    /// `@FILE`, read when the request is sent.
    File(PathBuf),
}

/// One `-d` value: DATA itself, `@FILE` or, for `@-`, stdin's bytes.
fn data(flag: &str, d: &str, stdin: &mut dyn Read) -> Result<Piece, Failure> {
    match d.strip_prefix('@') {
        Some("-") => {
            let mut body = Vec::new();
            stdin
                .read_to_end(&mut body)
                .map_err(|e| Failure::usage(format!("{flag} @-: cannot read stdin: {e}")))?;
            Ok(Piece::Bytes(body))
        }
        Some(file) => Ok(Piece::File(PathBuf::from(file))),
        None => Ok(Piece::Bytes(d.as_bytes().to_vec())),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn parsed(a: &[&str], stdin: &[u8]) -> Result<Opts, Failure> {
        let (out, _) = Output::capture();
        let args = a.iter().map(|s| s.to_string()).collect();
        parse(args, &out, &mut &stdin[..]).map(|o| o.expect("not --help"))
    }

    #[test]
    fn curl_style_bundles_set_each_flag() {
        let o = parsed(&["-fsSLv", "-XPUT", "-d@-", "http://x/"], b"from stdin").expect("ok");
        assert!(o.fail && o.silent && o.show_error && o.verbose);
        assert_eq!(o.follow, Some(50));
        assert_eq!(o.method.as_deref(), Some("PUT"));
        assert_eq!(o.data.as_deref(), Some(&b"from stdin"[..]));
    }

    #[test]
    fn a_lone_data_file_is_streamed_and_several_pieces_are_joined() {
        let o = parsed(&["-d", "@/some/file", "http://x/"], b"").expect("ok");
        assert_eq!(o.data_file.as_deref(), Some(Path::new("/some/file")));
        assert_eq!(o.data.as_deref(), Some(&b""[..]));
        let err = parsed(&["-d", "a", "-d", "@/no/such/file", "http://x/"], b"");
        assert!(err.is_err(), "joined pieces are read at once");
        let o = parsed(&["-d", "a", "-d", "@-", "http://x/"], b"b").expect("ok");
        assert_eq!((o.data.as_deref(), o.data_file), (Some(&b"a&b"[..]), None));
    }

    #[test]
    fn repeated_data_joins_with_ampersands_and_max_redirs_takes_minus_one() {
        let o = parsed(
            &[
                "-d",
                "a=1",
                "--data-binary",
                "b=2",
                "-L",
                "--max-redirs",
                "-1",
                "http://x/",
            ],
            b"",
        )
        .expect("ok");
        assert_eq!(o.data.as_deref(), Some(&b"a=1&b=2"[..]));
        assert_eq!(o.follow, Some(usize::MAX));
        let o = parsed(&["--max-redirs", "3", "http://x/"], b"").expect("ok");
        assert_eq!(o.follow, None, "--max-redirs alone follows nothing");
    }

    #[test]
    fn headers_take_curl_forms_for_removing_and_sending_empty() {
        let o = parsed(
            &[
                "-H",
                "A: 1",
                "-H",
                "B:",
                "-H",
                "C;",
                "-H",
                "D: x:y",
                "http://x/",
            ],
            b"",
        )
        .expect("ok");
        let got: Vec<_> = o
            .headers
            .iter()
            .map(|h| (h.name.as_str(), h.value.as_deref()))
            .collect();
        assert_eq!(
            got,
            [
                ("A", Some("1")),
                ("B", None),
                ("C", Some("")),
                ("D", Some("x:y"))
            ]
        );
    }

    #[test]
    fn contradictions_and_bad_values_are_usage_errors() {
        for a in [
            &["-I", "-d", "x", "http://x/"][..],
            &["--key", "k.pem", "http://x/"],
            &["--max-redirs", "lots", "http://x/"],
            &["--resolve", "x:80", "http://x/"],
            &["-H", "no colon", "http://x/"],
            &["-L"],
        ] {
            let e = parsed(a, b"")
                .err()
                .unwrap_or_else(|| panic!("{a:?} parsed"));
            assert_eq!(e.code, 2, "{a:?}: {}", e.message);
        }
    }
}
