//! The bucket tests' own footing (`s3_server/`): the guard refuses every
//! endpoint that is not local before anything is sent, and strips what
//! would let a credential lookup or a request leave the machine; the
//! server has the identities the tests rely on, and leaves nothing behind.

mod s3_server;

use std::net::IpAddr;
use std::path::Path;
use std::process::Command;

use s3_server::guard::{self, Credentials};
use s3_server::{BUCKET, Role, S3Server};

fn credentials() -> Credentials {
    Credentials {
        access_key: "TESTKEY".into(),
        secret_key: "testsecret".into(),
    }
}

/// The message the guard panics with for `endpoint`, if it panics.
fn refusal(endpoint: Option<&str>, namespaces: &[IpAddr]) -> Option<String> {
    let home = tempfile::tempdir().unwrap();
    let endpoint = endpoint.map(str::to_owned);
    let namespaces = namespaces.to_vec();
    let path = home.path().to_owned();
    let result = std::panic::catch_unwind(move || {
        guard::client_env(endpoint.as_deref(), &namespaces, &credentials(), &path);
    });
    result.err().map(|panic| {
        (panic.downcast_ref::<String>().cloned())
            .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_default()
    })
}

/// A test that names a cloud's endpoint, an address of the machine's real
/// network, a host name (whatever it resolves to), an address spelled so
/// that a client might read it differently, or no endpoint at all, is
/// stopped by the guard before any client exists.
#[test]
fn the_guard_refuses_endpoints_that_are_not_local() {
    let namespace: IpAddr = "10.77.3.1".parse().unwrap();
    for endpoint in [
        None,
        Some(""),
        Some("https://s3.amazonaws.com"),
        Some("https://s3.us-east-1.amazonaws.com/team-gocache"),
        Some("http://169.254.169.254/latest/meta-data/"),
        Some("http://10.77.3.2:8333"),
        Some("http://192.168.1.10:9000"),
        Some("http://8.8.8.8"),
        Some("http://localhost:8333"),
        Some("http://127.0.0.1.nip.io:8333"),
        Some("http://0.0.0.0:8333"),
        Some("http://[::]:8333"),
        Some("http://[::ffff:8.8.8.8]:8333"),
        Some("http://[::ffff:127.0.0.1]:8333"),
        Some("http://0177.0.0.1:8333"),
        Some("http://127.1:8333"),
        Some("http://2130706433/"),
        Some("http://127.0.0.1@s3.amazonaws.com/"),
        Some("http://user:pass@127.0.0.1:8333/"),
        Some("http://127.0.0.1:0/"),
        Some("http://127.0.0.1:99999/"),
        Some("s3://127.0.0.1:8333"),
        Some("127.0.0.1:8333"),
    ] {
        let message = refusal(endpoint, &[namespace]);
        assert!(
            message
                .as_deref()
                .is_some_and(|m| m.starts_with("refusing")),
            "the guard let {endpoint:?} through (or failed otherwise: {message:?})"
        );
    }
}

/// Loopback in either family, and an address of the test's own
/// namespaces, pass.
#[test]
fn the_guard_accepts_loopback_and_the_tests_own_namespaces() {
    let namespace: IpAddr = "10.77.3.1".parse().unwrap();
    for endpoint in [
        "http://127.0.0.1:8333",
        "http://127.0.0.1:8333/",
        "https://127.0.0.1",
        "http://127.9.8.7:1234/some/path?x=1",
        "http://[::1]:9000",
        "http://10.77.3.1:8333",
    ] {
        assert_eq!(
            refusal(Some(endpoint), &[namespace]),
            None,
            "{endpoint} refused"
        );
    }
}

/// A HOME holding AWS files is the machine user's, not the test's.
#[test]
fn the_guard_refuses_a_home_with_aws_files() {
    let home = tempfile::tempdir().unwrap();
    std::fs::create_dir(home.path().join(".aws")).unwrap();
    let path = home.path().to_owned();
    let result = std::panic::catch_unwind(move || {
        guard::client_env(Some("http://127.0.0.1:8333"), &[], &credentials(), &path);
    });
    assert!(result.is_err());
}

/// Whatever AWS settings or proxies a process would inherit or was given,
/// it runs with the test's credentials alone, a HOME of the test's, and
/// the metadata service off.
#[test]
fn the_guarded_environment_keeps_only_the_tests_credentials() {
    let home = tempfile::tempdir().unwrap();
    let env = guard::client_env(
        Some("http://127.0.0.1:8333"),
        &[],
        &credentials(),
        home.path(),
    );
    let mut command = Command::new("env");
    command
        .env("AWS_PROFILE", "production")
        .env("AWS_ENDPOINT_URL", "https://s3.amazonaws.com")
        .env("AWS_SESSION_TOKEN", "a-real-session")
        .env("AWS_WEB_IDENTITY_TOKEN_FILE", "/var/run/token")
        .env(
            "AWS_CONTAINER_CREDENTIALS_FULL_URI",
            "http://169.254.170.2/",
        )
        .env("AWS_EC2_METADATA_DISABLED", "false")
        .env("aws_secret_access_key", "lower-case")
        .env("HTTPS_PROXY", "http://10.0.0.1:3128")
        .env("all_proxy", "socks5://10.0.0.1:1080")
        .env("HOME", "/root");
    env.apply(&mut command);
    let output = command.output().unwrap();
    let text = String::from_utf8(output.stdout).unwrap();
    let mut vars: Vec<&str> = text
        .lines()
        .filter(|line| {
            let name = line.split('=').next().unwrap_or_default();
            name.to_ascii_uppercase().starts_with("AWS_")
                || name.to_ascii_lowercase().ends_with("_proxy")
                || name == "HOME"
        })
        .collect();
    vars.sort_unstable();
    let home_line = format!("HOME={}", home.path().display());
    assert_eq!(
        vars,
        [
            "AWS_ACCESS_KEY_ID=TESTKEY",
            "AWS_EC2_METADATA_DISABLED=true",
            "AWS_SECRET_ACCESS_KEY=testsecret",
            home_line.as_str(),
        ],
        "{text}"
    );
}

/// The server's identities: the writer reads, lists, writes and deletes;
/// the reader reads and lists but cannot write or delete; a wrong secret
/// and an unsigned request get nothing. The bucket exists from the start.
#[test]
fn the_server_has_a_writer_and_a_read_only_identity() {
    let Some(server) = S3Server::start() else {
        return;
    };
    let key = "warren/v1/objects/00ff";
    server.put(Role::Writer, key, b"a body").unwrap();
    assert_eq!(
        server.get(Role::Reader, key).as_deref(),
        Some(&b"a body"[..])
    );
    assert_eq!(server.get(Role::Reader, "warren/v1/objects/none"), None);

    let refused = server.put(Role::Reader, "warren/v1/objects/11", b"x");
    assert_eq!(refused.map_err(|f| f.status), Err(403));
    let refused = server.delete(Role::Reader, key);
    assert_eq!(refused.map_err(|f| f.status), Err(403));

    // Keys with characters that need encoding, and a listing that pages.
    server
        .put(Role::Writer, "warren/v1/manifests/a b+c=d.manifest", b"")
        .unwrap();
    let listed = server.list(Role::Reader, "warren/v1/");
    let keys: Vec<&str> = listed.iter().map(|o| o.key.as_str()).collect();
    assert_eq!(keys, ["warren/v1/manifests/a b+c=d.manifest", key]);
    assert_eq!(listed[1].size, 6);

    // Create-if-absent, as a writer's body uploads use it.
    let again = server.request(
        Role::Writer,
        "PUT",
        &format!("/{BUCKET}/{key}"),
        Some(b"other"),
        &[("If-None-Match", "*")],
    );
    assert_eq!(again.map(|(status, _)| status), Ok(412));

    server.delete(Role::Writer, key).unwrap();
    assert_eq!(server.get(Role::Writer, key), None);

    // Unsigned, and signed with a wrong secret.
    let status = |signing: &[String]| {
        let output = Command::new("curl")
            .args([
                "-q",
                "-s",
                "--noproxy",
                "*",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
            ])
            .args(signing)
            .arg(format!("{}/{BUCKET}", server.endpoint()))
            .output()
            .unwrap();
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    assert_eq!(status(&[]), "403");
    let wrong = [
        "--aws-sigv4".to_owned(),
        "aws:amz:us-east-1:s3".to_owned(),
        "--user".to_owned(),
        format!("{}:wrong", server.credentials(Role::Writer).access_key),
    ];
    assert_eq!(status(&wrong), "403");
}

/// Two servers at once (tests run in parallel) share nothing; each, once
/// dropped, has ended, freed its port, removed its `/tmp` sockets and
/// deleted its data.
#[test]
fn servers_are_separate_and_leave_nothing_behind() {
    let Some(first) = S3Server::start() else {
        return;
    };
    let second = S3Server::start().unwrap();
    first.put(Role::Writer, "only-in-first", b"1").unwrap();
    assert_eq!(second.get(Role::Writer, "only-in-first"), None);
    assert_ne!(first.endpoint(), second.endpoint());

    for server in [first, second] {
        let pid = server.pid().unwrap();
        let port = server.endpoint().rsplit(':').next().unwrap().to_owned();
        let sockets = server.tmp_sockets();
        assert!(!sockets.is_empty(), "weed made no /tmp sockets to clean up");
        let data = server.dir().to_owned();
        assert!(data.join("data").exists());
        drop(server);
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists()
                || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .is_ok_and(|stat| stat.contains(") Z")),
            "weed {pid} still runs"
        );
        assert!(
            std::net::TcpStream::connect(format!("127.0.0.1:{port}")).is_err(),
            "port {port} still answers"
        );
        for socket in &sockets {
            assert!(!socket.exists(), "{} was left behind", socket.display());
        }
        assert!(!data.exists(), "{} was left behind", data.display());
    }
}

/// A paused server answers nothing (a hung server, as tests play it), and
/// answers again once resumed.
#[test]
fn a_paused_server_hangs_until_resumed() {
    let Some(server) = S3Server::start() else {
        return;
    };
    server.pause();
    let hung = Command::new("curl")
        .args([
            "-q",
            "-s",
            "--noproxy",
            "*",
            "--max-time",
            "2",
            "-o",
            "/dev/null",
        ])
        .args(["-w", "%{http_code}"])
        .arg(format!("{}/{BUCKET}", server.endpoint()))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&hung.stdout), "000");
    server.resume();
    server.put(Role::Writer, "after", b"resumed").unwrap();
}
