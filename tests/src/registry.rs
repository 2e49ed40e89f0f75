//! Registries for the push and pull tests, all on 127.0.0.1 and all stopped when dropped:
//!
//! - [`Registry`]: the real one, Debian's CNCF distribution 2.8 (`docker-registry`), with a
//!   config of the test's own, open to anyone, or behind htpasswd ([`Auth::Htpasswd`]) or
//!   bearer tokens ([`Auth::Token`]);
//! - [`TokenServer`]: the token service of distribution's `docs/spec/auth/token.md`: checks a
//!   basic user and password, answers with a JWT signed by a key whose certificate the
//!   registry trusts, and records each request's scopes;
//! - [`FakeRegistry`]: scripted HTTP answers from a closure, for the faults a real registry
//!   never makes (a 500, a wrong digest, a body cut short, a redirect loop, silence), and a
//!   record of every request it got.
//!
//! The fake and the token server share [`HttpServer`]: a thread accepting connections, one
//! thread per connection, HTTP/1.1 with keep-alive, bodies by `Content-Length` or chunked.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use base64::Engine as _;

use crate::{eventually, host_has, TestEnv};

/// Who may use a real [`Registry`].
pub enum Auth<'a> {
    /// Anyone.
    None,
    /// Users and passwords in an htpasswd file (bcrypt, the only hash distribution reads).
    Htpasswd(&'a [(&'a str, &'a str)]),
    /// Bearer tokens from this token service.
    Token(&'a TokenServer),
}

/// A CNCF distribution registry (Debian's `docker-registry`, 2.8) of a test's own: a minimal
/// config in the test's directory (filesystem storage under `<dir>/registry`, deletes allowed,
/// errors only in its log), listening on 127.0.0.1 on a port the kernel picked. Killed and
/// reaped when dropped. (Debian also starts the package's registry as a service, with
/// htpasswd auth and port 5000: the tests never use that one.)
pub struct Registry {
    child: std::process::Child,
    port: u16,
    /// Where it keeps its blobs and repositories (`docker/registry/v2/…` below).
    pub storage: PathBuf,
    log: PathBuf,
}

impl Registry {
    /// Starts one open to anyone for `env`, waiting (at most 10 s) until `GET /v2/` answers.
    pub fn start(env: &TestEnv) -> Registry {
        Registry::start_with(env, Auth::None)
    }

    /// Starts one for `env` behind `auth`, waiting (at most 10 s) until `GET /v2/` answers
    /// (200, or 401 when it wants credentials).
    pub fn start_with(env: &TestEnv, auth: Auth<'_>) -> Registry {
        let storage = env.path().join("registry");
        std::fs::create_dir_all(&storage).expect("mkdir registry");
        // A free port: bind port 0 on 127.0.0.1, read it, close it. Another process could
        // take it in between; the registry would then fail to listen and this waits in vain.
        let port = free_port();
        let auth = match auth {
            Auth::None => String::new(),
            Auth::Htpasswd(users) => {
                let path = env.path().join("htpasswd");
                // Cost 4, the least bcrypt allows: each check costs the registry ~1 ms, not
                // the 250 ms of htpasswd's default.
                let lines: String = users
                    .iter()
                    .map(|(user, password)| {
                        format!("{user}:{}\n", bcrypt::hash(password, 4).expect("bcrypt"))
                    })
                    .collect();
                std::fs::write(&path, lines).expect("write htpasswd");
                format!(
                    "auth:\n  htpasswd:\n    realm: isolab-test\n    path: {}\n",
                    path.display()
                )
            }
            Auth::Token(server) => format!(
                "auth:\n  token:\n    realm: {}\n    service: {}\n    issuer: {}\n    \
                 rootcertbundle: {}\n",
                server.realm(),
                TokenServer::SERVICE,
                TokenServer::ISSUER,
                server.bundle.display()
            ),
        };
        let config = env.path().join("registry.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: \
                 {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n{auth}",
                storage.display()
            ),
        )
        .expect("write registry.yml");
        let log = env.path().join("registry.log");
        let log_file = File::create(&log).expect("registry.log");
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("dup"))
            .stderr(log_file)
            .spawn()
            .unwrap_or_else(|error| panic!("cannot start docker-registry: {error}"));
        let registry = Registry { child, port, storage, log };
        let answers = eventually(Duration::from_secs(10), || {
            let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
                return false;
            };
            let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
            let request = format!("GET /v2/ HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n");
            let mut answer = String::new();
            stream.write_all(request.as_bytes()).is_ok()
                && stream.read_to_string(&mut answer).is_ok()
                && (answer.starts_with("HTTP/1.0 200") || answer.starts_with("HTTP/1.0 401"))
        });
        // Dropped on a panic: the registry is killed with it.
        assert!(
            answers,
            "docker-registry on 127.0.0.1:{port} did not answer GET /v2/ in 10 s: {}",
            registry.log()
        );
        registry
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Can this machine run one (is `docker-registry` installed)?
    pub fn available() -> bool {
        host_has("docker-registry")
    }

    /// What it logged so far (each request, and why it refused one).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The upload sessions `repository` has open. Distribution keeps each under
    /// `_uploads/<uuid>`, with a `startedat` file (a session without it is unknown to the
    /// registry) and the bytes so far in `data`. A cancelled session (`DELETE`, answered 204)
    /// loses both, but docker-registry 2.8 writes its hash state again after deleting it (its
    /// log says "error closing blobwriter … file already closed"), so an empty
    /// `<uuid>/hashstates` tree may stay: the registry's leftover, not an open session.
    pub fn upload_sessions(&self, repository: &str) -> Vec<String> {
        let dir = self.storage.join("docker/registry/v2/repositories").join(repository);
        let uploads = dir.join("_uploads");
        names_in(&uploads)
            .into_iter()
            .filter(|uuid| {
                uploads.join(uuid).join("startedat").exists()
                    || uploads.join(uuid).join("data").exists()
            })
            .collect()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The names in `dir` (none if it does not exist).
pub fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|entry| entry.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// A port on 127.0.0.1 that nothing listens on now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port on 127.0.0.1")
        .port()
}

/// One request an [`HttpServer`] got.
#[derive(Debug, Clone)]
pub struct HttpRequest {
    pub method: String,
    /// The path and query, as sent (`/v2/x/blobs/uploads/?mount=…`).
    pub target: String,
    /// Names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpRequest {
    /// The first header `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers.iter().find(|(key, _)| *key == name).map(|(_, value)| value.as_str())
    }

    /// The path without the query.
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or_default()
    }

    /// Every value of query parameter `name`, percent-decoded.
    pub fn query_all(&self, name: &str) -> Vec<String> {
        let Some((_, query)) = self.target.split_once('?') else { return Vec::new() };
        query
            .split('&')
            .filter_map(|pair| pair.split_once('='))
            .filter(|(key, _)| *key == name)
            .map(|(_, value)| percent_decode(value))
            .collect()
    }

    /// `METHOD /path` (without the query), as the assertions name a request.
    pub fn line(&self) -> String {
        format!("{} {}", self.method, self.path())
    }
}

/// `%3A` → `:`, `+` left as it is.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        if bytes[at] == b'%' && at + 2 < bytes.len() {
            if let Ok(byte) = u8::from_str_radix(&text[at + 1..at + 3], 16) {
                out.push(byte);
                at += 3;
                continue;
            }
        }
        out.push(bytes[at]);
        at += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// What an [`HttpServer`] answers to one request.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Announce this `Content-Length`, send the body (shorter), then close the connection.
    pub cut_at: Option<u64>,
    /// Answer nothing, ever: keep the connection open until the client gives up.
    pub silent: bool,
}

impl Answer {
    /// `status` with an empty body.
    pub fn status(status: u16) -> Answer {
        Answer { status, headers: Vec::new(), body: Vec::new(), cut_at: None, silent: false }
    }

    /// `status` with a JSON body.
    pub fn json(status: u16, value: serde_json::Value) -> Answer {
        Answer::status(status)
            .header("Content-Type", "application/json")
            .body(value.to_string().into_bytes())
    }

    /// Distribution's error body: `{"errors":[{"code":…,"message":…}]}`.
    pub fn error(status: u16, code: &str, message: &str) -> Answer {
        Answer::json(
            status,
            serde_json::json!({"errors": [{"code": code, "message": message, "detail": null}]}),
        )
    }

    /// No answer at all.
    pub fn silence() -> Answer {
        Answer { silent: true, ..Answer::status(0) }
    }

    pub fn header(mut self, name: &str, value: &str) -> Answer {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    pub fn body(mut self, body: Vec<u8>) -> Answer {
        self.body = body;
        self
    }

    /// Announces `length` bytes, sends what the body holds, and closes the connection.
    pub fn cut(mut self, length: u64) -> Answer {
        self.cut_at = Some(length);
        self
    }
}

type Handler = dyn Fn(&HttpRequest) -> Answer + Send + Sync;

/// A small HTTP/1.1 server on 127.0.0.1 answering with `handler`, recording every request.
/// Stopped when dropped: its threads end and are joined, its connections are shut.
pub struct HttpServer {
    addr: SocketAddr,
    requests: Arc<Mutex<Vec<HttpRequest>>>,
    streams: Arc<Mutex<Vec<TcpStream>>>,
    threads: Arc<Mutex<Vec<JoinHandle<()>>>>,
    open: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
}

impl HttpServer {
    pub fn start(handler: impl Fn(&HttpRequest) -> Answer + Send + Sync + 'static) -> HttpServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local_addr");
        let handler: Arc<Handler> = Arc::new(handler);
        let requests = Arc::new(Mutex::new(Vec::new()));
        let streams = Arc::new(Mutex::new(Vec::new()));
        let threads = Arc::new(Mutex::new(Vec::new()));
        let open = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let acceptor = {
            let (requests, streams, threads, open, stop) =
                (requests.clone(), streams.clone(), threads.clone(), open.clone(), stop.clone());
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    if let Ok(clone) = stream.try_clone() {
                        streams.lock().unwrap().push(clone);
                    }
                    open.fetch_add(1, Ordering::SeqCst);
                    let (handler, requests, open) =
                        (handler.clone(), requests.clone(), open.clone());
                    let thread = std::thread::spawn(move || {
                        serve_connection(stream, &*handler, &requests);
                        open.fetch_sub(1, Ordering::SeqCst);
                    });
                    threads.lock().unwrap().push(thread);
                }
            })
        };
        HttpServer { addr, requests, streams, threads, open, stop, acceptor: Some(acceptor) }
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> String {
        self.addr.to_string()
    }

    /// Every request so far, in the order they came.
    pub fn requests(&self) -> Vec<HttpRequest> {
        self.requests.lock().unwrap().clone()
    }

    /// Waits (at most 5 s) until no connection is open, and says whether none is: a client
    /// that has exited must have left none behind.
    pub fn all_closed(&self) -> bool {
        eventually(Duration::from_secs(5), || self.open.load(Ordering::SeqCst) == 0)
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the acceptor, which then sees `stop`.
        let _ = TcpStream::connect(self.addr);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
        for stream in self.streams.lock().unwrap().drain(..) {
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
        let threads: Vec<_> = self.threads.lock().unwrap().drain(..).collect();
        for thread in threads {
            let _ = thread.join();
        }
    }
}

/// Serves requests on one connection until the client closes it (or the server is dropped,
/// which shuts the socket).
fn serve_connection(stream: TcpStream, handler: &Handler, requests: &Mutex<Vec<HttpRequest>>) {
    let mut writer = match stream.try_clone() {
        Ok(writer) => writer,
        Err(_) => return,
    };
    let mut reader = BufReader::new(stream);
    loop {
        let Some(request) = read_request(&mut reader, &mut writer) else { return };
        requests.lock().unwrap().push(request.clone());
        let answer = handler(&request);
        if answer.silent {
            // Read (and drop) whatever comes until the client gives up and closes.
            let _ = std::io::copy(&mut reader, &mut std::io::sink());
            return;
        }
        let mut head = format!("HTTP/1.1 {} {}\r\n", answer.status, reason(answer.status));
        for (name, value) in &answer.headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        let length = answer.cut_at.unwrap_or(answer.body.len() as u64);
        head.push_str(&format!("Content-Length: {length}\r\n\r\n"));
        let mut out = head.into_bytes();
        if request.method != "HEAD" {
            out.extend_from_slice(&answer.body);
        }
        if writer.write_all(&out).and_then(|_| writer.flush()).is_err() || answer.cut_at.is_some() {
            let _ = writer.shutdown(std::net::Shutdown::Both);
            return;
        }
    }
}

/// Reads one request: its head, and its body (by `Content-Length` or chunked). `None` when
/// the connection ends first.
fn read_request(reader: &mut BufReader<TcpStream>, writer: &mut TcpStream) -> Option<HttpRequest> {
    let mut line = String::new();
    reader.read_line(&mut line).ok().filter(|read| *read > 0)?;
    let mut words = line.split_whitespace();
    let method = words.next()?.to_string();
    let target = words.next()?.to_string();
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).ok().filter(|read| *read > 0)?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let (name, value) = line.split_once(':')?;
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
    }
    let find = |name: &str| headers.iter().find(|(key, _)| key == name).map(|(_, v)| v.clone());
    if find("expect").is_some_and(|value| value.eq_ignore_ascii_case("100-continue")) {
        writer.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").ok()?;
    }
    let mut body = Vec::new();
    if find("transfer-encoding").is_some_and(|value| value.contains("chunked")) {
        loop {
            let mut size = String::new();
            reader.read_line(&mut size).ok().filter(|read| *read > 0)?;
            let size = usize::from_str_radix(size.trim().split(';').next()?, 16).ok()?;
            let mut chunk = vec![0; size + 2];
            reader.read_exact(&mut chunk).ok()?;
            body.extend_from_slice(&chunk[..size]);
            if size == 0 {
                break;
            }
        }
    } else if let Some(length) = find("content-length").and_then(|v| v.parse::<usize>().ok()) {
        body.resize(length, 0);
        reader.read_exact(&mut body).ok()?;
    }
    Some(HttpRequest { method, target, headers, body })
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        307 => "Temporary Redirect",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        500 => "Internal Server Error",
        _ => "Whatever",
    }
}

/// A registry of scripted answers: an [`HttpServer`] whose handler the test writes.
pub type FakeRegistry = HttpServer;

/// One token request, as the [`TokenServer`] saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRequest {
    /// The user of the basic `Authorization`, if any.
    pub user: Option<String>,
    /// Each `scope=` parameter: `repository:team/app:pull,push`, actions as sent.
    pub scopes: Vec<String>,
    /// Was a token issued?
    pub granted: bool,
}

impl TokenRequest {
    /// The scopes with their actions as sets (`repository:team/app` → {pull, push}): the
    /// registry lists actions in no fixed order.
    pub fn scope_sets(&self) -> Vec<(String, BTreeSet<String>)> {
        self.scopes
            .iter()
            .map(|scope| {
                let (resource, actions) = scope.rsplit_once(':').unwrap_or((scope, ""));
                (resource.to_string(), actions.split(',').map(str::to_string).collect())
            })
            .collect()
    }
}

/// A token service (distribution's `docs/spec/auth/token.md`) on 127.0.0.1: `GET /token?
/// service=…&scope=…` with a basic `Authorization` of a known user answers `{"token": JWT}`
/// granting every scope asked; anything else answers 401. The JWT is what distribution 2.8's
/// `registry/auth/token` verifies: ES256, the signing certificate in the header's `x5c`,
/// chained to the registry's `rootcertbundle` (here the certificate itself, self-signed),
/// `iss` the configured issuer, `aud` the service, `exp`/`nbf` around now, and an `access`
/// claim of `{type, name, actions}`.
pub struct TokenServer {
    server: HttpServer,
    log: Arc<Mutex<Vec<TokenRequest>>>,
    /// The PEM certificate the registry's `rootcertbundle` names.
    pub bundle: PathBuf,
}

impl TokenServer {
    /// The `service` (the token's audience) the registry is configured with.
    pub const SERVICE: &'static str = "isolab-test-registry";
    /// The `issuer` the registry trusts.
    pub const ISSUER: &'static str = "isolab-test-token-server";

    /// Starts one for `env` that knows `users` (user, password).
    pub fn start(env: &TestEnv, users: &[(&str, &str)]) -> TokenServer {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let params = rcgen::CertificateParams::new(vec!["isolab-test-token".to_string()])
            .expect("certificate params");
        let certificate = params.self_signed(&key).expect("self-signed certificate");
        let bundle = env.path().join("token-bundle.pem");
        std::fs::write(&bundle, certificate.pem()).expect("write the bundle");
        let x5c = base64::engine::general_purpose::STANDARD.encode(certificate.der());
        let rng = ring::rand::SystemRandom::new();
        let signer = ring::signature::EcdsaKeyPair::from_pkcs8(
            &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &key.serialize_der(),
            &rng,
        )
        .expect("the key as ring reads it");
        let users: Vec<(String, String)> =
            users.iter().map(|(user, password)| (user.to_string(), password.to_string())).collect();
        let log = Arc::new(Mutex::new(Vec::new()));
        let server = {
            let log = log.clone();
            HttpServer::start(move |request| {
                let basic = request
                    .header("authorization")
                    .and_then(|value| value.strip_prefix("Basic "))
                    .and_then(|encoded| {
                        base64::engine::general_purpose::STANDARD.decode(encoded).ok()
                    })
                    .and_then(|decoded| String::from_utf8(decoded).ok())
                    .and_then(|pair| {
                        pair.split_once(':').map(|(u, p)| (u.to_string(), p.to_string()))
                    });
                let scopes = request.query_all("scope");
                let granted = request.path() == "/token"
                    && basic.as_ref().is_some_and(|pair| users.contains(pair));
                let user = basic.map(|(user, _)| user);
                log.lock().unwrap().push(TokenRequest {
                    user: user.clone(),
                    scopes: scopes.clone(),
                    granted,
                });
                if !granted {
                    return Answer::json(401, serde_json::json!({"details": "who are you?"}))
                        .header("WWW-Authenticate", "Basic realm=\"isolab-test-token\"");
                }
                let token = sign_token(&signer, &rng, &x5c, user.as_deref(), &scopes);
                Answer::json(200, serde_json::json!({"token": token, "expires_in": 300}))
            })
        };
        TokenServer { server, log, bundle }
    }

    /// `http://127.0.0.1:PORT/token`, the registry's `realm`.
    pub fn realm(&self) -> String {
        format!("http://{}/token", self.server.addr())
    }

    /// Every token request so far.
    pub fn requests(&self) -> Vec<TokenRequest> {
        self.log.lock().unwrap().clone()
    }
}

/// A JWS compact serialisation (RFC 7515 §7.1) of the claims distribution 2.8 checks.
fn sign_token(
    signer: &ring::signature::EcdsaKeyPair,
    rng: &ring::rand::SystemRandom,
    x5c: &str,
    user: Option<&str>,
    scopes: &[String],
) -> String {
    let url = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("time after 1970")
        .as_secs();
    let access: Vec<serde_json::Value> = scopes
        .iter()
        .filter_map(|scope| {
            let (kind, rest) = scope.split_once(':')?;
            let (name, actions) = rest.rsplit_once(':')?;
            Some(serde_json::json!({
                "type": kind,
                "name": name,
                "actions": actions.split(',').collect::<Vec<_>>(),
            }))
        })
        .collect();
    let header = serde_json::json!({"typ": "JWT", "alg": "ES256", "x5c": [x5c]});
    let claims = serde_json::json!({
        "iss": TokenServer::ISSUER,
        "sub": user.unwrap_or(""),
        "aud": TokenServer::SERVICE,
        "exp": now + 300,
        "nbf": now - 10,
        "iat": now,
        "jti": format!("isolab-{now}-{}", scopes.len()),
        "access": access,
    });
    let signed = format!("{}.{}", url.encode(header.to_string()), url.encode(claims.to_string()));
    // ES256's signature is r‖s, 32 bytes each (RFC 7518 §3.4): ring's FIXED form.
    let signature = signer.sign(rng, signed.as_bytes()).expect("sign");
    format!("{signed}.{}", url.encode(signature.as_ref()))
}

/// What a store holds, as [`crate::describe_tree`] describes it, except the times and sizes of
/// its directories: writing a blob through a `.partial-` file and removing it again changes
/// its directory's mtime and nothing else; and without its lock files (`images.lock`, empty,
/// made the first time a writer takes it: taking a lock is not a change). Two equal states:
/// no tag, blob, `.partial-` file or layer added, removed or changed.
pub fn store_state(root: &Path) -> std::collections::BTreeMap<PathBuf, String> {
    let mut state = crate::describe_tree(root);
    state.retain(|path, description| {
        !(path.extension().is_some_and(|extension| extension == "lock")
            && description.contains(" size 0 "))
    });
    for description in state.values_mut() {
        if description.starts_with("mode 40") {
            let words: Vec<&str> = description.split(' ').collect();
            // mode M owner U:G size S mtime T ctime T inode I content H
            *description = format!(
                "{} {} {} {} {} {}",
                words[0], words[1], words[2], words[3], words[12], words[13]
            );
        }
    }
    state
}

/// The entries whose descriptions differ between two [`store_state`]s, for an assertion's
/// message.
pub fn state_changes(
    before: &std::collections::BTreeMap<PathBuf, String>,
    after: &std::collections::BTreeMap<PathBuf, String>,
) -> Vec<String> {
    let paths: BTreeSet<&PathBuf> = before.keys().chain(after.keys()).collect();
    paths
        .into_iter()
        .filter(|path| before.get(*path) != after.get(*path))
        .map(|path| format!("{}: {:?} → {:?}", path.display(), before.get(path), after.get(path)))
        .collect()
}

/// Checks a failed push or pull as its user sees it: exit 125, one line on stderr, that line
/// not printed again on stdout, and no line of stdout twice. Returns the line.
pub fn failure_line(output: &std::process::Output, what: &str) -> String {
    let stdout = crate::text(&output.stdout);
    let stderr = crate::text(&output.stderr);
    assert_eq!(crate::code(output), 125, "{what}: exit code\nstdout: {stdout}\nstderr: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "{what}: one line on stderr:\n{stderr}");
    let line = stderr.trim_end().to_string();
    assert!(!stdout.contains(&line), "{what}: the error printed twice:\n{stdout}");
    let mut seen = BTreeSet::new();
    for printed in stdout.lines() {
        assert!(seen.insert(printed), "{what}: {printed:?} printed twice:\n{stdout}");
    }
    line
}

/// `stage5-images --root <root> ARGS…` in `env`, docker's config read from `<dir>/docker`
/// (never the host's `~/.docker`): how the registry tests run the client.
pub fn stage5_images(env: &TestEnv, root: &str, args: &[&str]) -> std::process::Output {
    crate::run(
        env.cmd("stage5-images")
            .env("DOCKER_CONFIG", env.path().join("docker"))
            .args(["--root", root])
            .args(args),
    )
}

/// [`stage5_images`], which must succeed; its stdout.
pub fn stage5_images_ok(env: &TestEnv, root: &str, args: &[&str]) -> String {
    let output = stage5_images(env, root, args);
    let said = format!("{}{}", crate::text(&output.stdout), crate::text(&output.stderr));
    assert_eq!(crate::code(&output), 0, "{args:?}: {said}");
    crate::text(&output.stdout)
}
