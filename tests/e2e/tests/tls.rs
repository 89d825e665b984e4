//! The gRPC API over TLS, and mutual TLS: every service serves its certificate, every call
//! between services (and from a responder) checks the server's against the CA and shows its
//! own; a plaintext client, a client without a certificate and a client trusting another CA
//! get nothing.

use jack_e2e::{Role, Svc, TestStack, WAIT};
use jack_proto::conversation::v1 as conv;
use jack_proto::conversation::v1::conversation_service_client::ConversationServiceClient;
use jack_runtime::grpc::{Credentials, Tls};
use jack_runtime::settings::Env;
use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair};
use serde_json::json;

/// A CA and a certificate it signed for 127.0.0.1 (server and client use), as PEM files.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (ca, ca_key) = Self::ca("jack test CA");
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, "jack services");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        std::fs::write(dir.path().join("cert.pem"), cert.pem()).unwrap();
        std::fs::write(dir.path().join("key.pem"), key.serialize_pem()).unwrap();
        let (other, _) = Self::ca("some other CA");
        std::fs::write(dir.path().join("other-ca.pem"), other.pem()).unwrap();
        Self { dir }
    }

    fn ca(name: &str) -> (rcgen::Certificate, KeyPair) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        (params.self_signed(&key).unwrap(), key)
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }
}

#[tokio::test]
async fn services_speak_mutual_tls_and_refuse_whoever_does_not() {
    let pki = Pki::new();
    let (cert, key, ca) = (pki.path("cert.pem"), pki.path("key.pem"), pki.path("ca.pem"));
    let stack = TestStack::start_with(&[
        ("GRPC_TLS_CERT_FILE", &cert),
        ("GRPC_TLS_KEY_FILE", &key),
        ("GRPC_TLS_CA_FILE", &ca),
        ("GRPC_TLS_CLIENT_CA_FILE", &ca),
    ])
    .await;
    let url = stack.stack.url(Svc::Conversation);
    assert!(url.starts_with("https://"), "{url}");

    // A guest's message crosses edge → conversation → delivery → edge, all over mutual TLS,
    // and a responder's answer comes back the same way.
    let mut guest = stack.guest("hotel_tls").await;
    let identified = guest.identify(json!({})).await;
    let ack = guest.say("t1", "Is the spa open?").await;
    assert_eq!(ack["type"], "message_ack", "{ack}");
    let conversation_id = identified["conversationId"].as_str().unwrap().to_owned();
    let answer = conv::SendMessageRequest {
        conversation_id,
        role: conv::Role::Assistant as i32,
        content: "Until 9 pm.".into(),
        ..Default::default()
    };
    stack.conversation().send_message(answer.clone()).await.expect("a responder with a certificate and a token");
    assert_eq!(guest.expect("message").await["content"], "Until 9 pm.");

    // Whoever does not speak mutual TLS with a certificate of this CA gets nothing.
    let token = stack.credentials(Role::Responder);
    let plaintext = url.replacen("https://", "http://", 1);
    let refusals = [
        ("plaintext", plaintext.as_str(), Credentials::none()),
        (
            "no client certificate",
            url.as_str(),
            Credentials::none().with_tls(Tls::from_env(&Env::from_pairs([("GRPC_TLS_CA_FILE", ca.as_str())])).unwrap()),
        ),
        (
            "another CA",
            url.as_str(),
            token.clone().with_tls(
                Tls::from_env(&Env::from_pairs([
                    ("GRPC_TLS_CERT_FILE", cert.as_str()),
                    ("GRPC_TLS_KEY_FILE", key.as_str()),
                    ("GRPC_TLS_CA_FILE", &pki.path("other-ca.pem")),
                ]))
                .unwrap(),
            ),
        ),
    ];
    for (who, url, credentials) in refusals {
        let mut client = ConversationServiceClient::new(jack_runtime::grpc::channel(url, WAIT, &credentials).unwrap());
        let refused = client.send_message(answer.clone()).await.expect_err(who);
        assert!(
            matches!(refused.code(), tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Internal),
            "{who}: {refused:?}"
        );
    }
}

#[test]
fn tls_settings_are_checked_at_start_up() {
    let pki = Pki::new();
    let err = Tls::from_env(&Env::from_pairs([("GRPC_TLS_CERT_FILE", pki.path("cert.pem"))])).unwrap_err();
    assert_eq!(err.to_string(), "invalid GRPC_TLS_KEY_FILE=\"\": must be set with GRPC_TLS_CERT_FILE");
    let err = Tls::from_env(&Env::from_pairs([("GRPC_TLS_CLIENT_CA_FILE", pki.path("ca.pem"))])).unwrap_err();
    assert!(err.to_string().contains("mutual TLS is TLS first"), "{err}");
    let not_pem = pki.path("not.pem");
    std::fs::write(&not_pem, "hello").unwrap();
    let err = Tls::from_env(&Env::from_pairs([("GRPC_TLS_CA_FILE", not_pem.clone())])).unwrap_err();
    assert_eq!(err.to_string(), format!("invalid GRPC_TLS_CA_FILE={not_pem:?}: expected a PEM file"));
}
