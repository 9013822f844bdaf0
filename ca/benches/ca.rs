//! `cargo bench -p mesh-ca --bench ca`: CSR check + leaf signing per second, beside the raw P-256
//! sign+verify rate of the same machine (one ECDSA verify of the CSR + one ECDSA sign of the leaf
//! is the floor of what the CA does). Prints the ratio; the goal is ≥ 0.5.

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_ASN1, ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair as _,
    UnparsedPublicKey,
};
use criterion::{Criterion, Throughput};
use mesh_ca::{CaOptions, CertificateAuthority, CsrPolicy, SpiffeId, TrustDomain, check_csr};
use std::hint::black_box;
use std::time::{Duration, Instant};

struct Fixture {
    ca: CertificateAuthority,
    csr: String,
    id: SpiffeId,
    raw_key: EcdsaKeyPair,
    rng: SystemRandom,
}

fn fixture() -> Fixture {
    let td = TrustDomain::new("cluster.local").expect("trust domain");
    let ca = CertificateAuthority::generate_root(&CaOptions::new(td)).expect("root");
    let id: SpiffeId = "spiffe://cluster.local/ns/bench/sa/app"
        .parse()
        .expect("id");
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.subject_alt_names = vec![rcgen::SanType::URI(id.to_string().try_into().expect("uri"))];
    let csr = params
        .serialize_request(&key)
        .expect("csr")
        .pem()
        .expect("pem");
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).expect("raw");
    let raw_key =
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref()).expect("raw");
    Fixture {
        ca,
        csr,
        id,
        raw_key,
        rng,
    }
}

fn ca_sign(f: &Fixture) {
    let checked = check_csr(&f.csr, &f.id, &CsrPolicy::default()).expect("check");
    black_box(
        f.ca.sign(&checked, Duration::from_secs(3600))
            .expect("sign"),
    );
}

fn raw_sign_verify(f: &Fixture) {
    let msg = black_box(b"a message the size of a small TBSCertificate, more or less");
    let sig = f.raw_key.sign(&f.rng, msg).expect("sign");
    UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, f.raw_key.public_key().as_ref())
        .verify(msg, sig.as_ref())
        .expect("verify");
}

/// Operations per second of `op`, over about `window`.
fn rate(window: Duration, op: impl Fn()) -> f64 {
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < window {
        op();
        n += 1;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    let f = fixture();
    let mut c = Criterion::default().configure_from_args();
    let mut group = c.benchmark_group("ca");
    group.throughput(Throughput::Elements(1));
    group.bench_function("csr_check_and_sign", |b| b.iter(|| ca_sign(&f)));
    group.bench_function("raw_p256_sign_verify", |b| b.iter(|| raw_sign_verify(&f)));
    group.finish();
    c.final_summary();

    // The ratio, measured back to back so both see the same machine load.
    let window = Duration::from_secs(2);
    let (mut ca, mut raw) = (0.0, 0.0);
    for _ in 0..3 {
        ca += rate(window, || ca_sign(&f));
        raw += mesh_ca::raw_p256_sign_verify_rate(window);
    }
    let ratio = ca / raw;
    println!(
        "ca: csr check+sign {:.0}/s, raw P-256 sign+verify {:.0}/s, ratio {ratio:.2} (goal >= 0.5)",
        ca / 3.0,
        raw / 3.0
    );
}
