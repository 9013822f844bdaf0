//! The CA as a user of the library sees it: CSRs refused for every reason, issued certificates
//! checked by the real `openssl` binary, CAs imported and restored.

#![allow(clippy::unwrap_used)] // a panic in a test is a failed assertion with a line number

use mesh_ca::{
    CaError, CaOptions, CertificateAuthority, CsrError, CsrPolicy, KeyEncryptionKey, SpiffeId,
    TrustDomain, check_csr,
};
use rcgen::{
    BasicConstraints, CertificateParams, CustomExtension, DistinguishedName, DnType, IsCa, KeyPair,
    KeyUsagePurpose, SanType,
};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

fn td() -> TrustDomain {
    TrustDomain::new("cluster.local").unwrap()
}

fn me() -> SpiffeId {
    "spiffe://cluster.local/ns/default/sa/reviews"
        .parse()
        .unwrap()
}

fn root() -> CertificateAuthority {
    CertificateAuthority::generate_root(&CaOptions::new(td())).unwrap()
}

fn uri(s: &str) -> SanType {
    SanType::URI(s.try_into().unwrap())
}

/// Params for a well-formed CSR for `me()`, to be spoiled one way at a time.
fn good_params() -> CertificateParams {
    let mut p = CertificateParams::default();
    p.distinguished_name = DistinguishedName::new();
    p.subject_alt_names = vec![uri(&me().to_string())];
    p
}

fn csr_with(params: CertificateParams, key: &KeyPair) -> String {
    params.serialize_request(key).unwrap().pem().unwrap()
}

fn p256() -> KeyPair {
    KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap()
}

fn good_csr() -> String {
    csr_with(good_params(), &p256())
}

fn reencode(der: Vec<u8>, tag: &str) -> String {
    pem::encode(&pem::Pem::new(tag, der))
}

fn csr_der(pem_text: &str) -> Vec<u8> {
    pem::parse(pem_text).unwrap().into_contents()
}

#[test]
fn a_good_csr_is_signed_for_the_proven_identity() {
    let ca = root();
    for alg in [
        &rcgen::PKCS_ECDSA_P256_SHA256,
        &rcgen::PKCS_ECDSA_P384_SHA384,
        &rcgen::PKCS_ED25519,
    ] {
        let key = KeyPair::generate_for(alg).unwrap();
        let checked = check_csr(&csr_with(good_params(), &key), &me(), &CsrPolicy::default())
            .unwrap_or_else(|e| panic!("{alg:?}: {e}"));
        let issued = ca.sign(&checked, Duration::from_secs(600)).unwrap();
        assert_eq!(issued.leaf.spiffe_id(), Some(me()));
        assert_eq!(issued.leaf.uri_sans, vec![me().to_string()]);
        assert!(!issued.leaf.is_ca);
        assert!(issued.leaf.is_signed_by(ca.root()));
        assert_eq!(issued.issuer_fingerprint, ca.root().fingerprint);
        // The AKI names the issuer's SKI.
        assert!(issued.leaf.aki.is_some());
        assert_eq!(issued.leaf.aki, ca.root().ski);
        assert!(issued.leaf.ski.is_some());
    }
}

/// The CSR's subject is ignored (identity.proto, as SPIRE and Istio): a common name naming
/// someone else neither refuses the CSR nor reaches the certificate, whose only identity is the
/// proven SPIFFE ID.
#[test]
fn the_csr_subject_is_ignored() {
    let ca = root();
    let mut p = good_params();
    p.distinguished_name.push(DnType::CommonName, "admin");
    p.distinguished_name
        .push(DnType::OrganizationName, "someone else");
    let checked = check_csr(&csr_with(p, &p256()), &me(), &CsrPolicy::default()).unwrap();
    let issued = ca.sign(&checked, Duration::from_secs(600)).unwrap();
    assert_eq!(issued.leaf.uri_sans, vec![me().to_string()]);
    let der = pem::parse(&issued.chain_pem).unwrap().into_contents();
    let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
    let subject = cert.subject().to_string();
    assert!(
        !subject.contains("admin") && !subject.contains("someone else"),
        "{subject}"
    );
}

/// Which refusal a case expects.
type Expect = fn(&CsrError) -> bool;

/// At least twenty ways to ask for what the caller did not prove; each has its own refusal.
#[test]
fn bad_csrs_are_each_refused_with_their_own_error() {
    let policy = CsrPolicy::default();
    let key = p256();
    let mut cases: Vec<(&str, String, Expect)> = Vec::new();

    let mut p = good_params();
    p.subject_alt_names = vec![uri("spiffe://cluster.local/ns/default/sa/ratings")];
    cases.push(("foreign identity", csr_with(p, &key), |e| {
        matches!(e, CsrError::IdentityMismatch { .. })
    }));

    let mut p = good_params();
    p.subject_alt_names = vec![uri("spiffe://evil.example/ns/default/sa/reviews")];
    cases.push(("wrong trust domain", csr_with(p, &key), |e| {
        matches!(e, CsrError::TrustDomainMismatch { .. })
    }));

    let mut p = good_params();
    p.subject_alt_names
        .push(SanType::DnsName("reviews.default.svc".try_into().unwrap()));
    cases.push(("extra DNS SAN", csr_with(p, &key), |e| {
        matches!(e, CsrError::DnsSan(_))
    }));

    let mut p = good_params();
    p.subject_alt_names
        .push(SanType::IpAddress("10.0.0.1".parse().unwrap()));
    cases.push(("extra IP SAN", csr_with(p, &key), |e| {
        matches!(e, CsrError::IpSan)
    }));

    let mut p = good_params();
    p.subject_alt_names
        .push(SanType::Rfc822Name("a@b.c".try_into().unwrap()));
    cases.push(("extra email SAN", csr_with(p, &key), |e| {
        matches!(e, CsrError::EmailSan(_))
    }));

    let mut p = good_params();
    p.subject_alt_names.push(SanType::OtherName((
        vec![1, 3, 6, 1, 4, 1, 311, 20, 2, 3],
        rcgen::OtherNameValue::Utf8String("admin@corp".into()),
    )));
    cases.push(("extra otherName SAN", csr_with(p, &key), |e| {
        matches!(e, CsrError::OtherSan("otherName"))
    }));

    let mut p = good_params();
    p.subject_alt_names
        .push(uri("spiffe://cluster.local/ns/default/sa/ratings"));
    cases.push(("two URI SANs", csr_with(p, &key), |e| {
        matches!(e, CsrError::MultipleUriSans(2))
    }));

    let mut p = good_params();
    p.subject_alt_names.clear();
    cases.push(("no SAN", csr_with(p, &key), |e| {
        matches!(e, CsrError::MissingUriSan)
    }));

    let mut p = good_params();
    p.subject_alt_names = vec![uri("https://reviews.example.com/")];
    cases.push(("non-SPIFFE URI", csr_with(p, &key), |e| {
        matches!(e, CsrError::InvalidSpiffeId(..))
    }));

    let mut p = good_params();
    p.subject_alt_names = vec![uri("spiffe://cluster.local/workload/reviews")];
    cases.push(("SPIFFE ID of the wrong shape", csr_with(p, &key), |e| {
        matches!(e, CsrError::InvalidSpiffeId(..))
    }));

    let mut p = good_params();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    cases.push(("CA bit", csr_with(p, &key), |e| {
        matches!(e, CsrError::CaRequested)
    }));

    let mut p = good_params();
    p.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyCertSign,
    ];
    cases.push(("keyCertSign usage", csr_with(p, &key), |e| {
        matches!(e, CsrError::CaKeyUsageRequested)
    }));

    let mut p = good_params();
    p.custom_extensions = vec![CustomExtension::from_oid_content(
        &[1, 3, 6, 1, 4, 1, 99999, 1],
        vec![5, 0],
    )];
    cases.push(("unknown extension", csr_with(p, &key), |e| {
        matches!(e, CsrError::UnsupportedExtension(_))
    }));

    let p521 = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P521_SHA512).unwrap();
    cases.push(("P-521 key", csr_with(good_params(), &p521), |e| {
        matches!(e, CsrError::UnsupportedKey(..))
    }));

    let rsa = KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048).unwrap();
    cases.push((
        "RSA key while RSA is off",
        csr_with(good_params(), &rsa),
        |e| matches!(e, CsrError::UnsupportedKey(..)),
    ));

    let mut der = csr_der(&good_csr());
    let last = der.len() - 1;
    der[last] ^= 0x55;
    cases.push(
        ("bad signature", reencode(der, "CERTIFICATE REQUEST"), |e| {
            matches!(e, CsrError::BadSignature)
        }),
    );

    // Same public key, but the signed body was changed after signing (identity swapped in).
    let honest = csr_with(good_params(), &key);
    let mut forged_der = csr_der(&honest);
    let needle = b"sa/reviews";
    let at = forged_der
        .windows(needle.len())
        .position(|w| w == needle)
        .unwrap();
    forged_der[at + 3..at + 10].copy_from_slice(b"ratings");
    cases.push((
        "body altered after signing",
        reencode(forged_der, "CERTIFICATE REQUEST"),
        |e| matches!(e, CsrError::BadSignature),
    ));

    cases.push(("garbage PEM", "hello, CA".to_string(), |e| {
        matches!(e, CsrError::NotPem(_))
    }));
    cases.push(("empty input", String::new(), |e| {
        matches!(e, CsrError::Empty)
    }));
    cases.push(("whitespace only", " \n\t ".to_string(), |e| {
        matches!(e, CsrError::Empty)
    }));
    cases.push(("huge input", "A".repeat(1 << 20), |e| {
        matches!(e, CsrError::TooLarge { .. })
    }));
    cases.push((
        "PEM of garbage bytes",
        reencode(vec![0x30, 0x82, 0xff, 0xff, 1, 2, 3], "CERTIFICATE REQUEST"),
        |e| matches!(e, CsrError::Malformed(_)),
    ));

    let der = csr_der(&good_csr());
    cases.push((
        "truncated DER",
        reencode(der[..der.len() / 2].to_vec(), "CERTIFICATE REQUEST"),
        |e| matches!(e, CsrError::Malformed(_)),
    ));
    let mut trailing = csr_der(&good_csr());
    trailing.extend_from_slice(&[0, 0, 0]);
    cases.push((
        "trailing bytes",
        reencode(trailing, "CERTIFICATE REQUEST"),
        |e| matches!(e, CsrError::Malformed(_)),
    ));

    let ca = root();
    cases.push(("a certificate instead of a CSR", ca.root().to_pem(), |e| {
        matches!(e, CsrError::WrongPemType(_))
    }));
    cases.push(
        ("a private key instead of a CSR", key.serialize_pem(), |e| {
            matches!(e, CsrError::WrongPemType(_))
        }),
    );
    cases.push(("two CSRs", format!("{}{}", good_csr(), good_csr()), |e| {
        matches!(e, CsrError::MultiplePemBlocks(2))
    }));

    assert!(cases.len() >= 20, "only {} cases", cases.len());
    let mut messages = std::collections::HashSet::new();
    for (name, csr, expected) in &cases {
        let err = check_csr(csr, &me(), &policy).expect_err(name);
        assert!(expected(&err), "{name}: wrong refusal: {err:?}");
        messages.insert(std::mem::discriminant(&err));
        // The message is one line a person can act on.
        assert!(!err.to_string().contains('\n'), "{name}: {err}");
        // PERMISSION_DENIED (asks for more than was proven) or INVALID_ARGUMENT (not a usable
        // CSR), as identity.proto says.
        let more = [
            "foreign identity",
            "CA bit",
            "keyCertSign usage",
            "unknown extension",
        ];
        let broken = ["bad signature", "garbage PEM", "empty input", "P-521 key"];
        if more.contains(name) {
            assert!(err.asks_for_more(), "{name}: {err:?}");
        }
        if broken.contains(name) {
            assert!(!err.asks_for_more(), "{name}: {err:?}");
        }
    }
    assert!(
        messages.len() >= 20,
        "only {} distinct refusals",
        messages.len()
    );
}

#[test]
fn rsa_is_accepted_only_when_the_policy_allows_it_and_gets_key_encipherment() {
    let rsa = KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048).unwrap();
    let csr = csr_with(good_params(), &rsa);
    let checked = check_csr(&csr, &me(), &CsrPolicy { allow_rsa: true }).unwrap();
    let issued = root().sign(&checked, Duration::ZERO).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let leaf = write(dir.path(), "leaf.pem", &issued.leaf.to_pem());
    let text = openssl(&["x509", "-in", &leaf, "-noout", "-ext", "keyUsage"]).unwrap();
    assert!(text.contains("Key Encipherment"), "{text}");
}

#[test]
fn ttl_is_clamped_and_not_before_is_backdated() {
    let ca = root();
    let checked = check_csr(&good_csr(), &me(), &CsrPolicy::default()).unwrap();
    let now = time::OffsetDateTime::now_utc().unix_timestamp();

    let huge = ca
        .sign(&checked, Duration::from_secs(365 * 24 * 3600))
        .unwrap();
    let max = ca.policy().max_ttl.as_secs() as i64;
    assert!(
        (huge.leaf.not_after - now - max).abs() <= 5,
        "clamped to the max TTL"
    );

    let default = ca.sign(&checked, Duration::ZERO).unwrap();
    let def = ca.policy().default_ttl.as_secs() as i64;
    assert!(
        (default.leaf.not_after - now - def).abs() <= 5,
        "zero means the default TTL"
    );

    assert!(
        default.leaf.not_before <= now - 30,
        "backdated for clock skew"
    );

    // Serials are 127-bit random: distinct, positive, and always exactly 16 bytes (a random
    // leading 0x00 byte used to be dropped now and then, a leading 0x80+ byte needed a sign
    // byte). 200 serials: a serial of the wrong length turned up in about 1 run of 25 with 20.
    let serials: std::collections::HashSet<_> = (0..200)
        .map(|_| ca.sign(&checked, Duration::ZERO).unwrap().leaf.serial_hex)
        .collect();
    assert_eq!(serials.len(), 200);
    assert!(
        serials.iter().all(|s| s.len() == 32
            && u8::from_str_radix(&s[..2], 16).is_ok_and(|b| (1..0x80).contains(&b))),
        "{serials:?}"
    );
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.to_string_lossy().into_owned()
}

/// Runs the real `openssl`; Ok(stdout) on success, Err(stdout+stderr) on failure.
fn openssl(args: &[&str]) -> Result<String, String> {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("the openssl binary must be installed (apt-get install -y openssl)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        Ok(text)
    } else {
        Err(text)
    }
}

#[test]
fn openssl_verifies_issued_certificates_against_the_bundle_only() {
    let ca = root();
    let other = root();
    let checked = check_csr(&good_csr(), &me(), &CsrPolicy::default()).unwrap();
    let issued = ca.sign(&checked, Duration::from_secs(3600)).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let leaf = write(dir.path(), "leaf.pem", &issued.chain_pem);
    let bundle = write(dir.path(), "bundle.pem", &ca.bundle().to_pem());
    let foreign = write(dir.path(), "other.pem", &other.bundle().to_pem());

    let ok = openssl(&["verify", "-CAfile", &bundle, &leaf]).expect("verify against our bundle");
    assert!(ok.contains(": OK"), "{ok}");
    let refused = openssl(&["verify", "-CAfile", &foreign, &leaf]).expect_err("another CA");
    assert!(
        refused.contains("unable to get local issuer certificate"),
        "{refused}"
    );

    let san = openssl(&["x509", "-in", &leaf, "-noout", "-ext", "subjectAltName"]).unwrap();
    let names: Vec<&str> = san
        .lines()
        .skip(1)
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    assert_eq!(names, vec![format!("URI:{}", me())], "{san}");

    let text = openssl(&["x509", "-in", &leaf, "-noout", "-text"]).unwrap();
    assert!(
        text.contains("TLS Web Server Authentication, TLS Web Client Authentication"),
        "{text}"
    );
    assert!(text.contains("CA:FALSE"), "{text}");
    assert!(text.contains("Digital Signature"), "{text}");
    assert!(
        !text.contains("Key Encipherment"),
        "no keyEncipherment for EC keys: {text}"
    );
    assert!(text.contains("X509v3 Subject Key Identifier"), "{text}");
    assert!(text.contains("X509v3 Authority Key Identifier"), "{text}");
}

#[test]
fn intermediate_chains_verify_with_openssl_and_the_bundle_holds_only_the_root() {
    let offline_root = root();
    let inter = offline_root
        .generate_intermediate(&CaOptions::new(td()))
        .unwrap();
    assert_eq!(inter.root().fingerprint, offline_root.root().fingerprint);
    let checked = check_csr(&good_csr(), &me(), &CsrPolicy::default()).unwrap();
    let issued = inter.sign(&checked, Duration::ZERO).unwrap();
    assert_eq!(issued.issuer_fingerprint, inter.signing_cert().fingerprint);

    let dir = tempfile::tempdir().unwrap();
    let leaf = write(dir.path(), "leaf.pem", &issued.leaf.to_pem());
    let chain: String = mesh_ca::cert::certs_from_pem(&issued.chain_pem)
        .unwrap()
        .iter()
        .skip(1)
        .map(|d| mesh_ca::cert::der_to_pem(d))
        .collect();
    assert!(!chain.is_empty(), "the chain carries the intermediate");
    let untrusted = write(dir.path(), "inter.pem", &chain);
    let bundle = write(dir.path(), "bundle.pem", &inter.bundle().to_pem());
    assert_eq!(inter.bundle().roots().len(), 1);
    openssl(&[
        "verify",
        "-CAfile",
        &bundle,
        "-untrusted",
        &untrusted,
        &leaf,
    ])
    .unwrap();
    openssl(&["verify", "-CAfile", &untrusted, &leaf]).expect_err("an intermediate is no anchor");
}

#[test]
fn a_ca_survives_sealing_and_restoring_and_keeps_signing_under_the_same_root() {
    let kek = KeyEncryptionKey::generate().unwrap();
    let ca = root();
    let sealed = ca.sealed_key(&kek).unwrap();
    let pkcs8_marker = b"PRIVATE KEY";
    assert!(
        !sealed
            .windows(pkcs8_marker.len())
            .any(|w| w == pkcs8_marker)
    );

    let restored = CertificateAuthority::from_sealed(&ca.chain_pem(), &sealed, &kek, td()).unwrap();
    assert_eq!(restored.root().fingerprint, ca.root().fingerprint);
    let checked = check_csr(&good_csr(), &me(), &CsrPolicy::default()).unwrap();
    let issued = restored.sign(&checked, Duration::ZERO).unwrap();
    assert!(issued.leaf.is_signed_by(ca.root()));

    let wrong = KeyEncryptionKey::generate().unwrap();
    let err =
        CertificateAuthority::from_sealed(&ca.chain_pem(), &sealed, &wrong, td()).unwrap_err();
    assert!(matches!(err, CaError::Sealed(_)), "{err}");
    assert!(
        !format!("{ca:?}").contains("PRIVATE"),
        "Debug hides the key"
    );
}

#[test]
fn importing_a_ca_checks_key_chain_and_ca_bit() {
    // An operator's own root, made by openssl: imported and used.
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("root.key");
    let cert = dir.path().join("root.pem");
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        key.to_str().unwrap(),
        "-out",
        cert.to_str().unwrap(),
        "-days",
        "30",
        "-subj",
        "/O=corp/CN=corp mesh root",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ])
    .unwrap();
    let cert_pem = std::fs::read_to_string(&cert).unwrap();
    let key_pem = std::fs::read_to_string(&key).unwrap();
    let imported = CertificateAuthority::from_pem(&cert_pem, &key_pem, td()).unwrap();
    assert_eq!(imported.root().subject, "O=corp, CN=corp mesh root");
    let checked = check_csr(&good_csr(), &me(), &CsrPolicy::default()).unwrap();
    let issued = imported.sign(&checked, Duration::ZERO).unwrap();
    let leaf = write(dir.path(), "leaf.pem", &issued.chain_pem);
    openssl(&["verify", "-CAfile", cert.to_str().unwrap(), &leaf]).unwrap();

    // A key that is not the certificate's.
    let other_key = p256().serialize_pem();
    let err = CertificateAuthority::from_pem(&cert_pem, &other_key, td()).unwrap_err();
    assert!(matches!(err, CaError::KeyMismatch { .. }), "{err}");

    // A leaf is not a CA.
    let err = CertificateAuthority::from_pem(&issued.leaf.to_pem(), &key_pem, td()).unwrap_err();
    assert!(matches!(err, CaError::NotCa { .. }), "{err}");

    // An intermediate imported with its root: signs, chains to that root.
    let inter = root().generate_intermediate(&CaOptions::new(td())).unwrap();
    let kek = KeyEncryptionKey::generate().unwrap();
    let again = CertificateAuthority::from_sealed(
        &inter.chain_pem(),
        &inter.sealed_key(&kek).unwrap(),
        &kek,
        td(),
    )
    .unwrap();
    assert_eq!(
        again.signing_cert().fingerprint,
        inter.signing_cert().fingerprint
    );
    assert_eq!(again.root().fingerprint, inter.root().fingerprint);

    // An intermediate without its root cannot be anchored.
    let inter_only = inter.signing_cert().to_pem();
    let err = CertificateAuthority::from_sealed(
        &inter_only,
        &inter.sealed_key(&kek).unwrap(),
        &kek,
        td(),
    )
    .unwrap_err();
    assert!(matches!(err, CaError::NoRoot(_)), "{err}");

    // Garbage and the wrong PEM type are named.
    assert!(CertificateAuthority::from_pem("nope", &key_pem, td()).is_err());
    let err = CertificateAuthority::from_pem(&key_pem, &key_pem, td()).unwrap_err();
    assert!(err.to_string().contains("PRIVATE KEY"), "{err}");
}

#[test]
fn a_bundle_holds_several_roots_and_finds_the_anchor_of_a_chain() {
    let old = root();
    let new = root();
    let mut bundle = old.bundle();
    assert!(bundle.add(new.root().clone()).unwrap());
    assert!(!bundle.add(new.root().clone()).unwrap(), "no duplicates");
    assert_eq!(bundle.roots().len(), 2);
    let parsed = mesh_ca::TrustBundle::from_pem(&bundle.to_pem()).unwrap();
    assert_eq!(parsed.fingerprints(), bundle.fingerprints());

    let checked = check_csr(&good_csr(), &me(), &CsrPolicy::default()).unwrap();
    let leaf = new.sign(&checked, Duration::ZERO).unwrap().leaf;
    assert_eq!(
        bundle
            .anchor_of(std::slice::from_ref(&leaf))
            .unwrap()
            .fingerprint,
        new.root().fingerprint
    );
    assert!(bundle.remove(&new.root().fingerprint));
    assert!(bundle.anchor_of(std::slice::from_ref(&leaf)).is_none());

    // A leaf is refused as a root.
    assert!(bundle.add(leaf).is_err());
    assert!(mesh_ca::TrustBundle::from_pem("").is_err());
}
