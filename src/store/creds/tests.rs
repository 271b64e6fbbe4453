//! The credential chain against files in a scratch directory and local HTTP endpoints
//! standing in for STS, the container endpoint and IMDS; renewal with a fake clock.

use std::collections::HashMap;
use std::net::TcpListener;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::Arc;

use super::*;
use crate::store::http::Transport;
use crate::testing::serve;

#[derive(Default)]
struct E(HashMap<String, String>);

impl E {
    fn with(mut self, k: &str, v: &str) -> E {
        self.0.insert(k.into(), v.into());
        self
    }
}

impl Env for E {
    fn var(&self, n: &str) -> Option<String> {
        self.0.get(n).cloned()
    }
}

/// An environment with no AWS settings but a HOME of its own and IMDS off.
fn base(dir: &std::path::Path) -> E {
    E::default()
        .with("HOME", dir.to_str().unwrap())
        .with("AWS_EC2_METADATA_DISABLED", "true")
}

fn resolve(env: &E) -> Result<Provider, String> {
    let t = Transport::from_env(env)?;
    from_env(&Lookup {
        env,
        transport: &t,
        region: "eu-west-1",
    })
}

fn sts_reply(id: &str, expires: &str) -> String {
    format!(
        "<AssumeRoleResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\"><AssumeRoleResult>\
         <Credentials><AccessKeyId>{id}</AccessKeyId><SecretAccessKey>secret-of-{id}</SecretAccessKey>\
         <SessionToken>token-of-{id}</SessionToken><Expiration>{expires}</Expiration></Credentials>\
         </AssumeRoleResult></AssumeRoleResponse>"
    )
}

fn in_an_hour() -> String {
    crate::ts::Ts::now().add_secs(3600).iso()
}

#[test]
fn the_environment_comes_first_and_half_a_pair_is_an_error() {
    let d = tempfile::tempdir().unwrap();
    std::fs::create_dir(d.path().join(".aws")).unwrap();
    std::fs::write(
        d.path().join(".aws/credentials"),
        "[default]\naws_access_key_id = AKIAFILEKEY0000000\naws_secret_access_key = filesecret\n",
    )
    .unwrap();
    let env = base(d.path())
        .with("AWS_ACCESS_KEY_ID", "AKIAENVKEY00000000")
        .with("AWS_SECRET_ACCESS_KEY", "envsecret")
        .with("AWS_SESSION_TOKEN", "envtoken");
    let c = resolve(&env).unwrap().get().unwrap();
    assert_eq!(c.access_key, "AKIAENVKEY00000000");
    assert_eq!(c.session_token.as_deref(), Some("envtoken"));
    let e = resolve(&base(d.path()).with("AWS_ACCESS_KEY_ID", "AKIAENVKEY00000000"))
        .err()
        .unwrap();
    assert!(e.contains("AWS_SECRET_ACCESS_KEY is not"), "{e}");
    // Without the environment, the default profile of the credentials file.
    let c = resolve(&base(d.path())).unwrap().get().unwrap();
    assert_eq!(c.access_key, "AKIAFILEKEY0000000");
}

#[test]
fn a_profile_in_the_config_file_only_and_the_credentials_file_winning() {
    let d = tempfile::tempdir().unwrap();
    let config = d.path().join("cfg");
    let creds = d.path().join("creds");
    std::fs::write(
        &config,
        "[default]\nregion = eu-west-1\n[profile backup]\naws_access_key_id = AKIACONFIGKEY00000\n\
         aws_secret_access_key = configsecret\n[sso-session x]\nsso_region = us-east-1\n",
    )
    .unwrap();
    let env = base(d.path())
        .with("AWS_CONFIG_FILE", config.to_str().unwrap())
        .with("AWS_SHARED_CREDENTIALS_FILE", creds.to_str().unwrap())
        .with("AWS_PROFILE", "backup");
    let p = resolve(&env).unwrap();
    assert_eq!(p.get().unwrap().access_key, "AKIACONFIGKEY00000");
    assert!(p.describe().contains("profile backup"), "{}", p.describe());
    std::fs::write(
        &creds,
        "[backup]\naws_access_key_id = AKIACREDSKEY000000\naws_secret_access_key = credssecret\n",
    )
    .unwrap();
    assert_eq!(
        resolve(&env).unwrap().get().unwrap().access_key,
        "AKIACREDSKEY000000"
    );
    // A named profile that is nowhere is an error naming it and both files.
    let e = resolve(&env.with("AWS_PROFILE", "nope")).err().unwrap();
    assert!(
        e.contains("AWS_PROFILE=nope") && e.contains("cfg") && e.contains("creds"),
        "{e}"
    );
}

#[test]
fn nothing_found_lists_every_place_tried() {
    let d = tempfile::tempdir().unwrap();
    let e = resolve(&base(d.path())).err().unwrap();
    for w in [
        "no AWS credentials found",
        "AWS_ACCESS_KEY_ID is not set",
        "profile default",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_EC2_METADATA_DISABLED",
    ] {
        assert!(e.contains(w), "{w}: {e}");
    }
    // With IMDS on but nobody answering, it says what the metadata service did.
    let dead = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", dead.local_addr().unwrap());
    drop(dead);
    let mut env = base(d.path()).with("AWS_EC2_METADATA_SERVICE_ENDPOINT", &url);
    env.0.remove("AWS_EC2_METADATA_DISABLED");
    let e = resolve(&env).err().unwrap();
    assert!(e.contains(&format!("instance metadata at {url}")), "{e}");
}

#[test]
fn credential_process_output_is_checked() {
    let d = tempfile::tempdir().unwrap();
    let script = d.path().join("creds.sh");
    let exp = in_an_hour();
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\necho '{{\"Version\": 1, \"AccessKeyId\": \"AKIAPROCESS0000000\", \
             \"SecretAccessKey\": \"processsecret\", \"SessionToken\": \"ptoken\", \"Expiration\": \"{exp}\"}}'\n"
        ),
    )
    .unwrap();
    let config = d.path().join("cfg");
    let cfg = |cmd: &str| {
        std::fs::write(
            &config,
            format!("[profile p]\ncredential_process = {cmd}\n"),
        )
        .unwrap();
    };
    let env = base(d.path())
        .with("AWS_CONFIG_FILE", config.to_str().unwrap())
        .with("AWS_PROFILE", "p");
    cfg(&format!("sh {}", script.display()));
    let c = resolve(&env).unwrap().get().unwrap();
    assert_eq!(c.access_key, "AKIAPROCESS0000000");
    assert_eq!(c.session_token.as_deref(), Some("ptoken"));
    assert!(c.expires.is_some());
    for (cmd, words) in [
        ("echo 'nonsense'", "not JSON"),
        ("echo '{\"AccessKeyId\": \"A\"}'", "Version"),
        ("echo 'denied by vault' >&2; exit 3", "denied by vault"),
        (
            "echo '{\"Version\": 1, \"AccessKeyId\": \"A B\", \"SecretAccessKey\": \"s\"}'",
            "access key id",
        ),
    ] {
        cfg(cmd);
        let e = resolve(&env).unwrap().get().err().unwrap();
        assert!(
            e.contains(words) && e.contains("credential_process"),
            "{cmd}: {e}"
        );
    }
}

#[test]
fn role_arn_with_source_profile_asks_sts_signed_with_the_source() {
    let exp = in_an_hour();
    let sts = serve(move |r| {
        if r.body.contains("Action=AssumeRole&") {
            (200, sts_reply("ASIAASSUMED0000000", &exp))
        } else {
            (
                400,
                "<ErrorResponse><Error><Code>Bad</Code></Error></ErrorResponse>".into(),
            )
        }
    });
    let d = tempfile::tempdir().unwrap();
    let config = d.path().join("cfg");
    let creds = d.path().join("creds");
    std::fs::write(
        &config,
        "[profile backup]\nrole_arn = arn:aws:iam::123456789012:role/backup\nsource_profile = base\n\
         external_id = ext-1\nrole_session_name = nightly\nregion = eu-central-1\n",
    )
    .unwrap();
    std::fs::write(
        &creds,
        "[base]\naws_access_key_id = AKIABASEKEY0000000\naws_secret_access_key = basesecret\n",
    )
    .unwrap();
    let env = base(d.path())
        .with("AWS_CONFIG_FILE", config.to_str().unwrap())
        .with("AWS_SHARED_CREDENTIALS_FILE", creds.to_str().unwrap())
        .with("AWS_PROFILE", "backup")
        .with("AWS_ENDPOINT_URL_STS", &sts.url);
    let c = resolve(&env).unwrap().get().unwrap();
    assert_eq!(c.access_key, "ASIAASSUMED0000000");
    assert_eq!(
        c.session_token.as_deref(),
        Some("token-of-ASIAASSUMED0000000")
    );
    let seen = sts.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    let auth = &seen[0].headers["authorization"];
    assert!(
        auth.contains("Credential=AKIABASEKEY0000000/")
            && auth.contains("/eu-central-1/sts/aws4_request"),
        "{auth}"
    );
    for w in [
        "RoleArn=arn%3Aaws%3Aiam%3A%3A123456789012%3Arole%2Fbackup",
        "RoleSessionName=nightly",
        "ExternalId=ext-1",
        "DurationSeconds=3600",
    ] {
        assert!(seen[0].body.contains(w), "{w}: {}", seen[0].body);
    }
    // A refusal names the role and STS's error code.
    std::fs::write(
        &config,
        "[profile backup]\nrole_arn = arn:aws:iam::123456789012:role/other\nsource_profile = base\n",
    )
    .unwrap();
    let sts2 = serve(|_| {
        (
            403,
            "<ErrorResponse><Error><Code>AccessDenied</Code><Message>not allowed</Message></Error></ErrorResponse>"
                .into(),
        )
    });
    let e = resolve(&env.with("AWS_ENDPOINT_URL_STS", &sts2.url))
        .unwrap()
        .get()
        .err()
        .unwrap();
    assert!(
        e.contains("role/other") && e.contains("AccessDenied: not allowed"),
        "{e}"
    );
}

#[test]
fn profiles_that_cannot_work_are_errors_not_fallthroughs() {
    let d = tempfile::tempdir().unwrap();
    let config = d.path().join("cfg");
    let env = base(d.path())
        .with("AWS_CONFIG_FILE", config.to_str().unwrap())
        .with("AWS_PROFILE", "a");
    for (text, words) in [
        ("[profile a]\nrole_arn = r\nsource_profile = b\n[profile b]\nrole_arn = r\nsource_profile = a\n", "loop"),
        ("[profile a]\nrole_arn = r\n", "no source_profile"),
        ("[profile a]\nrole_arn = r\nsource_profile = a\nmfa_serial = m\n", "MFA"),
        ("[profile a]\nrole_arn = r\nsource_profile = zz\n", "zz"),
        ("[profile a]\nsso_session = x\n", "SSO"),
        ("[profile a]\nregion = eu-west-1\n", "has no credentials"),
        ("[profile a]\naws_access_key_id = AKIAONLYHALF000000\n", "only one of"),
    ] {
        std::fs::write(&config, text).unwrap();
        let e = resolve(&env).err().unwrap();
        assert!(e.contains(words), "{text}: {e}");
    }
}

#[test]
fn web_identity_reads_its_token_file_at_each_fetch() {
    let exp = in_an_hour();
    let sts = serve(move |r| {
        assert!(
            !r.headers.contains_key("authorization"),
            "web identity is not signed"
        );
        (200, sts_reply("ASIAWEBIDENTITY000", &exp))
    });
    let d = tempfile::tempdir().unwrap();
    let token = d.path().join("token");
    std::fs::write(&token, "eyJ-first-token\n").unwrap();
    let env = base(d.path())
        .with("AWS_WEB_IDENTITY_TOKEN_FILE", token.to_str().unwrap())
        .with("AWS_ROLE_ARN", "arn:aws:iam::123456789012:role/web")
        .with("AWS_ENDPOINT_URL_STS", &sts.url);
    let p = resolve(&env).unwrap();
    assert_eq!(p.get().unwrap().access_key, "ASIAWEBIDENTITY000");
    std::fs::write(&token, "eyJ-second-token\n").unwrap();
    assert!(p.invalidate());
    p.get().unwrap();
    let seen = sts.seen.lock().unwrap().clone();
    assert!(
        seen[0].body.contains("WebIdentityToken=eyJ-first-token"),
        "{:?}",
        seen[0]
    );
    assert!(
        seen[1].body.contains("WebIdentityToken=eyJ-second-token"),
        "{:?}",
        seen[1]
    );
}

#[test]
fn container_endpoint_with_token_and_only_safe_hosts() {
    let exp = in_an_hour();
    let ep = serve(move |r| {
        if r.headers.get("authorization").map(String::as_str) != Some("Bearer abc") {
            return (401, "no".into());
        }
        (
            200,
            format!(
                "{{\"AccessKeyId\":\"ASIACONTAINER00000\",\"SecretAccessKey\":\"csecret\",\
                 \"Token\":\"ctoken\",\"Expiration\":\"{exp}\"}}"
            ),
        )
    });
    let d = tempfile::tempdir().unwrap();
    let tokfile = d.path().join("tok");
    std::fs::write(&tokfile, "Bearer abc\n").unwrap();
    let env = base(d.path())
        .with(
            "AWS_CONTAINER_CREDENTIALS_FULL_URI",
            &format!("{}/creds", ep.url),
        )
        .with(
            "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
            tokfile.to_str().unwrap(),
        );
    let c = resolve(&env).unwrap().get().unwrap();
    assert_eq!(c.access_key, "ASIACONTAINER00000");
    assert_eq!(c.session_token.as_deref(), Some("ctoken"));
    assert_eq!(ep.seen.lock().unwrap()[0].path, "/creds");
    // Plain http to anything but loopback and the ECS/EKS addresses is refused.
    let e = resolve(&base(d.path()).with(
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "http://10.0.0.5/creds",
    ))
    .err()
    .unwrap();
    assert!(e.contains("only loopback"), "{e}");
}

#[test]
fn imds_v2_takes_a_session_token_first() {
    let exp = in_an_hour();
    let ep = serve(move |r| {
        match (r.method.as_str(), r.path.as_str()) {
        ("PUT", "/latest/api/token") => (200, "imds-session".into()),
        (_, _) if r.headers.get("x-aws-ec2-metadata-token").map(String::as_str) != Some("imds-session") => {
            (401, "".into())
        }
        ("GET", "/latest/meta-data/iam/security-credentials/") => (200, "backup-role\n".into()),
        ("GET", "/latest/meta-data/iam/security-credentials/backup-role") => (
            200,
            format!(
                "{{\"Code\":\"Success\",\"AccessKeyId\":\"ASIAINSTANCE000000\",\"SecretAccessKey\":\"isecret\",\
                 \"Token\":\"itoken\",\"Expiration\":\"{exp}\"}}"
            ),
        ),
        _ => (404, "".into()),
    }
    });
    let d = tempfile::tempdir().unwrap();
    let mut env = base(d.path()).with("AWS_EC2_METADATA_SERVICE_ENDPOINT", &ep.url);
    env.0.remove("AWS_EC2_METADATA_DISABLED");
    let c = resolve(&env).unwrap().get().unwrap();
    assert_eq!(c.access_key, "ASIAINSTANCE000000");
    let seen = ep.seen.lock().unwrap().clone();
    // Finding it and using it cost one token and one document, not two.
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert_eq!(seen[0].method, "PUT");
    assert_eq!(
        seen[0].headers["x-aws-ec2-metadata-token-ttl-seconds"],
        "21600"
    );
}

static CLOCK: AtomicI64 = AtomicI64::new(1_000_000);

fn fake_now() -> i64 {
    CLOCK.load(Ordering::SeqCst)
}

/// A source whose credentials live `life` seconds; `fail` makes it fail (and counts).
struct Counting {
    n: Arc<AtomicUsize>,
    life: i64,
    fail: Arc<std::sync::atomic::AtomicBool>,
    failures: Arc<AtomicUsize>,
}

impl Fetch for Counting {
    fn fetch(&self) -> Result<Credentials, String> {
        if self.fail.load(Ordering::SeqCst) {
            self.failures.fetch_add(1, Ordering::SeqCst);
            return Err("endpoint down".into());
        }
        let n = self.n.fetch_add(1, Ordering::SeqCst) + 1;
        Ok(Credentials {
            access_key: format!("ASIA{n}"),
            secret_key: "s".into(),
            session_token: Some("t".into()),
            expires: Some(fake_now() + self.life),
        })
    }
    fn describe(&self) -> String {
        "counting".into()
    }
}

#[test]
fn renewal_happens_ahead_of_expiry_and_on_expired_token() {
    let n = Arc::new(AtomicUsize::new(0));
    let fail = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let failures = Arc::new(AtomicUsize::new(0));
    let mut p = Provider::new(Box::new(Counting {
        n: n.clone(),
        life: 3600,
        fail: fail.clone(),
        failures: failures.clone(),
    }));
    p.now = fake_now;
    let t0 = fake_now();
    assert_eq!(p.get().unwrap().access_key, "ASIA1");
    // An hour's credentials: kept until five minutes before expiry, then renewed.
    CLOCK.store(t0 + 3600 - 301, Ordering::SeqCst);
    assert_eq!(p.get().unwrap().access_key, "ASIA1");
    CLOCK.store(t0 + 3600 - 299, Ordering::SeqCst);
    assert_eq!(p.get().unwrap().access_key, "ASIA2");
    // The service says ExpiredToken: the next use fetches anew.
    assert!(p.invalidate());
    assert_eq!(p.get().unwrap().access_key, "ASIA3");
    // A failed renewal keeps credentials that are still valid, and is not tried again
    // at every request (a tenth of the time left, here 30 s)...
    let t1 = fake_now();
    CLOCK.store(t1 + 3600 - 300, Ordering::SeqCst);
    fail.store(true, Ordering::SeqCst);
    assert_eq!(p.get().unwrap().access_key, "ASIA3");
    assert_eq!(p.get().unwrap().access_key, "ASIA3");
    assert_eq!(failures.load(Ordering::SeqCst), 1);
    CLOCK.store(t1 + 3600 - 269, Ordering::SeqCst);
    assert_eq!(p.get().unwrap().access_key, "ASIA3");
    assert_eq!(failures.load(Ordering::SeqCst), 2);
    // ...and is an error once they have expired.
    CLOCK.store(t1 + 3601, Ordering::SeqCst);
    let e = p.get().err().unwrap();
    assert!(e.contains("counting") && e.contains("endpoint down"), "{e}");
    // Short-lived credentials (20 s) are renewed at half their life.
    fail.store(false, Ordering::SeqCst);
    let mut q = Provider::new(Box::new(Counting {
        n: n.clone(),
        life: 20,
        fail,
        failures,
    }));
    q.now = fake_now;
    let before = n.load(Ordering::SeqCst);
    let t2 = fake_now();
    q.get().unwrap();
    CLOCK.store(t2 + 9, Ordering::SeqCst);
    q.get().unwrap();
    assert_eq!(n.load(Ordering::SeqCst), before + 1);
    CLOCK.store(t2 + 10, Ordering::SeqCst);
    q.get().unwrap();
    assert_eq!(n.load(Ordering::SeqCst), before + 2);
    // Fixed keys are never "renewed".
    assert!(!Provider::fixed("AKIAFIXED000000000", "s", None)
        .unwrap()
        .invalidate());
}

#[test]
fn replies_are_checked_before_they_become_headers() {
    use super::remote::{parse_json_for_tests, parse_sts_for_tests};
    assert!(
        parse_json_for_tests("{\"AccessKeyId\":\"A\",\"SecretAccessKey\":\"s\"}", true)
            .err()
            .unwrap()
            .contains("no Expiration")
    );
    assert!(parse_json_for_tests(
        "{\"Code\":\"AssumeRoleUnauthorizedAccess\",\"AccessKeyId\":\"A\",\"SecretAccessKey\":\"s\",\"Expiration\":\"2030-01-01T00:00:00Z\"}",
        true
    )
    .err()
    .unwrap()
    .contains("AssumeRoleUnauthorizedAccess"));
    assert!(parse_json_for_tests(
        "{\"AccessKeyId\":\"A\",\"SecretAccessKey\":\"s\",\"Token\":\"a\\r\\nx-injected: 1\"}",
        false
    )
    .err()
    .unwrap()
    .contains("session token"));
    assert!(parse_sts_for_tests("<x/>")
        .err()
        .unwrap()
        .contains("no Credentials"));
    assert!(parse_sts_for_tests(&sts_reply("ASIAX", "tomorrow"))
        .err()
        .unwrap()
        .contains("not a time"));
}

/// A profile `p` whose credential_process is `cmd`, with a 1 s timeout; the error of
/// fetching its credentials, and how long that took.
fn process_error(cmd: &str) -> (String, std::time::Duration) {
    let d = tempfile::tempdir().unwrap();
    let config = d.path().join("cfg");
    std::fs::write(
        &config,
        format!("[profile p]\ncredential_process = {cmd}\n"),
    )
    .unwrap();
    let env = base(d.path())
        .with("AWS_CONFIG_FILE", config.to_str().unwrap())
        .with("AWS_PROFILE", "p")
        .with("BTRFS_TO_S3_CREDENTIAL_PROCESS_TIMEOUT_MS", "1000");
    let started = std::time::Instant::now();
    let e = match resolve(&env).unwrap().get() {
        Ok(_) => "it gave credentials".to_string(),
        Err(e) => e,
    };
    (e, started.elapsed())
}

#[test]
fn a_credential_process_that_does_not_answer_is_killed_at_its_deadline() {
    // Sleeps past the deadline; the command line carries a (fake) token.
    let (e, took) = process_error("sleep 8; echo --token=FAKETOKENxyz123 >/dev/null");
    assert!(
        took < std::time::Duration::from_secs(4),
        "took {took:?}: {e}"
    );
    assert!(
        e.contains("profile p (credential_process)") && e.contains("no answer within 1 s"),
        "{e}"
    );
    assert!(
        !e.contains("FAKETOKEN"),
        "the command line is not shown: {e}"
    );
}

#[test]
fn a_credential_process_whose_child_holds_its_output_is_killed_with_the_child() {
    let d = tempfile::tempdir().unwrap();
    let pidfile = d.path().join("pid");
    // The helper exits at once, printing valid credentials, but leaves a child behind
    // that holds its stdout open.
    let (e, took) = process_error(&format!(
        "sh -c 'echo $$ > {}; exec sleep 8' & echo '{{\"Version\": 1, \"AccessKeyId\": \"AKIAPROCESS0000000\", \"SecretAccessKey\": \"s3cr3t\"}}'",
        pidfile.display()
    ));
    assert!(
        took < std::time::Duration::from_secs(4),
        "took {took:?}: {e}"
    );
    assert!(
        e.contains("profile p (credential_process)")
            && e.contains("no answer within 1 s")
            && e.contains("output was still held open"),
        "{e}"
    );
    // Its process group was killed: the child is gone (reaped by init) soon after.
    let pid = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .to_string();
    let proc_dir = std::path::PathBuf::from(format!("/proc/{pid}"));
    let gone = (0..100).any(|_| {
        let state = std::fs::read_to_string(proc_dir.join("stat")).unwrap_or_default();
        let zombie_or_gone = state.is_empty() || state.contains(") Z ");
        if !zombie_or_gone {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        zombie_or_gone
    });
    assert!(gone, "the helper's child {pid} is still running");
}

#[test]
fn a_credential_process_output_is_capped() {
    let (e, took) = process_error("head -c 10000000 /dev/zero");
    assert!(
        took < std::time::Duration::from_secs(4),
        "took {took:?}: {e}"
    );
    assert!(
        e.contains("profile p (credential_process)") && e.contains("more than 64 KiB"),
        "{e}"
    );
}
