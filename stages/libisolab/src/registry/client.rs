//! The HTTP side of the distribution API: one repository of one registry, its requests, its
//! credentials, and errors that say which URL answered what.
//!
//! Every request goes through [`Client::send`]: it adds what the registry asked for last time
//! (a basic `Authorization`, or a bearer token), and on a `401` reads the registry's
//! `WWW-Authenticate` challenge (distribution's `docs/spec/auth/token.md`): `Basic` means send
//! the user and password; `Bearer realm=…,service=…,scope=…` means ask the realm for a token
//! for that scope (with the password, if any) and try once more with it. A body that is a
//! stream (a layer) cannot be sent twice, so uploads start with an empty `POST`, which meets
//! the challenge first.
//!
//! Timeouts are bounded ([`Options::timeout`], 30 s unless `--timeout` says otherwise, for each
//! read or write; connecting at most 5 s of it): a registry that stalls is an error, not a
//! hang. Secrets never appear in an error or a `Debug`.

use std::fmt;
use std::io::Read;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use base64::Engine as _;
use ureq::http::{self, Method, Request, Response};
use ureq::{Agent, Body, SendBody};

use crate::error::{Error, Result};
use crate::image::reference::Reference;

/// The chunk a push sends blobs larger than it in: small enough that stopping between two
/// chunks is quick (a fraction of a second on a LAN), large enough that the extra requests
/// cost nothing measurable.
pub const DEFAULT_CHUNK: u64 = 16 << 20;

/// How long a TCP connection may take at most (less if [`Options::timeout`] is shorter).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one read or write on the connection may stall, unless [`Options::timeout`] says.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Redirects followed (blobs may live behind one, on a CDN); a loop ends here.
const MAX_REDIRECTS: u32 = 5;
/// The largest error body or token answer read.
const SMALL_BODY_MAX: u64 = 64 << 10;

/// A user and a password (or token) for a registry. `Debug` shows the user only.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub user: String,
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Credentials {{ user: {:?}, password: <hidden> }}", self.user)
    }
}

impl Credentials {
    /// `USER:PASS`, as `--creds` takes it (skopeo's spelling).
    pub fn parse(text: &str) -> Result<Credentials> {
        match text.split_once(':') {
            Some((user, password)) if !user.is_empty() => {
                Ok(Credentials { user: user.into(), password: password.into() })
            }
            Some(_) => Err(Error::Invalid(
                "credentials must be USER:PASSWORD, and the user is empty: give it before the \
                 colon"
                    .into(),
            )),
            None => Err(Error::Invalid(
                "credentials must be USER:PASSWORD, with a colon between: --creds ann:secret"
                    .into(),
            )),
        }
    }

    /// The credentials docker keeps for `host` in a `config.json` (`auths.<host>.auth`, the
    /// base64 of `user:password`), if there are any. `text` is the file's content.
    pub fn from_docker_config(text: &str, host: &str) -> Result<Option<Credentials>> {
        let refuse = |what: &str| {
            Error::Invalid(format!(
                "the docker config.json's credentials for {host} {what}: log in again or pass \
                 --creds USER:PASS"
            ))
        };
        let config: serde_json::Value =
            serde_json::from_str(text).map_err(|_| refuse("are in a file that is not JSON"))?;
        let Some(auths) = config.get("auths").and_then(|auths| auths.as_object()) else {
            return Ok(None);
        };
        // Docker writes the host as typed, sometimes with a scheme in front.
        let entry = auths.iter().find(|(key, _)| {
            let key = key.trim_start_matches("https://").trim_start_matches("http://");
            key.trim_end_matches('/') == host
        });
        let Some(auth) = entry.and_then(|(_, entry)| entry.get("auth")).and_then(|a| a.as_str())
        else {
            return Ok(None);
        };
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(auth)
            .map_err(|_| refuse("are not base64"))?;
        let decoded = String::from_utf8(decoded).map_err(|_| refuse("are not text"))?;
        Credentials::parse(&decoded).map(Some).map_err(|_| refuse("are not user:password"))
    }

    /// `Basic <base64 of user:password>` (RFC 7617).
    fn basic(&self) -> String {
        let pair = format!("{}:{}", self.user, self.password);
        format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(pair))
    }
}

/// What push and pull are told beyond the reference.
#[derive(Debug, Clone)]
pub struct Options {
    /// Plain HTTP to a registry that is not on this machine (127.0.0.1 and localhost always
    /// speak plain HTTP).
    pub insecure: bool,
    /// Who to be; anonymous without.
    pub credentials: Option<Credentials>,
    /// How long one read or write may stall (and connecting, up to 5 s of it) before the
    /// request fails: a bound on every wait, not on the whole transfer.
    pub timeout: Duration,
    /// Push each blob larger than this in `PATCH`es of this many bytes (distribution-spec,
    /// "Pushing a blob in chunks"); smaller ones, and every blob with `None`, in one `PUT`.
    /// Chunks are also what make a push stoppable cleanly: a `PUT` cut off midway leaves a
    /// session that distribution 2.8 refuses to cancel, while between two chunks the session
    /// is whole and its `DELETE` works.
    pub chunk_size: Option<u64>,
    /// Set (by a signal handler) when the user wants us to stop: checked before each request
    /// of a blob and at each read of its bytes, so a push or pull stops within one read.
    pub interrupted: Option<&'static AtomicBool>,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            insecure: false,
            credentials: None,
            timeout: DEFAULT_TIMEOUT,
            chunk_size: Some(DEFAULT_CHUNK),
            interrupted: None,
        }
    }
}

impl Options {
    /// Has the user asked us to stop?
    pub(crate) fn is_interrupted(&self) -> bool {
        self.interrupted.is_some_and(|flag| flag.load(Ordering::SeqCst))
    }
}

/// A body that can be sent again after an authentication challenge.
pub(crate) enum Payload<'a> {
    Empty,
    Bytes(&'a [u8]),
    /// A stream: sent once; a 401 on it is an error.
    Stream(&'a mut dyn Read),
}

/// One repository of one registry, as the distribution API sees it.
pub(crate) struct Client {
    agent: Agent,
    /// `http://127.0.0.1:5000` or `https://ghcr.io`.
    base: String,
    /// `team/app`.
    pub(crate) repository: String,
    credentials: Option<Credentials>,
    /// The `Authorization` header the last challenge called for.
    authorization: Option<String>,
    /// [`Options::timeout`], for the error that says it ran out.
    timeout: Duration,
}

impl Client {
    /// A client for `reference`'s repository. A reference without a registry is refused:
    /// isolab does not guess Docker Hub.
    pub(crate) fn new(reference: &Reference, options: &Options) -> Result<Client> {
        let Some(registry) = reference.registry.as_deref() else {
            // `127.0.0.1:5000` alone reads as repository `127.0.0.1`, tag `5000`.
            let host_like =
                reference.repository.contains('.') || reference.repository == "localhost";
            if host_like && !reference.repository.contains('/') {
                let port =
                    reference.tag.as_deref().map(|tag| format!(":{tag}")).unwrap_or_default();
                return Err(Error::Invalid(format!(
                    "{reference} names a registry but no repository: write {}{port}/REPOSITORY[:TAG], \
                     e.g. {}{port}/team/app:1.0",
                    reference.repository, reference.repository
                )));
            }
            let tag = reference.tag.as_deref().map(|tag| format!(":{tag}")).unwrap_or_default();
            return Err(Error::Invalid(format!(
                "{reference} names no registry: write it as HOST[:PORT]/{}{tag}, e.g. \
                 127.0.0.1:5000/{}{tag}",
                reference.repository, reference.repository
            )));
        };
        let host = registry.rsplit_once(':').map_or(registry, |(host, _)| host);
        let local = matches!(host, "127.0.0.1" | "localhost" | "[::1]");
        let scheme = if local || options.insecure { "http" } else { "https" };
        let config = Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(CONNECT_TIMEOUT.min(options.timeout)))
            .timeout_per_read(Some(options.timeout))
            .timeout_per_write(Some(options.timeout))
            .max_redirects(MAX_REDIRECTS)
            .user_agent(concat!("isolab/", env!("CARGO_PKG_VERSION")))
            .build();
        Ok(Client {
            agent: config.into(),
            base: format!("{scheme}://{registry}"),
            repository: reference.repository.clone(),
            credentials: options.credentials.clone(),
            authorization: None,
            timeout: options.timeout,
        })
    }

    /// `<base>/v2/<repository>/<rest>`.
    pub(crate) fn url(&self, rest: &str) -> String {
        format!("{}/v2/{}/{rest}", self.base, self.repository)
    }

    /// A `Location` header as an absolute URL: an absolute path is on the registry itself
    /// (registries often send only that), a full `http(s)://` URL is taken as it is (blobs may
    /// live elsewhere, on a CDN); anything else, and a URL with a `user@` in it, is refused
    /// rather than guessed at (`@host:port/…` glued to the base would make a URL to `host`).
    pub(crate) fn absolute(&self, location: &str) -> Result<String> {
        let refuse = |why: &str| {
            Error::Invalid(format!(
                "the registry {} answered with a Location {location:?}, which {why}: it does \
                 not follow the distribution API",
                self.base
            ))
        };
        if location.starts_with('/') && !location.starts_with("//") {
            return Ok(format!("{}{location}", self.base));
        }
        if !(location.starts_with("http://") || location.starts_with("https://")) {
            return Err(refuse("is neither an absolute path nor an http(s) URL"));
        }
        let uri: http::Uri = location.parse().map_err(|_| refuse("is not a URL"))?;
        if uri.authority().is_some_and(|authority| authority.as_str().contains('@')) {
            return Err(refuse("names a user"));
        }
        Ok(location.to_string())
    }

    /// Does `url` go to the registry itself (same scheme, host and port as the base)? Only
    /// such requests carry the `Authorization` the registry asked for: a `Location` or a
    /// redirect may point at another server, which must not receive the user's password or
    /// token (docker's client keeps credentials per host too).
    fn same_origin(&self, url: &str) -> bool {
        let base = origin(&self.base);
        origin(url).is_some_and(|theirs| Some(theirs) == base)
    }

    /// `GET /v2/`: is this a registry that speaks the API (and who may use it)?
    pub(crate) fn ping(&mut self) -> Result<()> {
        let url = format!("{}/v2/", self.base);
        let response = self.send(Method::GET, &url, &[], Payload::Empty)?;
        expect(&Method::GET, &url, response, &[200], "is it a registry (distribution API v2)?")
            .map(drop)
    }

    /// Sends one request, meeting one authentication challenge on the way. Transport errors
    /// (refused, timed out, a redirect loop) become one line naming the URL.
    pub(crate) fn send(
        &mut self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        mut payload: Payload<'_>,
    ) -> Result<Response<Body>> {
        let mut challenged = false;
        loop {
            let mut request = Request::builder().method(method.clone()).uri(url);
            for (name, value) in headers {
                request = request.header(*name, *value);
            }
            if let Some(authorization) = &self.authorization {
                if self.same_origin(url) {
                    request = request.header("Authorization", authorization);
                }
            }
            // Each kind of body its own call: ureq sends a slice with its Content-Length, a
            // reader chunked (HTTP/1.1 `Transfer-Encoding: chunked`).
            let made = match &mut payload {
                Payload::Empty if method == Method::POST || method == Method::PUT => {
                    request.body(&[][..]).map(|request| self.agent.run(request))
                }
                Payload::Empty => request.body(()).map(|request| self.agent.run(request)),
                Payload::Bytes(bytes) => {
                    request.body(*bytes).map(|request| self.agent.run(request))
                }
                Payload::Stream(reader) => request
                    .body(SendBody::from_reader(*reader))
                    .map(|request| self.agent.run(request)),
            };
            let response = made
                .map_err(|error| {
                    Error::Invalid(format!("{method} {url}: cannot make the request: {error}"))
                })?
                .map_err(|error| self.failed(&method, url, error))?;
            if response.status() != 401 {
                return Ok(response);
            }
            if challenged {
                return Err(self.refused(&method, url));
            }
            challenged = true;
            let challenge = header(&response, "www-authenticate").unwrap_or_default();
            if matches!(payload, Payload::Stream(_)) || !self.answer(&challenge, url)? {
                return Ok(response);
            }
        }
    }

    /// A transport failure as one line naming the URL; a timeout says how long we waited and
    /// what to do. (Also for errors met while reading a body, which ureq hands over as
    /// `io::Error`s wrapping its own.)
    pub(crate) fn failed(&self, method: &Method, url: &str, error: ureq::Error) -> Error {
        let url = shown(url);
        match error {
            ureq::Error::Timeout(ureq::Timeout::Connect) => Error::Invalid(format!(
                "{method} {url} failed: timed out connecting (after {} s): is the host up and \
                 the port open? a firewall that drops packets looks like this",
                CONNECT_TIMEOUT.min(self.timeout).as_secs_f64()
            )),
            ureq::Error::Timeout(_) => Error::Invalid(format!(
                "{method} {url} failed: timed out (nothing moved for {} s): the registry \
                 stalls or is unreachable; try again, or wait longer with --timeout SECONDS",
                self.timeout.as_secs_f64()
            )),
            ureq::Error::Io(io) if io.kind() == std::io::ErrorKind::TimedOut => {
                self.failed(method, url, ureq::Error::Timeout(ureq::Timeout::PerRead))
            }
            error => transport(method, url, error),
        }
    }

    /// The line for a `401` that came back although the challenge was answered: the
    /// credentials (or the token they bought) were refused. Names the user, never the password.
    fn refused(&self, method: &Method, url: &str) -> Error {
        let who = match &self.credentials {
            Some(credentials) => format!("the credentials of {:?}", credentials.user),
            None => "an anonymous token".to_string(),
        };
        Error::Invalid(format!(
            "{method} {url} answered 401 Unauthorized: the registry refused {who}: check the \
             user and password (--creds USER:PASS, or docker's config.json)"
        ))
    }

    /// Sets the `Authorization` a `WWW-Authenticate` challenge asks for; false if there is
    /// nothing to answer it with (no credentials for a `Basic` one, an unknown scheme).
    fn answer(&mut self, challenge: &str, url: &str) -> Result<bool> {
        let (scheme, parameters) = challenge.split_once(' ').unwrap_or((challenge, ""));
        if scheme.eq_ignore_ascii_case("basic") {
            let Some(credentials) = &self.credentials else { return Ok(false) };
            self.authorization = Some(credentials.basic());
            return Ok(true);
        }
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Ok(false);
        }
        let parameters = challenge_parameters(parameters);
        let find = |name: &str| {
            parameters.iter().find(|(key, _)| key.eq_ignore_ascii_case(name)).map(|(_, v)| v)
        };
        let Some(realm) = find("realm") else {
            return Err(Error::Invalid(format!(
                "{url} asked for a bearer token but named no realm to get it from: the \
                 registry's auth is misconfigured"
            )));
        };
        // One `scope` parameter per scope: a challenge lists several separated by spaces
        // (a cross-repository mount needs the target's push and the source's pull), and the
        // token service reads each `scope=` on its own (distribution's `docs/spec/auth/token.md`,
        // "Requesting a Token").
        let mut token_url = realm.clone();
        let mut separator = if realm.contains('?') { '&' } else { '?' };
        let service = find("service").map(|value| ("service", value.as_str()));
        let scopes = find("scope").into_iter().flat_map(|value| value.split_whitespace());
        for (name, value) in service.into_iter().chain(scopes.map(|scope| ("scope", scope))) {
            token_url.push_str(&format!("{separator}{name}={}", query_escape(value)));
            separator = '&';
        }
        let mut request = Request::builder().method(Method::GET).uri(&token_url);
        if let Some(credentials) = &self.credentials {
            request = request.header("Authorization", credentials.basic());
        }
        let request = request.body(SendBody::none()).map_err(|error| {
            Error::Invalid(format!("GET {realm}: cannot make the request: {error}"))
        })?;
        let response =
            self.agent.run(request).map_err(|error| self.failed(&Method::GET, realm, error))?;
        if matches!(response.status().as_u16(), 401 | 403) {
            let (who, what_to_do) = match &self.credentials {
                Some(credentials) => (
                    format!("the credentials of {:?}", credentials.user),
                    "check the user and password (--creds USER:PASS, or docker's config.json)",
                ),
                None => (
                    "an anonymous request".to_string(),
                    "pass --creds USER:PASS or log in with docker",
                ),
            };
            return Err(Error::Invalid(format!(
                "GET {realm}, the token service {url} sent us to, answered {}: it refused \
                 {who}: {what_to_do}",
                status_text(response.status())
            )));
        }
        let mut response = expect(
            &Method::GET,
            realm,
            response,
            &[200],
            "the token service failed: try again later, or look at its log",
        )?;
        let answer: serde_json::Value = response
            .body_mut()
            .with_config()
            .limit(SMALL_BODY_MAX)
            .read_to_vec()
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .ok_or(())
            .map_err(|_| Error::Invalid(format!("GET {realm}: the token answer is not JSON")))?;
        let token = answer.get("token").or_else(|| answer.get("access_token"));
        let Some(token) = token.and_then(|token| token.as_str()) else {
            return Err(Error::Invalid(format!("GET {realm}: the answer holds no token")));
        };
        self.authorization = Some(format!("Bearer {token}"));
        Ok(true)
    }
}

/// Returns `response` if its status is one of `expected`; otherwise one line: the method, the
/// URL, the status, the registry's own error codes, and `what_to_do`.
pub(crate) fn expect(
    method: &Method,
    url: &str,
    mut response: Response<Body>,
    expected: &[u16],
    what_to_do: &str,
) -> Result<Response<Body>> {
    let status = response.status();
    if expected.contains(&status.as_u16()) {
        return Ok(response);
    }
    // Distribution's errors: {"errors":[{"code":"MANIFEST_UNKNOWN","message":"…"}]}.
    let said = response
        .body_mut()
        .with_config()
        .limit(SMALL_BODY_MAX)
        .read_to_vec()
        .ok()
        .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
        .and_then(|body| {
            let errors = body.get("errors")?.as_array()?.iter().filter_map(|error| {
                let code = error.get("code")?.as_str()?;
                let message = error.get("message").and_then(|m| m.as_str()).unwrap_or("");
                Some(format!("{code}: {message}"))
            });
            Some(errors.collect::<Vec<_>>().join("; "))
        })
        .filter(|said| !said.is_empty())
        .map(|said| format!(" ({said})"))
        .unwrap_or_default();
    let hint = match status.as_u16() {
        401 | 403 => "the registry wants credentials: pass --creds USER:PASS or log in with docker",
        404 => what_to_do,
        500..=599 => "the registry failed: try again later, or look at its log",
        _ => what_to_do,
    };
    Err(Error::Invalid(format!("{method} {url} answered {}{said}: {hint}", status_text(status))))
}

/// `404 Not Found`.
fn status_text(status: http::StatusCode) -> String {
    format!("{} {}", status.as_u16(), status.canonical_reason().unwrap_or(""))
        .trim_end()
        .to_string()
}

/// `scheme://host:port` of a URL, the port written out (80 or 443 when it is the default).
fn origin(url: &str) -> Option<String> {
    let uri: http::Uri = url.parse().ok()?;
    let scheme = uri.scheme_str()?.to_ascii_lowercase();
    let authority = uri.authority()?;
    let port = authority.port_u16().unwrap_or(if scheme == "https" { 443 } else { 80 });
    Some(format!("{scheme}://{}:{port}", authority.host().to_ascii_lowercase()))
}

/// The errnos of "no route" (errno(3)), as `io::Error::raw_os_error` gives them.
mod libc_errno {
    pub const ENETUNREACH: i32 = nix::errno::Errno::ENETUNREACH as i32;
    pub const EHOSTUNREACH: i32 = nix::errno::Errno::EHOSTUNREACH as i32;
}

/// A transport failure as one line naming the URL and what to check.
fn transport(method: &Method, url: &str, error: ureq::Error) -> Error {
    let what = match &error {
        ureq::Error::Io(io) if io.kind() == std::io::ErrorKind::ConnectionRefused => {
            "connection refused: is a registry listening there? check the host and port".into()
        }
        ureq::Error::ConnectionFailed => {
            "cannot connect: is a registry listening there? check the host and port".into()
        }
        ureq::Error::HostNotFound => "unknown host: check the registry's name".into(),
        // std's resolver (getaddrinfo(3)) fails with an uncategorised io::Error that only its
        // text tells apart.
        ureq::Error::Io(io) if io.to_string().starts_with("failed to lookup address") => {
            format!("unknown host ({io}): check the registry's name and this machine's DNS")
        }
        // TLS spoken to a server that answers in plain HTTP: rustls reads the HTTP status line
        // as a TLS record of a type that does not exist.
        ureq::Error::Io(io) if io.to_string().contains("InvalidContentType") => {
            "the registry answered in plain HTTP, not TLS: if you trust the network between, \
             pass --insecure"
                .into()
        }
        ureq::Error::Io(io)
            if [Some(libc_errno::ENETUNREACH), Some(libc_errno::EHOSTUNREACH)]
                .contains(&io.raw_os_error()) =>
        {
            format!(
                "{io}: no route to the registry's address; check the address and this \
                     machine's network"
            )
        }
        // Our own reader's failure (a blob of the store that is not what its digest says) is
        // its own sentence, without ureq's `io: ` in front.
        ureq::Error::Io(io) => io.to_string(),
        ureq::Error::Timeout(_) => "timed out: the registry stalls or is unreachable; try again, \
                                    or wait longer with --timeout SECONDS"
            .into(),
        ureq::Error::TooManyRedirects => {
            format!("more than {MAX_REDIRECTS} redirects (a loop?): the registry is misconfigured")
        }
        ureq::Error::Tls(_) | ureq::Error::Rustls(_) => {
            format!("TLS failed ({error}): for a registry that speaks plain HTTP, pass --insecure")
        }
        _ => format!("{error}"),
    };
    Error::Invalid(format!("{method} {} failed: {what}", shown(url)))
}

/// `url` as a line shows it: an upload session's URL without its query (`?_state=…&digest=…`,
/// long, opaque, and nothing a reader can act on).
fn shown(url: &str) -> &str {
    match url.split_once('?') {
        Some((path, query)) if query.contains("_state=") || query.starts_with("digest=") => path,
        _ => url,
    }
}

/// A response header as text.
pub(crate) fn header(response: &Response<Body>, name: &str) -> Option<String> {
    response.headers().get(name)?.to_str().ok().map(str::to_string)
}

/// `realm="https://auth",service="registry",scope="repository:a:pull"` as pairs.
fn challenge_parameters(text: &str) -> Vec<(String, String)> {
    let mut pairs = Vec::new();
    let mut rest = text.trim();
    while let Some((key, after)) = rest.split_once('=') {
        let key = key.trim().trim_start_matches(',').trim().to_string();
        let (value, after) = match after.strip_prefix('"') {
            Some(quoted) => match quoted.split_once('"') {
                Some((value, after)) => (value.to_string(), after),
                None => (quoted.to_string(), ""),
            },
            None => match after.split_once(',') {
                Some((value, after)) => (value.trim().to_string(), after),
                None => (after.trim().to_string(), ""),
            },
        };
        pairs.push((key, value));
        rest = after.trim_start_matches(',').trim();
    }
    pairs
}

/// Percent-encodes a query value (everything but RFC 3986's unreserved characters).
fn query_escape(value: &str) -> String {
    value
        .bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (byte as char).to_string()
            }
            _ => format!("%{byte:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bearer_challenge_is_read_into_its_parameters() {
        let pairs = challenge_parameters(
            r#"realm="https://auth.example/token",service="registry.example",scope="repository:team/app:pull,push""#,
        );
        assert_eq!(
            pairs,
            [
                ("realm".into(), "https://auth.example/token".into()),
                ("service".into(), "registry.example".into()),
                ("scope".into(), "repository:team/app:pull,push".into()),
            ]
        );
        assert_eq!(
            query_escape("repository:team/app:pull,push"),
            "repository%3Ateam%2Fapp%3Apull%2Cpush"
        );
    }

    #[test]
    fn credentials_come_from_creds_or_docker_config_and_never_show() {
        let credentials = Credentials::parse("ann:s3cret:with:colons").unwrap();
        assert_eq!(credentials.password, "s3cret:with:colons");
        assert!(!format!("{credentials:?}").contains("s3cret"));
        assert!(Credentials::parse(":x").is_err());

        let auth = base64::engine::general_purpose::STANDARD.encode("bob:pw");
        let config = format!(r#"{{"auths":{{"https://reg.example:5000":{{"auth":"{auth}"}}}}}}"#);
        let found = Credentials::from_docker_config(&config, "reg.example:5000").unwrap();
        assert_eq!(found, Some(Credentials { user: "bob".into(), password: "pw".into() }));
        assert_eq!(Credentials::from_docker_config(&config, "other").unwrap(), None);
        assert_eq!(
            credentials.basic(),
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode("ann:s3cret:with:colons")
            )
        );
    }

    #[test]
    fn local_registries_speak_plain_http_others_https_unless_insecure() {
        let client = |text: &str, insecure| {
            let reference: Reference = text.parse().unwrap();
            Client::new(&reference, &Options { insecure, ..Options::default() }).unwrap().base
        };
        assert_eq!(client("127.0.0.1:5000/a:1", false), "http://127.0.0.1:5000");
        assert_eq!(client("localhost/a", false), "http://localhost");
        assert_eq!(client("reg.example/a", false), "https://reg.example");
        assert_eq!(client("reg.example:5000/a", true), "http://reg.example:5000");
        let error = Client::new(&"app:1".parse().unwrap(), &Options::default()).err().unwrap();
        assert!(error.to_string().contains("names no registry"), "{error}");
        // The tag is kept in the suggestion.
        assert!(error.to_string().contains("write it as HOST[:PORT]/app:1"), "{error}");
        // A host and port alone read as a repository and a tag: said as what they are.
        let error =
            Client::new(&"127.0.0.1:5000".parse().unwrap(), &Options::default()).err().unwrap();
        assert!(
            error.to_string().contains(
                "names a registry but no repository: write \
                                        127.0.0.1:5000/REPOSITORY[:TAG]"
            ),
            "{error}"
        );
    }

    #[test]
    fn malformed_credentials_say_what_is_missing() {
        let error = Credentials::parse("ann").unwrap_err().to_string();
        assert!(error.contains("with a colon between"), "{error}");
        let error = Credentials::parse(":secret").unwrap_err().to_string();
        assert!(error.contains("the user is empty"), "{error}");
        assert!(!error.contains("secret"), "{error}");
    }
}
