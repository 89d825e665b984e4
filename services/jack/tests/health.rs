//! `jack health`, as a container healthcheck runs it: exit 0 while the service is ready, 1
//! with a one-line reason otherwise.

use std::process::Command;

use jack_e2e::{Svc, TestStack};

/// Runs `jack health` (off the runtime's thread: the services answering it run on it).
async fn health(args: &[&str]) -> (i32, String) {
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_jack")).arg("health").args(args).env_clear().output().expect("run jack health")
    })
    .await
    .unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[tokio::test]
async fn jack_health_says_whether_a_service_is_ready() {
    let mut stack = TestStack::start().await;
    let guest = stack.stack.url(Svc::Guest);
    assert_eq!(health(&[&guest]).await, (0, String::new()), "liveness");
    assert_eq!(health(&[&guest, "jack.guest.v1.GuestService"]).await, (0, String::new()), "readiness");
    let (code, message) = health(&[&guest, "jack.nothing.v1.Nothing"]).await;
    assert_eq!(code, 1);
    assert!(message.contains("jack.nothing.v1.Nothing"), "{message}");

    stack.stop(Svc::Guest).await;
    let (code, message) = health(&[&guest]).await;
    assert_eq!(code, 1, "a stopped service is not healthy");
    assert_eq!(message.lines().count(), 1, "one line: {message}");
}
