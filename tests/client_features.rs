//! The optional client features reach librdkafka: with `gssapi` a client for SASL GSSAPI
//! (Kerberos) can be created, with `curl` one that fetches OAUTHBEARER tokens from an OIDC
//! endpoint; without a feature librdkafka refuses that client, naming what it lacks. No broker
//! is contacted: creating the client is where librdkafka checks what it was built with.

use rdkafka::consumer::BaseConsumer;
use rdkafka::error::KafkaResult;
use rdkafka::ClientConfig;

fn client(props: &[(&str, &str)]) -> KafkaResult<BaseConsumer> {
    let mut cfg = ClientConfig::new();
    cfg.set("bootstrap.servers", "127.0.0.1:1")
        .set("group.id", "client-features");
    for (k, v) in props {
        cfg.set(*k, *v);
    }
    cfg.create()
}

const GSSAPI: &[(&str, &str)] = &[
    ("security.protocol", "sasl_plaintext"),
    ("sasl.mechanisms", "GSSAPI"),
    ("sasl.kerberos.service.name", "kafka"),
    // No ticket is needed to create the client; `true` stands in for kinit.
    ("sasl.kerberos.kinit.cmd", "true"),
];

const OIDC: &[(&str, &str)] = &[
    ("security.protocol", "sasl_plaintext"),
    ("sasl.mechanisms", "OAUTHBEARER"),
    ("sasl.oauthbearer.method", "oidc"),
    ("sasl.oauthbearer.client.id", "redrive"),
    ("sasl.oauthbearer.client.secret", "s3cr3t"),
    (
        "sasl.oauthbearer.token.endpoint.url",
        "https://127.0.0.1:1/token",
    ),
];

#[cfg(feature = "gssapi")]
#[test]
fn gssapi_clients_can_be_created() {
    client(GSSAPI).expect("a GSSAPI client with the gssapi feature");
}

#[cfg(not(feature = "gssapi"))]
#[test]
fn gssapi_clients_are_refused_without_the_feature() {
    let err = client(GSSAPI)
        .err()
        .expect("refused without the gssapi feature");
    assert!(err.to_string().contains("GSSAPI"), "{err}");
}

#[cfg(feature = "curl")]
#[test]
fn oidc_clients_can_be_created() {
    client(OIDC).expect("an OIDC client with the curl feature");
}

#[cfg(not(feature = "curl"))]
#[test]
fn oidc_clients_are_refused_without_the_feature() {
    let err = client(OIDC)
        .err()
        .expect("refused without the curl feature");
    assert!(
        err.to_string().to_lowercase().contains("oidc") || err.to_string().contains("curl"),
        "{err}"
    );
}
