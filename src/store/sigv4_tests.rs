//! The signer against published vectors, byte for byte: requests of the AWS SigV4 test
//! suite (credentials AKIDEXAMPLE, 2015-08-30T12:36:00Z, us-east-1, service `service`),
//! the IAM example of the SigV4 guide, and the S3 header-signing examples of the S3
//! API reference (AKIAIOSFODNN7EXAMPLE, 2013-05-24). Path-normalisation cases of the
//! suite are left out: S3 signs the path as sent and never normalises `.`/`..`.

use super::*;
use crate::store::creds::{Provider, Signer};

const SUITE_KEY: (&str, &str) = ("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY");
const SUITE_DATE: &str = "20150830T123600Z";
const S3_KEY: (&str, &str) = (
    "AKIAIOSFODNN7EXAMPLE",
    "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
);
const S3_DATE: &str = "20130524T000000Z";

fn sign(
    key: (&str, &str),
    date: &str,
    service: &str,
    method: &str,
    url: &str,
    extra: &[(&str, &str)],
    payload_hash: &str,
) -> String {
    let url = Url::parse(url).unwrap();
    let mut headers = vec![
        ("Host".to_string(), host_header(&url)),
        ("X-Amz-Date".to_string(), date.to_string()),
    ];
    headers.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let scope = Scope {
        amz_date: date,
        region: "us-east-1",
        service,
    };
    authorization(key.0, key.1, &scope, method, &url, &headers, payload_hash)
}

fn suite(method: &str, path: &str, extra: &[(&str, &str)], body: &str) -> String {
    let hash = hex(&Sha256::digest(body.as_bytes()));
    let auth = sign(
        SUITE_KEY,
        SUITE_DATE,
        "service",
        method,
        &format!("https://example.amazonaws.com{path}"),
        extra,
        &hash,
    );
    auth.rsplit("Signature=").next().unwrap().to_string()
}

/// name, method, path and query, extra headers, body, signature.
type Case<'a> = (
    &'a str,
    &'a str,
    &'a str,
    Vec<(&'a str, &'a str)>,
    &'a str,
    &'a str,
);

#[test]
fn the_sigv4_test_suite() {
    let unreserved = "-._~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let token = "AQoDYXdzEPT//////////wEXAMPLEtc764bNrC9SAPBSM22wDOk4x4HIZ8j4FZTwdQWLWsKWHGBuFqwAeMicRXmxfpSPfIeoIYRqTflfKD8YUuwthAx7mSEI/qkPpKPi/kMcGdQrmGdeehM4IC1NtBmUpp2wUE8phUZampKsburEDy0KPkyQDYwT7WZ0wq5VSXDvp75YU9HFvlRd8Tx6q6fE8YQcHNVXAkiY9q6d+xo0rKwT38xVqr7ZD0u0iPPkUL64lIZbqBAz+scqKmlzm8FDrypNC9Yjc8fPOLn9FX9KSYvKTr4rvx3iSIlTJabIQwj2ICCR/oLxBA==";
    let q_unreserved = format!("/?{unreserved}={unreserved}");
    let p_unreserved = format!("/{unreserved}");
    let cases: Vec<Case<'_>> = vec![
        (
            "get-vanilla",
            "GET",
            "/",
            vec![],
            "",
            "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31",
        ),
        (
            "get-vanilla-empty-query-key",
            "GET",
            "/?Param1=value1",
            vec![],
            "",
            "a67d582fa61cc504c4bae71f336f98b97f1ea3c7a6bfe1b6e45aec72011b9aeb",
        ),
        (
            "get-vanilla-query-order-key-case",
            "GET",
            "/?Param2=value2&Param1=value1",
            vec![],
            "",
            "b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500",
        ),
        (
            "get-vanilla-query-unreserved",
            "GET",
            &q_unreserved,
            vec![],
            "",
            "9c3e54bfcdf0b19771a7f523ee5669cdf59bc7cc0884027167c21bb143a40197",
        ),
        (
            "get-vanilla-utf8-query",
            "GET",
            "/?\u{1234}=bar",
            vec![],
            "",
            "2cdec8eed098649ff3a119c94853b13c643bcf08f8b0a1d91e12c9027818dd04",
        ),
        (
            "get-unreserved",
            "GET",
            &p_unreserved,
            vec![],
            "",
            "07ef7494c76fa4850883e2b006601f940f8a34d404d0cfa977f52a65bbf5f24f",
        ),
        (
            "get-utf8",
            "GET",
            "/\u{1234}",
            vec![],
            "",
            "8318018e0b0f223aa2bbf98705b62bb787dc9c0e678f255a891fd03141be5d85",
        ),
        (
            "get-space",
            "GET",
            "/example space/",
            vec![],
            "",
            "652487583200325589f1fba4c7e578f72c47cb61beeca81406b39ddec1366741",
        ),
        (
            "get-header-key-duplicate",
            "GET",
            "/",
            vec![
                ("My-Header1", "value2"),
                ("My-Header1", "value2"),
                ("My-Header1", "value1"),
            ],
            "",
            "c9d5ea9f3f72853aea855b47ea873832890dbdd183b4468f858259531a5138ea",
        ),
        (
            "get-header-value-order",
            "GET",
            "/",
            vec![
                ("My-Header1", "value4"),
                ("My-Header1", "value1"),
                ("My-Header1", "value3"),
                ("My-Header1", "value2"),
            ],
            "",
            "08c7e5a9acfcfeb3ab6b2185e75ce8b1deb5e634ec47601a50643f830c755c01",
        ),
        (
            "get-header-value-trim",
            "GET",
            "/",
            vec![("My-Header1", " value1"), ("My-Header2", " \"a   b   c\"")],
            "",
            "acc3ed3afb60bb290fc8d2dd0098b9911fcaa05412b367055dee359757a9c736",
        ),
        (
            "post-vanilla",
            "POST",
            "/",
            vec![],
            "",
            "5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b",
        ),
        (
            "post-vanilla-query",
            "POST",
            "/?Param1=value1",
            vec![],
            "",
            "28038455d6de14eafc1f9222cf5aa6f1a96197d7deb8263271d420d138af7f11",
        ),
        (
            "post-header-value-case",
            "POST",
            "/",
            vec![("My-Header1", "VALUE1")],
            "",
            "cdbc9802e29d2942e5e10b5bccfdd67c5f22c7c4e8ae67b53629efa58b974b7d",
        ),
        (
            "post-x-www-form-urlencoded",
            "POST",
            "/",
            vec![("Content-Type", "application/x-www-form-urlencoded")],
            "Param1=value1",
            "ff11897932ad3f4e8b18135d722051e5ac45fc38421b1da7b9d196a0fe09473a",
        ),
        (
            "post-sts-header-before",
            "POST",
            "/",
            vec![("X-Amz-Security-Token", token)],
            "",
            "85d96828115b5dc0cfc3bd16ad9e210dd772bbebba041836c64533a82be05ead",
        ),
    ];
    for (name, method, path, extra, body, want) in cases {
        assert_eq!(suite(method, path, &extra, body), want, "{name}");
    }
}

#[test]
fn the_iam_example_of_the_sigv4_guide() {
    let url = Url::parse("https://iam.amazonaws.com/?Action=ListUsers&Version=2010-05-08").unwrap();
    let headers = vec![
        (
            "Content-Type".to_string(),
            "application/x-www-form-urlencoded; charset=utf-8".to_string(),
        ),
        ("Host".to_string(), "iam.amazonaws.com".to_string()),
        ("X-Amz-Date".to_string(), SUITE_DATE.to_string()),
    ];
    let (canonical, signed) = canonical_request("GET", &url, &headers, EMPTY_SHA256);
    assert_eq!(
        canonical,
        "GET\n/\nAction=ListUsers&Version=2010-05-08\n\
         content-type:application/x-www-form-urlencoded; charset=utf-8\nhost:iam.amazonaws.com\n\
         x-amz-date:20150830T123600Z\n\ncontent-type;host;x-amz-date\n\
         e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    );
    assert_eq!(signed, "content-type;host;x-amz-date");
    let scope = Scope {
        amz_date: SUITE_DATE,
        region: "us-east-1",
        service: "iam",
    };
    assert_eq!(
        string_to_sign(&scope, &canonical),
        "AWS4-HMAC-SHA256\n20150830T123600Z\n20150830/us-east-1/iam/aws4_request\n\
         f536975d06c0309214f805bb90ccff089219ecd68b2577efef23edd43b7e1a59"
    );
    assert_eq!(
        hex(&signing_key(SUITE_KEY.1, &scope)),
        "c4afb1cc5771d871763a393e44b703571b55cc28424d1a5e86da6ed3c154a4b9"
    );
    assert!(authorization(
        SUITE_KEY.0,
        SUITE_KEY.1,
        &scope,
        "GET",
        &url,
        &headers,
        EMPTY_SHA256
    )
    .ends_with("Signature=5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7"));
}

#[test]
fn the_s3_header_signing_examples() {
    let s3 = |method: &str, url: &str, extra: &[(&str, &str)], hash: &str| {
        let mut e = extra.to_vec();
        e.push(("x-amz-content-sha256", hash));
        sign(S3_KEY, S3_DATE, "s3", method, url, &e, hash)
    };
    // GET Object with a range.
    assert_eq!(
        s3(
            "GET",
            "https://examplebucket.s3.amazonaws.com/test.txt",
            &[("Range", "bytes=0-9")],
            EMPTY_SHA256
        ),
        "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, \
         SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, \
         Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
    );
    // PUT Object: a `$` in the key, a storage class, a signed body.
    let body_hash = hex(&Sha256::digest(b"Welcome to Amazon S3."));
    assert!(s3(
        "PUT",
        "https://examplebucket.s3.amazonaws.com/test$file.text",
        &[
            ("Date", "Fri, 24 May 2013 00:00:00 GMT"),
            ("x-amz-storage-class", "REDUCED_REDUNDANCY")
        ],
        &body_hash
    )
    .ends_with("Signature=98ad721746da40c64f1a55b78f14c238d841ea1380cd77a1b5971af0ece108bd"));
    // GET Bucket lifecycle: a sub-resource without a value.
    assert!(s3(
        "GET",
        "https://examplebucket.s3.amazonaws.com/?lifecycle",
        &[],
        EMPTY_SHA256
    )
    .ends_with("Signature=fea454ca298b7da1c68078a5d1bdbfbbe0d65c699e0f91ac7a200a0136783543"));
    // GET Bucket (list objects) with parameters.
    assert!(s3(
        "GET",
        "https://examplebucket.s3.amazonaws.com/?max-keys=2&prefix=J",
        &[],
        EMPTY_SHA256
    )
    .ends_with("Signature=34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7"));
}

#[test]
fn the_signer_signs_what_it_sends() {
    // Everything the signer adds is signed, the session token included, and the
    // Authorization header is the one `authorization` computes for those headers.
    let p = Provider::fixed("AKIDEXAMPLE", "secret-secret-secret", Some("tok/en+1=")).unwrap();
    let s = Signer::new(p, "eu-west-1", "s3");
    let url = Url::parse("http://127.0.0.1:9000/bkt/p/a%20b?uploadId=x%2Fy&partNumber=3").unwrap();
    let h = s
        .sign(
            "PUT",
            &url,
            &[("x-amz-checksum-crc32c", "AAAAAA==".into())],
            UNSIGNED_PAYLOAD,
        )
        .unwrap();
    let get = |n: &str| {
        h.iter()
            .find(|(k, _)| k == n)
            .map(|(_, v)| v.clone())
            .unwrap()
    };
    assert_eq!(get("host"), "127.0.0.1:9000");
    assert_eq!(get("x-amz-security-token"), "tok/en+1=");
    let auth = get("authorization");
    assert!(auth.contains("/eu-west-1/s3/aws4_request"), "{auth}");
    assert!(auth.contains(
        "SignedHeaders=host;x-amz-checksum-crc32c;x-amz-content-sha256;x-amz-date;x-amz-security-token,"
    ));
    let date = get("x-amz-date");
    let unsigned: Vec<(String, String)> = h
        .iter()
        .filter(|(k, _)| k != "authorization")
        .cloned()
        .collect();
    let scope = Scope {
        amz_date: &date,
        region: "eu-west-1",
        service: "s3",
    };
    assert_eq!(
        authorization(
            "AKIDEXAMPLE",
            "secret-secret-secret",
            &scope,
            "PUT",
            &url,
            &unsigned,
            UNSIGNED_PAYLOAD
        ),
        auth
    );
    let (canonical, _) = canonical_request("PUT", &url, &unsigned, UNSIGNED_PAYLOAD);
    assert!(
        canonical.starts_with("PUT\n/bkt/p/a%20b\npartNumber=3&uploadId=x%2Fy\n"),
        "{canonical}"
    );
}
