//! Push and pull against a real registry that wants to know who we are (Debian's
//! `docker-registry`, distribution 2.8, on 127.0.0.1):
//!
//! - htpasswd: the registry answers `401` with `WWW-Authenticate: Basic realm=…`, and takes
//!   the user and password on every request (distribution 2.8 takes them over plain HTTP too:
//!   it warns about TLS in its docs, it does not refuse);
//! - bearer tokens (distribution's `docs/spec/auth/token.md`): the registry answers `401` with
//!   `Bearer realm=…,service=…,scope=repository:<name>:<actions>`, the client asks the realm
//!   (our [`TokenServer`]) for a token with the user and password, and shows the token to the
//!   registry instead.
//!
//! A refusal is one line and exit 125, the password is printed nowhere, and the store is as
//! it was.

use std::collections::BTreeSet;
use std::process::Output;

use base64::Engine as _;
use isolab_tests::*;

const USER: &str = "ann";
/// Long and odd, so that finding it in the output cannot be a coincidence.
const PASSWORD: &str = "Corr3ct-h0rse-battery-staple";
const WRONG: &str = "Wr0ng-h0rse-never-seen";

// Every command runs as the registry tests' client does (`--root`, docker's config of the
// test's own).
use isolab_tests::{stage5_images as stage5, stage5_images_ok as ok};

/// Root, docker-registry and a busybox image `bb:1` in the store `store`; false (a skip, a
/// failure under CI) when this machine cannot.
fn prepare(test: &str, env: &TestEnv) -> bool {
    if !require_root(test) {
        return false;
    }
    if !Registry::available() {
        skip(test, "the whole test", "docker-registry is not installed (scripts/setup does it)");
        return false;
    }
    env.namespaced_rootfs("rootfs");
    ok(env, "store", &["import", "rootfs", "bb:1"]);
    // A second store for pulls, empty but made, so that its state can be compared.
    ok(env, "other", &["images"]);
    true
}

/// Writes `<dir>/docker/config.json` with `auth` (base64 of `user:password`) for `host`.
fn docker_config(env: &TestEnv, host: &str, user: &str, password: &str) {
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    let dir = env.path().join("docker");
    std::fs::create_dir_all(&dir).unwrap();
    let config = serde_json::json!({"auths": {host: {"auth": auth}}});
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
}

/// No trace of `secret` (nor of a basic `Authorization` made from it) in what a command
/// printed.
fn assert_secret_not_shown(output: &Output, secret: &str) {
    let printed = format!("{}{}", text(&output.stdout), text(&output.stderr));
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{secret}"));
    assert!(!printed.contains(secret), "the password was printed:\n{printed}");
    assert!(!printed.contains(&basic), "the password was printed in base64:\n{printed}");
}

/// Runs `args` (a push from `store` or a pull into `other`), which must fail: one line naming
/// each of `expected`, exit 125, the secret nowhere, both stores unchanged. Returns the line.
fn refused(env: &TestEnv, args: &[&str], expected: &[&str], secret: &str) -> String {
    let root = if args[0] == "push" { "store" } else { "other" };
    let before = store_state(&env.path().join(root));
    let output = stage5(env, root, args);
    let line = failure_line(&output, &format!("{args:?}"));
    for word in expected {
        assert!(line.contains(word), "{args:?}: {word:?} not in: {line}");
    }
    assert_secret_not_shown(&output, secret);
    let after = store_state(&env.path().join(root));
    assert!(before == after, "{args:?} changed the store: {:#?}", state_changes(&before, &after));
    line
}

#[test]
fn htpasswd_push_and_pull_with_creds_or_docker_config() {
    let test = "htpasswd_push_and_pull_with_creds_or_docker_config";
    let env = TestEnv::new();
    if !prepare(test, &env) {
        return;
    }
    let registry = Registry::start_with(&env, Auth::Htpasswd(&[(USER, PASSWORD)]));
    let target = format!("{}/team/bb:1", registry.addr());

    let creds = format!("{USER}:{PASSWORD}");
    let output = stage5(&env, "store", &["push", "--creds", &creds, "bb:1", &target]);
    assert_eq!(code(&output), 0, "{}", text(&output.stderr));
    assert!(text(&output.stdout).contains("2 blobs sent"), "{}", text(&output.stdout));
    assert_secret_not_shown(&output, PASSWORD);
    assert!(registry.upload_sessions("team/bb").is_empty(), "no session left open");

    // The same credentials from docker's config.json, as `docker login` writes them.
    docker_config(&env, &registry.addr(), USER, PASSWORD);
    let output = stage5(&env, "other", &["pull", &target]);
    assert_eq!(code(&output), 0, "{}", text(&output.stderr));
    assert!(text(&output.stdout).contains("2 blobs fetched"), "{}", text(&output.stdout));
    assert_secret_not_shown(&output, PASSWORD);
    let images = ok(&env, "other", &["images"]);
    assert!(images.contains(&format!("{}/team/bb", registry.addr())), "{images}");

    // The registry saw the user on its requests (its log names who pushed).
    assert!(registry.log().contains(&format!("auth.user.name={USER}")), "{}", registry.log());
}

#[test]
fn htpasswd_without_or_with_wrong_credentials_is_refused_in_one_line() {
    let test = "htpasswd_without_or_with_wrong_credentials_is_refused_in_one_line";
    let env = TestEnv::new();
    if !prepare(test, &env) {
        return;
    }
    let registry = Registry::start_with(&env, Auth::Htpasswd(&[(USER, PASSWORD)]));
    let target = format!("{}/team/bb:1", registry.addr());
    let v2 = format!("http://{}/v2/", registry.addr());

    // No credentials at all: the registry's 401, and what to pass.
    let line = refused(&env, &["push", "bb:1", &target], &["401", &v2, "--creds"], PASSWORD);
    assert!(line.contains("wants credentials"), "{line}");
    refused(&env, &["pull", &target], &["401", &v2, "--creds"], PASSWORD);

    // A wrong password, by --creds and by docker's config.json: refused, the user named, the
    // password shown nowhere.
    let wrong = format!("{USER}:{WRONG}");
    for args in
        [vec!["push", "--creds", &wrong, "bb:1", &target], vec!["pull", "--creds", &wrong, &target]]
    {
        let line = refused(&env, &args, &["401", &v2, "refused", USER, "--creds"], WRONG);
        assert!(!line.contains(PASSWORD), "{line}");
    }
    docker_config(&env, &registry.addr(), USER, WRONG);
    refused(&env, &["pull", &target], &["401", "refused", USER, "config.json"], WRONG);

    // Nothing reached the registry's storage.
    assert!(registry.upload_sessions("team/bb").is_empty());
    let repositories = registry.storage.join("docker/registry/v2/repositories");
    assert!(!repositories.join("team/bb").exists(), "{:?}", names_in(&repositories));
}

/// The scopes of every token request, each as (resource, actions).
fn scopes_asked(server: &TokenServer) -> BTreeSet<(String, BTreeSet<String>)> {
    server.requests().iter().flat_map(|request| request.scope_sets()).collect()
}

fn actions(list: &[&str]) -> BTreeSet<String> {
    list.iter().map(|action| action.to_string()).collect()
}

#[test]
fn bearer_tokens_push_and_pull_with_the_scopes_each_needs() {
    let test = "bearer_tokens_push_and_pull_with_the_scopes_each_needs";
    let env = TestEnv::new();
    if !prepare(test, &env) {
        return;
    }
    let tokens = TokenServer::start(&env, &[(USER, PASSWORD)]);
    let registry = Registry::start_with(&env, Auth::Token(&tokens));
    let target = format!("{}/team/bb:1", registry.addr());
    let creds = format!("{USER}:{PASSWORD}");

    let output = stage5(&env, "store", &["push", "--creds", &creds, "bb:1", &target]);
    assert_eq!(code(&output), 0, "{}\n{}", text(&output.stderr), registry.log());
    assert!(text(&output.stdout).contains("2 blobs sent"), "{}", text(&output.stdout));
    assert_secret_not_shown(&output, PASSWORD);
    let pushed = tokens.requests();
    assert!(pushed.iter().all(|request| request.granted && request.user.as_deref() == Some(USER)));
    // The push asked for push and pull on its repository, and for nothing else.
    let scopes = scopes_asked(&tokens);
    assert!(
        scopes.contains(&("repository:team/bb".into(), actions(&["pull", "push"]))),
        "{pushed:#?}"
    );
    assert!(scopes.iter().all(|(resource, _)| resource == "repository:team/bb"), "{pushed:#?}");

    // A pull asks for pull only.
    let output = stage5(&env, "other", &["pull", "--creds", &creds, &target]);
    assert_eq!(code(&output), 0, "{}\n{}", text(&output.stderr), registry.log());
    assert!(text(&output.stdout).contains("2 blobs fetched"), "{}", text(&output.stdout));
    let pulled: Vec<TokenRequest> = tokens.requests().split_off(pushed.len());
    assert!(!pulled.is_empty(), "the pull asked for a token");
    let pull_scopes: BTreeSet<_> = pulled.iter().flat_map(|request| request.scope_sets()).collect();
    assert_eq!(
        pull_scopes,
        BTreeSet::from([("repository:team/bb".to_string(), actions(&["pull"]))]),
        "{pulled:#?}"
    );

    // A cross-repository mount needs two scopes in one token: push and pull on the target,
    // pull on the source. Each goes to the token service as a `scope=` of its own.
    let fresh = format!("{}/fresh/bb:1", registry.addr());
    let before = tokens.requests().len();
    let mounted =
        ok(&env, "store", &["push", "--creds", &creds, "--mount-from", "team/bb", "bb:1", &fresh]);
    assert!(mounted.contains("0 blobs sent (0 B)"), "{mounted}");
    let mount_requests: Vec<TokenRequest> = tokens.requests().split_off(before);
    assert!(
        mount_requests.iter().any(|request| request
            .scope_sets()
            .contains(&("repository:team/bb".to_string(), actions(&["pull"])))
            && request.scope_sets().iter().any(|(resource, _)| resource == "repository:fresh/bb")),
        "one token for both repositories: {mount_requests:#?}"
    );
}

#[test]
fn a_refused_token_request_is_one_line_and_125() {
    let test = "a_refused_token_request_is_one_line_and_125";
    let env = TestEnv::new();
    if !prepare(test, &env) {
        return;
    }
    let tokens = TokenServer::start(&env, &[(USER, PASSWORD)]);
    let registry = Registry::start_with(&env, Auth::Token(&tokens));
    let target = format!("{}/team/bb:1", registry.addr());
    let realm = tokens.realm();

    let wrong = format!("{USER}:{WRONG}");
    for args in
        [vec!["push", "--creds", &wrong, "bb:1", &target], vec!["pull", "--creds", &wrong, &target]]
    {
        let line = refused(&env, &args, &[&realm, "401", "refused", USER, "--creds"], WRONG);
        assert!(line.contains("token service"), "{line}");
    }
    // Without credentials the token service refuses an anonymous request.
    let line = refused(&env, &["pull", &target], &[&realm, "401", "anonymous", "--creds"], WRONG);
    assert!(line.contains("token service"), "{line}");
    assert!(tokens.requests().iter().all(|request| !request.granted), "{:#?}", tokens.requests());
    assert!(registry.upload_sessions("team/bb").is_empty());
}

/// The registry's answers for a push that wants Basic credentials on every request and hands
/// out an upload session at `location` (another server, or a trick on its own address).
fn basic_registry_sending_uploads_to(location: String) -> FakeRegistry {
    FakeRegistry::start(move |request| {
        if request.header("authorization").is_none() {
            return Answer::status(401).header("WWW-Authenticate", "Basic realm=\"fake\"");
        }
        match (request.method.as_str(), request.path()) {
            (_, "/v2/") => Answer::json(200, serde_json::json!({})),
            ("HEAD", _) => Answer::status(404),
            ("POST", "/v2/team/app/blobs/uploads/") => {
                Answer::status(202).header("Location", &location)
            }
            _ => Answer::error(404, "NAME_UNKNOWN", "no"),
        }
    })
}

#[test]
fn credentials_go_to_the_registry_only_never_to_a_location_elsewhere() {
    let test = "credentials_go_to_the_registry_only_never_to_a_location_elsewhere";
    let env = TestEnv::new();
    if !prepare(test, &env) {
        return;
    }
    let creds = format!("{USER}:{PASSWORD}");
    // Another server, named by a full URL in the upload's Location: it gets the bytes (a CDN
    // could be that), never the Authorization.
    let elsewhere = FakeRegistry::start(|_| Answer::error(500, "UNKNOWN", "not a registry"));
    let registry = basic_registry_sending_uploads_to(format!(
        "http://{}/upload/s1?_state=x",
        elsewhere.addr()
    ));
    let target = format!("{}/team/app:1", registry.addr());
    let output = stage5(&env, "store", &["push", "--creds", &creds, "bb:1", &target]);
    assert_eq!(code(&output), 125, "{}", text(&output.stderr));
    let seen = elsewhere.requests();
    assert!(!seen.is_empty(), "the upload went to the other server");
    for request in &seen {
        assert_eq!(request.header("authorization"), None, "{}", request.line());
    }
    // The registry itself had them on every request after its challenge.
    assert!(registry.requests().iter().any(|r| r.header("authorization").is_some()));

    // `@host:port/…` (no leading slash) glued to the base would be a URL to that host with
    // the base as its user: refused, and nothing sent there.
    let trap = FakeRegistry::start(|_| Answer::status(201));
    let registry = basic_registry_sending_uploads_to(format!("@{}/v2/x", trap.addr()));
    let target = format!("{}/team/app:1", registry.addr());
    let output = stage5(&env, "store", &["push", "--creds", &creds, "bb:1", &target]);
    assert_eq!(code(&output), 125);
    let stderr = text(&output.stderr);
    assert!(stderr.contains("is neither an absolute path nor an http(s) URL"), "{stderr}");
    assert!(trap.requests().is_empty(), "{:?}", trap.requests());
    for shown in [text(&output.stdout), stderr] {
        assert!(!shown.contains(PASSWORD), "{shown}");
    }
}
