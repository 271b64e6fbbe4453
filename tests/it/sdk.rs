//! Talking to S3 as the AWS SDKs do, end to end against moto (which checks every
//! signature): a profile defined only in `~/.aws/config` that assumes a role through
//! STS; container credentials that expire during the run, renewed ahead of expiry and
//! after an `ExpiredToken`; TLS with a private CA made here (stunnel4 in front of moto),
//! which needs `AWS_CA_BUNDLE` and whose certificate error is not retried; and
//! `HTTPS_PROXY`/`NO_PROXY`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::support::sdk::*;
use crate::support::*;

const MIB: usize = 1024 * 1024;

/// Removes the environment keys so the chain has to find credentials elsewhere.
fn without_env_keys(c: &mut std::process::Command) -> &mut std::process::Command {
    c.env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
}

fn point_config_at(s: &Setup, endpoint: &str) {
    let text = std::fs::read_to_string(&s.cfg).unwrap();
    std::fs::write(&s.cfg, text.replace(&s.moto.endpoint, endpoint)).unwrap();
}

fn restore_cmd(s: &Setup, target: &std::path::Path) -> std::process::Command {
    let mut c = btrfs_to_s3();
    c.args(["restore", "--config"])
        .arg(&s.cfg)
        .args(["--subvolume", "data", "--target"])
        .arg(target);
    c
}

#[test]
fn a_profile_only_in_the_config_file_assumes_a_role_through_sts() {
    if !require_root("a_profile_only_in_the_config_file_assumes_a_role_through_sts") {
        return;
    }
    let s = Setup::new(SetupOpts::default());
    random_file(&s.vol("data").join("f.bin"), 3 * MIB);
    let aws = TempDir::new("aws-files");
    let (config, creds) = (aws.path().join("config"), aws.path().join("credentials"));
    std::fs::write(
        &config,
        format!(
            "[default]\nregion = us-east-1\n\n[profile backup]\nrole_arn = {}\nsource_profile = base\n\
             role_session_name = nightly\n",
            s.moto.role_arn
        ),
    )
    .unwrap();
    std::fs::write(
        &creds,
        format!(
            "[base]\naws_access_key_id = {}\naws_secret_access_key = {}\n",
            s.moto.access_key, s.moto.secret_key
        ),
    )
    .unwrap();
    let with_profile = |c: &mut std::process::Command, profile: &str| {
        without_env_keys(c)
            .env("AWS_CONFIG_FILE", &config)
            .env("AWS_SHARED_CREDENTIALS_FILE", &creds)
            .env("AWS_PROFILE", profile)
            .env("AWS_ENDPOINT_URL_STS", &s.moto.endpoint);
    };
    let mut b = s.backup_cmd(&[]);
    with_profile(&mut b, "backup");
    let r = output(&mut b);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stderr.contains("credentials_loaded")
            && r.stderr
                .contains(&format!("STS AssumeRole of {}", s.moto.role_arn)),
        "{r:?}"
    );
    let t = s.fs.path("restored");
    let mut c = restore_cmd(&s, &t);
    with_profile(&mut c, "backup");
    let r = output(&mut c);
    assert_eq!(r.code, 0, "{r:?}");
    assert_same_tree(&s.vol("data"), &t);
    // A profile that is not there fails before anything is sent, naming it and the files.
    let mut b = s.backup_cmd(&[]);
    with_profile(&mut b, "nightly-typo");
    let r = output(&mut b);
    assert_ne!(r.code, 0, "{r:?}");
    assert!(
        r.stderr.contains("AWS_PROFILE=nightly-typo") && r.stderr.contains("config"),
        "{r:?}"
    );
}

#[test]
fn credentials_that_expire_during_a_run_are_renewed() {
    if !require_root("credentials_that_expire_during_a_run_are_renewed") {
        return;
    }
    let s = Setup::new(SetupOpts {
        concurrency: 1,
        storage_class_chunks: "STANDARD",
        ..Default::default()
    });
    random_file(&s.vol("data").join("f.bin"), 40 * MIB);
    let pool: Vec<(String, String, String)> = (0..3).map(|_| s.moto.assume_role(900)).collect();

    // 1. The endpoint says the credentials live 4 s, and S3 refuses them after 4 s:
    //    renewal ahead of expiry means no request is ever refused.
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let ep = CredsEndpoint::start(pool.clone(), 4, 4, ledger.clone());
    let gate = gatekeeper(s.moto.port, ledger.clone(), Duration::from_millis(400));
    point_config_at(&s, &gate.endpoint);
    let mut b = s.backup_cmd(&[]);
    without_env_keys(&mut b).env("AWS_CONTAINER_CREDENTIALS_FULL_URI", &ep.url);
    let r = output_within(&mut b, 300);
    assert_eq!(r.code, 0, "{r:?}");
    {
        let g = ledger.lock().unwrap();
        assert!(g.fetches >= 3, "renewed only {} times: {r:?}", g.fetches);
        assert_eq!(
            g.refused, 0,
            "a request went out with expired credentials: {r:?}"
        );
    }

    // 2. The endpoint says an hour, but S3 refuses them after 3 s (a revoked session):
    //    the ExpiredToken reply renews them and the request is sent again.
    random_file(&s.vol("data").join("g.bin"), 24 * MIB);
    let ledger2 = Arc::new(Mutex::new(Ledger::default()));
    let ep2 = CredsEndpoint::start(pool, 3600, 3, ledger2.clone());
    let gate2 = gatekeeper(s.moto.port, ledger2.clone(), Duration::from_millis(400));
    let text = std::fs::read_to_string(&s.cfg).unwrap();
    std::fs::write(&s.cfg, text.replace(&gate.endpoint, &gate2.endpoint)).unwrap();
    let mut b = s.backup_cmd(&["--once"]);
    without_env_keys(&mut b).env("AWS_CONTAINER_CREDENTIALS_FULL_URI", &ep2.url);
    let r = output_within(&mut b, 300);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stderr.contains("credentials_expired"), "{r:?}");
    {
        let g = ledger2.lock().unwrap();
        assert!(
            g.refused >= 1 && g.fetches >= 2,
            "refused {} fetches {}",
            g.refused,
            g.fetches
        );
    }
    let t = s.fs.path("restored");
    let mut c = restore_cmd(&s, &t);
    without_env_keys(&mut c).env("AWS_CONTAINER_CREDENTIALS_FULL_URI", &ep2.url);
    let r = output_within(&mut c, 300);
    assert_eq!(r.code, 0, "{r:?}");
    assert_same_tree(&s.vol("data"), &t);
}

#[test]
fn a_private_ca_needs_aws_ca_bundle_and_proxies_follow_no_proxy() {
    if !require_root("a_private_ca_needs_aws_ca_bundle_and_proxies_follow_no_proxy") {
        return;
    }
    let s = Setup::new(SetupOpts::default());
    random_file(&s.vol("data").join("f.bin"), 2 * MIB);
    let ca = PrivateCa::new();
    let tls = TlsFront::start(&ca, s.moto.port);
    point_config_at(&s, &tls.endpoint);

    // Not trusted: one attempt, a permanent error that names AWS_CA_BUNDLE.
    let mut b = s.backup_cmd(&[]);
    b.env_remove("AWS_CA_BUNDLE");
    let r = output_within(&mut b, 120);
    assert_ne!(r.code, 0, "{r:?}");
    assert!(r.stderr.contains("AWS_CA_BUNDLE"), "{r:?}");
    assert!(
        !r.stderr.contains("s3_retry"),
        "a certificate error was retried: {r:?}"
    );
    assert!(s.moto.list_keys().is_empty());

    // Trusted through AWS_CA_BUNDLE, and through the proxy HTTPS_PROXY names.
    let proxy = ConnectProxy::start();
    let mut b = s.backup_cmd(&[]);
    b.env("AWS_CA_BUNDLE", &ca.ca_pem)
        .env("HTTPS_PROXY", &proxy.url);
    let r = output_within(&mut b, 120);
    assert_eq!(r.code, 0, "{r:?}");
    let port = tls.endpoint.rsplit(':').next().unwrap().to_string();
    let seen = proxy.targets.lock().unwrap().clone();
    assert!(!seen.is_empty(), "the proxy was not used");
    assert!(
        seen.iter()
            .all(|t| *t == format!("CONNECT 127.0.0.1:{port}")),
        "{seen:?}"
    );

    // NO_PROXY names the host: the restore goes direct.
    let before = seen.len();
    let t = s.fs.path("restored");
    let mut c = restore_cmd(&s, &t);
    c.env("AWS_CA_BUNDLE", &ca.ca_pem)
        .env("HTTPS_PROXY", &proxy.url)
        .env("NO_PROXY", "localhost,127.0.0.1");
    let r = output_within(&mut c, 120);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(proxy.targets.lock().unwrap().len(), before);
    assert_same_tree(&s.vol("data"), &t);
}

#[test]
fn a_body_damaged_on_the_way_is_refused_by_its_checksum_and_sent_again() {
    if !require_root("a_body_damaged_on_the_way_is_refused_by_its_checksum_and_sent_again") {
        return;
    }
    let s = Setup::new(SetupOpts {
        storage_class_chunks: "STANDARD",
        ..Default::default()
    });
    random_file(&s.vol("data").join("f.bin"), 20 * MIB);
    let log = Arc::new(Mutex::new(WireLog::default()));
    let front = checksum_checker(s.moto.port, 1, log.clone());
    point_config_at(&s, &front.endpoint);
    let r = output_within(&mut s.backup_cmd(&[]), 120);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stderr.contains("s3_retry") && r.stderr.contains("BadDigest"),
        "{r:?}"
    );
    {
        let g = log.lock().unwrap();
        assert_eq!(g.refused, 1, "{g:?}");
        assert!(
            g.puts > 3 && g.puts_with_checksum == g.puts,
            "every upload carries a checksum: {g:?}"
        );
        assert!(
            g.creates_declaring >= 1 && g.completes_listing == g.completes,
            "{g:?}"
        );
    }
    let t = s.fs.path("restored");
    let r = output_within(&mut restore_cmd(&s, &t), 120);
    assert_eq!(r.code, 0, "{r:?}");
    assert_same_tree(&s.vol("data"), &t);

    // Without checksums the same damage is stored, and found only at restore time.
    let text = std::fs::read_to_string(&s.cfg).unwrap();
    std::fs::write(
        &s.cfg,
        text.replace("[s3]\n", "[s3]\nchecksum = \"none\"\n"),
    )
    .unwrap();
    let log2 = Arc::new(Mutex::new(WireLog::default()));
    let front2 = checksum_checker(s.moto.port, 1, log2.clone());
    let text = std::fs::read_to_string(&s.cfg).unwrap();
    std::fs::write(&s.cfg, text.replace(&front.endpoint, &front2.endpoint)).unwrap();
    random_file(&s.vol("data").join("g.bin"), 12 * MIB);
    let r = output_within(&mut s.backup_cmd(&["--once"]), 120);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(log2.lock().unwrap().puts_with_checksum, 0);
    let t2 = s.fs.path("restored2");
    let r = output_within(&mut restore_cmd(&s, &t2), 120);
    assert_ne!(r.code, 0, "damage without a checksum went unnoticed: {r:?}");
    assert!(r.stderr.contains("SHA-256"), "{r:?}");
}
