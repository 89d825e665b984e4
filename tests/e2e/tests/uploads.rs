//! Attachments end to end, on both storage backends: the local disk (the embedded default)
//! and a real S3-compatible server (`s3s-fs`, installed by `.ci/run`). Every check a guest
//! or an attacker could try runs against each.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use jack_e2e::{Guest, TestStack, WAIT, fetch, http, json_body, request};
use jack_proto::conversation::v1 as conv;
use jack_proto::upload::v1 as up;
use serde_json::{Value, json};

/// A real 1×1 PNG.
const PNG: &[u8] = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0\0\x01\0\0\0\x01\x08\x06\0\0\0\x1f\x15\xc4\x89\0\0\0\rIDATx\x9cc\xf8\xcf\xc0\xf0\x1f\0\x05\0\x01\xff\x89\x99=\x1d\0\0\0\0IEND\xaeB`\x82";
const BUCKET: &str = "jack-test";

/// Where the kept files of a backend can be read back, to check what was kept.
enum Files {
    Local(PathBuf),
    S3(PathBuf),
}

impl Files {
    fn kept(&self, attachment_id: &str) -> Option<Vec<u8>> {
        let path = match self {
            Files::Local(dir) => dir.join("uploads/files").join(attachment_id),
            Files::S3(root) => root.join(BUCKET).join("files").join(attachment_id),
        };
        std::fs::read(path).ok()
    }

    /// Every file the backend holds, relative to its root.
    fn all(&self) -> Vec<String> {
        let root = match self {
            Files::Local(dir) => dir.join("uploads"),
            Files::S3(root) => root.clone(),
        };
        let mut found = Vec::new();
        let mut stack = vec![root.clone()];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                let path = entry.path();
                if path.is_dir() {
                    stack.push(path);
                } else {
                    found.push(path.strip_prefix(&root).unwrap().display().to_string());
                }
            }
        }
        found
    }
}

/// `s3s-fs`, a real S3-compatible server, on a free port with a fresh folder.
struct S3Server {
    child: Child,
    root: tempfile::TempDir,
    endpoint: String,
}

impl S3Server {
    const KEY: &str = "jack-test-key";
    const SECRET: &str = "jack-test-secret-0123456789";

    async fn start() -> Self {
        let binary = std::env::var_os("S3S_FS").map(PathBuf::from).unwrap_or_else(|| {
            let cached =
                PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/jack-tools/bin/s3s-fs");
            if cached.exists() { cached } else { PathBuf::from("s3s-fs") }
        });
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join(BUCKET)).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new(&binary)
            .args(["--host", "127.0.0.1", "--port", &port.to_string(), "--access-key", Self::KEY, "--secret-key", Self::SECRET])
            .arg(root.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {} ({e}): install it with `cargo install s3s-fs@0.14.1 --locked --features binary --root ~/.cache/jack-tools` (.ci/run does)", binary.display()));
        let up = async {
            while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        tokio::time::timeout(WAIT, up).await.expect("s3s-fs listens");
        Self { child, root, endpoint: format!("http://127.0.0.1:{port}") }
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn local_stack(extra: &[(&str, &str)]) -> (TestStack, Files) {
    let stack = TestStack::start_with(extra).await;
    let files = Files::Local(stack.data_dir().to_owned());
    (stack, files)
}

async fn s3_stack(s3: &S3Server, extra: &[(&str, &str)]) -> (TestStack, Files) {
    let mut vars = vec![
        ("UPLOAD_STORAGE", "s3"),
        ("UPLOAD_S3_BUCKET", BUCKET),
        ("UPLOAD_S3_ENDPOINT", s3.endpoint.as_str()),
        ("UPLOAD_S3_REGION", "us-east-1"),
        ("UPLOAD_S3_ACCESS_KEY_ID", S3Server::KEY),
        ("UPLOAD_S3_SECRET_ACCESS_KEY", S3Server::SECRET),
    ];
    vars.extend_from_slice(extra);
    let stack = TestStack::start_with(&vars).await;
    (stack, Files::S3(s3.root.path().to_owned()))
}

/// An identified guest, its visitor token and visitor id.
async fn guest(stack: &TestStack) -> (Guest, String, String) {
    let mut guest = stack.guest("demo_hotel").await;
    let identified = guest.identify(json!({})).await;
    let token = identified["visitorToken"].as_str().unwrap().to_owned();
    let visitor = identified["visitorId"].as_str().unwrap().to_owned();
    (guest, token, visitor)
}

/// `POST /chat/upload-url` as the widget calls it: (status, body).
async fn upload_url(
    stack: &TestStack,
    token: Option<&str>,
    filename: &str,
    content_type: &str,
    size: usize,
) -> (u16, Value) {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("Content-Type", "application/json")];
    if let Some(auth) = &auth {
        headers.push(("Authorization", auth.as_str()));
    }
    let body = json!({"filename": filename, "contentType": content_type, "size": size}).to_string();
    let (status, response) = http(&stack.http_base(), "POST", "/chat/upload-url", &headers, &body).await;
    (status, json_body(&response))
}

async fn put(url: &str, content_type: &str, body: &[u8]) -> u16 {
    request("PUT", url, &[("Content-Type", content_type)], body).await.0
}

/// Sends a message carrying attachments; the `message_ack` or the `error`.
async fn send_with(guest: &mut Guest, client_message_id: &str, ids: &[&str]) -> Value {
    let attachments: Vec<Value> = ids.iter().map(|id| json!({"id": id})).collect();
    guest
        .send(
            json!({"type": "message", "clientMessageId": client_message_id, "content": "", "attachments": attachments}),
        )
        .await;
    guest
        .until(|f| (f["type"] == "message_ack" || f["type"] == "error") && f["clientMessageId"] == client_message_id)
        .await
}

/// A full upload: URL, PUT, then a message carrying it; what the guest and a gRPC client see.
async fn full_upload(stack: &TestStack, files: &Files) {
    let (mut guest, token, visitor) = guest(stack).await;
    // A filename made to escape the storage folder: kept as a name, never used as a path.
    let evil_name = "../../../etc/passwd/<script>.png";
    let (status, answer) = upload_url(stack, Some(&token), evil_name, "image/png", PNG.len()).await;
    assert_eq!(status, 200, "{answer}");
    let id = answer["attachmentId"].as_str().unwrap().to_owned();
    let url = answer["uploadUrl"].as_str().unwrap().to_owned();
    assert!(!url.contains("passwd") && !url.contains("script"), "the URL holds no part of the filename: {url}");
    assert!(answer["expiresAt"].as_str().is_some());
    assert_eq!(put(&url, "image/png", PNG).await, 200);

    let ack = send_with(&mut guest, "with-photo", &[&id]).await;
    assert_eq!(ack["type"], "message_ack", "{ack}");
    assert_eq!(files.kept(&id).as_deref(), Some(PNG), "the verified bytes are kept");
    assert!(files.all().iter().all(|f| !f.contains("passwd") && !f.contains("..")), "{:?}", files.all());

    // The guest's other tab sees it in history; the butler sees it over gRPC.
    let mut tab = stack.guest("demo_hotel").await;
    tab.identify(json!({"visitorId": visitor, "visitorToken": token, "lastSeq": 0})).await;
    let history: Vec<Value> = tab
        .seen
        .iter()
        .filter(|f| f["type"] == "history")
        .flat_map(|f| f["messages"].as_array().unwrap().clone())
        .collect();
    let shown = history.iter().find(|m| m["messageId"] == ack["messageId"]).expect("in history");
    assert_eq!(shown["attachments"][0]["id"], id.as_str());
    assert_eq!(shown["attachments"][0]["filename"], evil_name);
    assert_eq!(shown["attachments"][0]["contentType"], "image/png");
    assert_eq!(shown["attachments"][0]["size"], PNG.len());
    // History carries short-lived download URLs (the file and its preview) that work.
    let (status, _, body) = fetch(shown["attachments"][0]["url"].as_str().expect("a download URL in history")).await;
    assert_eq!((status, body.as_slice()), (200, PNG));
    assert!(shown["attachments"][0]["thumbnailUrl"].as_str().is_some());
    assert!(shown["attachments"][0]["expiresAt"].as_str().is_some());
    let listed = stack
        .conversation()
        .list_messages(conv::ListMessagesRequest {
            conversation_id: ack["conversationId"].as_str().unwrap().into(),
            after_seq: Some(0),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let message = listed.messages.iter().find(|m| m.message_id == ack["messageId"]).unwrap();
    assert_eq!(message.attachments[0].attachment_id, id);

    // Downloads: the guest asks the edge for URLs of its own conversation's attachments.
    let conversation_id = ack["conversationId"].as_str().unwrap().to_owned();
    let (status, urls) = attachment_urls(stack, &token, &[&id]).await;
    assert_eq!(status, 200, "{urls}");
    let download = &urls["downloads"][0];
    assert_eq!(download["filename"], evil_name);
    let (status, head, body) = fetch(download["url"].as_str().unwrap()).await;
    assert_eq!(status, 200);
    let head = head.to_ascii_lowercase();
    assert!(head.contains("x-content-type-options: nosniff"), "{head}");
    assert!(head.contains("content-type: image/png"), "{head}");
    assert!(
        head.contains("content-disposition: inline; filename=\".._.._.._etc_passwd__script_.png\""),
        "the name is made harmless: {head}"
    );
    assert_eq!(body, PNG, "the very bytes");
    let (status, head, preview) = fetch(download["thumbnailUrl"].as_str().expect("an image has a preview")).await;
    assert_eq!(status, 200);
    assert!(head.to_ascii_lowercase().contains("content-type: image/jpeg"));
    assert!(preview.starts_with(b"\xff\xd8\xff"), "a JPEG");
    // Another guest gets no URL for it; the butler does, over gRPC.
    let (_, stranger, _) = self::guest(stack).await;
    let (_, theirs) = attachment_urls(stack, &stranger, &[&id]).await;
    assert_eq!(theirs["downloads"], json!([]));
    assert_eq!(theirs["missing"], json!([id]));
    let signed = stack
        .upload()
        .sign_downloads(up::SignDownloadsRequest {
            conversation_id: conversation_id.clone(),
            attachment_ids: vec![id.clone(), "att_other".into()],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(signed.missing, ["att_other"]);
    let (status, _, body) = fetch(&signed.downloads[0].url).await;
    assert_eq!(status, 200);
    assert_eq!(body, PNG);
    // A tampered download URL is refused.
    let tampered = signed.downloads[0].url.replace("variant=file", "variant=thumbnail");
    assert_eq!(request("GET", &tampered, &[], b"").await.0, 403);

    // The butler sends a file: a PDF over gRPC, then a message carrying it.
    let pdf = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n".to_vec();
    let put = up::PutAttachmentRequest {
        hotel_id: "demo_hotel".into(),
        conversation_id: conversation_id.clone(),
        filename: "Spa menu.pdf".into(),
        content_type: "application/pdf".into(),
        data: pdf.clone(),
    };
    let stored = stack.upload().put_attachment(put).await.unwrap().into_inner().attachment.unwrap();
    let disguised = up::PutAttachmentRequest {
        hotel_id: "demo_hotel".into(),
        conversation_id: conversation_id.clone(),
        filename: "x.pdf".into(),
        content_type: "application/pdf".into(),
        data: PNG.to_vec(),
    };
    let refused = stack.upload().put_attachment(disguised).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "the butler's files are checked too: {refused:?}");
    let reference = conv::AttachmentRef {
        attachment_id: stored.attachment_id.clone(),
        filename: Some(stored.filename.clone()),
        content_type: Some(stored.content_type.clone()),
        size: Some(stored.size),
    };
    let send = conv::SendMessageRequest {
        conversation_id: conversation_id.clone(),
        role: conv::Role::Assistant as i32,
        content: "Here is our spa menu.".into(),
        attachments: vec![reference],
        ..Default::default()
    };
    stack.conversation().send_message(send).await.unwrap();
    let pushed = guest.until(|f| f["type"] == "message" && f["role"] == "assistant").await;
    assert_eq!(pushed["attachments"][0]["filename"], "Spa menu.pdf");
    let (status, _, body) =
        fetch(pushed["attachments"][0]["url"].as_str().expect("a live message carries a download URL")).await;
    assert_eq!((status, body.as_slice()), (200, pdf.as_slice()));
    let (_, urls) = attachment_urls(stack, &token, &[&stored.attachment_id]).await;
    let download = &urls["downloads"][0];
    assert_eq!(download["thumbnailUrl"], Value::Null, "no preview for a PDF");
    let (status, head, body) = fetch(download["url"].as_str().unwrap()).await;
    assert_eq!(status, 200);
    assert_eq!(body, pdf);
    let head = head.to_ascii_lowercase();
    assert!(
        head.contains("content-disposition: attachment; filename=\"spa menu.pdf\""),
        "not an image: a download, {head}"
    );
    assert!(head.contains("x-content-type-options: nosniff"));

    // A butler's message carries only files stored for its conversation, as they were stored:
    // an id nobody issued, or another conversation's file, is NOT_FOUND; a made-up name, type
    // or size is replaced by the stored ones.
    let with = |conversation_id: &str, reference: conv::AttachmentRef| conv::SendMessageRequest {
        conversation_id: conversation_id.to_owned(),
        role: conv::Role::Assistant as i32,
        content: "See attached.".into(),
        attachments: vec![reference],
        ..Default::default()
    };
    let made_up = conv::AttachmentRef {
        attachment_id: "att_nope".into(),
        filename: Some("invoice.pdf".into()),
        content_type: Some("application/pdf".into()),
        size: Some(1234),
    };
    let refused = stack.conversation().send_message(with(&conversation_id, made_up)).await.expect_err("no such file");
    assert_eq!(refused.code(), tonic::Code::NotFound, "{refused:?}");
    assert!(refused.message().contains("att_nope"), "{}", refused.message());
    let (mut other, _, _) = self::guest(stack).await;
    let other_conversation = other.identify(json!({})).await["conversationId"].as_str().unwrap().to_owned();
    let borrowed = conv::AttachmentRef { attachment_id: stored.attachment_id.clone(), ..Default::default() };
    let refused = stack
        .conversation()
        .send_message(with(&other_conversation, borrowed))
        .await
        .expect_err("another conversation's file");
    assert_eq!(refused.code(), tonic::Code::NotFound, "{refused:?}");
    let lying = conv::AttachmentRef {
        attachment_id: stored.attachment_id.clone(),
        filename: Some("totally-safe.exe".into()),
        content_type: Some("application/x-msdownload".into()),
        size: Some(1),
    };
    stack.conversation().send_message(with(&conversation_id, lying)).await.unwrap();
    let pushed = guest.until(|f| f["type"] == "message" && f["content"] == "See attached.").await;
    let shown = &pushed["attachments"][0];
    assert_eq!(
        (&shown["filename"], shown["size"].as_u64()),
        (&json!("Spa menu.pdf"), Some(pdf.len() as u64)),
        "{shown}"
    );
}

/// `POST /chat/attachment-urls` as the widget calls it.
async fn attachment_urls(stack: &TestStack, token: &str, ids: &[&str]) -> (u16, Value) {
    let auth = format!("Bearer {token}");
    let body = json!({"attachmentIds": ids}).to_string();
    let (status, response) = http(
        &stack.http_base(),
        "POST",
        "/chat/attachment-urls",
        &[("Authorization", &auth), ("Content-Type", "application/json")],
        &body,
    )
    .await;
    (status, json_body(&response))
}

/// Everything that must be refused, and what is harmless.
async fn refusals(stack: &TestStack, files: &Files, s3: bool) {
    let (mut guest, token, _) = guest(stack).await;

    // (Without a valid visitor token: 401, see bad_input.rs.)
    // Declared too big, or a type not on the list.
    let (status, body) = upload_url(stack, Some(&token), "big.png", "image/png", 6_000_000).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("INVALID_REQUEST")), "{body}");
    assert_eq!(upload_url(stack, Some(&token), "x.svg", "image/svg+xml", 10).await.0, 400);

    // More bytes than declared: the storage refuses them (S3 by its signature over the length).
    let (_, answer) = upload_url(stack, Some(&token), "photo.png", "image/png", PNG.len()).await;
    let (id, url) =
        (answer["attachmentId"].as_str().unwrap().to_owned(), answer["uploadUrl"].as_str().unwrap().to_owned());
    let mut bigger = PNG.to_vec();
    bigger.extend_from_slice(&[0u8; 4096]);
    let status = put(&url, "image/png", &bigger).await;
    assert!(matches!(status, 400 | 403 | 413), "a bigger upload is refused, got {status}");
    // Another type than declared is refused at the door too.
    assert!(matches!(put(&url, "text/html", PNG).await, 400 | 403));
    // Nothing stored: the message is refused, and nothing is kept.
    let refused = send_with(&mut guest, "not-uploaded", &[&id]).await;
    assert_eq!(refused["code"], "ATTACHMENT_NOT_FOUND", "{refused}");
    assert_eq!(refused["retryable"], false);
    assert!(files.kept(&id).is_none());

    // HTML or SVG declared as PNG: uploaded, but refused by its bytes when sent.
    for (name, bytes) in [
        ("page.png", b"<html><script>alert(1)</script></html>".to_vec()),
        ("icon.png", b"<svg xmlns=\"http://www.w3.org/2000/svg\" onload=\"alert(1)\"/>".to_vec()),
    ] {
        let (_, answer) = upload_url(stack, Some(&token), name, "image/png", bytes.len()).await;
        let id = answer["attachmentId"].as_str().unwrap().to_owned();
        assert_eq!(put(answer["uploadUrl"].as_str().unwrap(), "image/png", &bytes).await, 200);
        let refused = send_with(&mut guest, &format!("disguised-{name}"), &[&id]).await;
        assert_eq!(refused["code"], "ATTACHMENT_INVALID", "{refused}");
        assert!(refused["message"].as_str().unwrap().contains("image/png"), "{refused}");
        assert!(files.kept(&id).is_none(), "a refused file is not kept");
    }

    // A second PUT on a used URL: refused (local) or harmless (S3): the kept file stays the checked one.
    let (_, answer) = upload_url(stack, Some(&token), "first.png", "image/png", PNG.len()).await;
    let (id, url) =
        (answer["attachmentId"].as_str().unwrap().to_owned(), answer["uploadUrl"].as_str().unwrap().to_owned());
    assert_eq!(put(&url, "image/png", PNG).await, 200);
    let mut other = PNG.to_vec();
    *other.last_mut().unwrap() ^= 0xff;
    let second = put(&url, "image/png", &other).await;
    if s3 {
        // S3 took the second upload (before the message): that is the file checked and kept,
        // and a PUT after the message changes nothing.
        assert_eq!(second, 200);
        assert_eq!(send_with(&mut guest, "sealed", &[&id]).await["type"], "message_ack");
        assert_eq!(files.kept(&id).as_deref(), Some(other.as_slice()));
        assert_eq!(put(&url, "image/png", PNG).await, 200);
        assert_eq!(files.kept(&id).as_deref(), Some(other.as_slice()), "a later PUT does not change the kept file");
    } else {
        assert_eq!(second, 409, "the local store refuses a second upload");
        assert_eq!(send_with(&mut guest, "sealed", &[&id]).await["type"], "message_ack");
        assert_eq!(files.kept(&id).as_deref(), Some(PNG));
    }

    // Another guest's attachment id: not found, exactly as an unknown one.
    let (mut thief, _, _) = self::guest(stack).await;
    let stolen = send_with(&mut thief, "stolen", &[&id]).await;
    assert_eq!(stolen["code"], "ATTACHMENT_NOT_FOUND", "{stolen}");
    let unknown = send_with(&mut thief, "unknown", &["att_00000000000000000000000000000000"]).await;
    assert_eq!(unknown["code"], "ATTACHMENT_NOT_FOUND");
}

/// An upload URL stops working when it expires.
async fn expiry(stack: &TestStack) {
    let (mut guest, token, _) = guest(stack).await;
    let (_, answer) = upload_url(stack, Some(&token), "late.png", "image/png", PNG.len()).await;
    let url = answer["uploadUrl"].as_str().unwrap().to_owned();
    // A download URL expires too.
    let (_, answer) = upload_url(stack, Some(&token), "kept.png", "image/png", PNG.len()).await;
    let id = answer["attachmentId"].as_str().unwrap().to_owned();
    assert_eq!(put(answer["uploadUrl"].as_str().unwrap(), "image/png", PNG).await, 200);
    assert_eq!(send_with(&mut guest, "kept", &[&id]).await["type"], "message_ack");
    let (_, urls) = attachment_urls(stack, &token, &[&id]).await;
    let download = urls["downloads"][0]["url"].as_str().unwrap().to_owned();
    assert_eq!(request("GET", &download, &[], b"").await.0, 200);
    // The one wait that must be a wait: for the clock to pass the expiry.
    tokio::time::sleep(Duration::from_millis(3100)).await;
    assert_eq!(put(&url, "image/png", PNG).await, 403, "an expired upload URL is refused");
    assert_eq!(request("GET", &download, &[], b"").await.0, 403, "an expired download URL is refused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_on_the_local_disk() {
    let (stack, files) = local_stack(&[]).await;
    full_upload(&stack, &files).await;
    refusals(&stack, &files, false).await;
    let (stack, _) = local_stack(&[("UPLOAD_URL_TTL", "2"), ("UPLOAD_DOWNLOAD_TTL", "2")]).await;
    expiry(&stack).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_with_postgresql() {
    let vars = jack_e2e::postgres_databases().await;
    let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let (stack, files) = local_stack(&vars).await;
    full_upload(&stack, &files).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_on_an_s3_compatible_store() {
    let s3 = S3Server::start().await;
    let (stack, files) = s3_stack(&s3, &[]).await;
    full_upload(&stack, &files).await;
    refusals(&stack, &files, true).await;
    let (stack, _) = s3_stack(&s3, &[("UPLOAD_URL_TTL", "2"), ("UPLOAD_DOWNLOAD_TTL", "2")]).await;
    expiry(&stack).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_upload_urls_can_name_the_endpoint_browsers_use() {
    let s3 = S3Server::start().await;
    // The service reaches the store as 127.0.0.1; browsers are told "localhost".
    let public = s3.endpoint.replace("127.0.0.1", "localhost");
    let (stack, files) = s3_stack(&s3, &[("UPLOAD_S3_PUBLIC_ENDPOINT", public.as_str())]).await;
    let (mut guest, token, _) = guest(&stack).await;
    let (_, answer) = upload_url(&stack, Some(&token), "a.png", "image/png", PNG.len()).await;
    let url = answer["uploadUrl"].as_str().unwrap();
    assert!(url.starts_with(&format!("{public}/{BUCKET}/incoming/att_")), "{url}");
    assert_eq!(put(url, "image/png", PNG).await, 200, "signed for the host the browser sends");
    let id = answer["attachmentId"].as_str().unwrap();
    assert_eq!(send_with(&mut guest, "public", &[id]).await["type"], "message_ack");
    assert_eq!(files.kept(id).as_deref(), Some(PNG));
}

#[tokio::test]
async fn a_tampered_upload_url_is_refused() {
    let (stack, _) = local_stack(&[]).await;
    let (_, token, _) = guest(&stack).await;
    let (_, answer) = upload_url(&stack, Some(&token), "a.png", "image/png", PNG.len()).await;
    let url = answer["uploadUrl"].as_str().unwrap();
    // Another object, a bigger size, no signature: all refused.
    let other = url.replace("incoming/att_", "incoming/att_0");
    assert_eq!(put(&other, "image/png", PNG).await, 403);
    let bigger = url.replace(&format!("size={}", PNG.len()), "size=999999");
    assert_eq!(
        request("PUT", &bigger, &[("Content-Type", "image/png"), ("Content-Length", "999999")], PNG).await.0,
        403
    );
    assert_eq!(put(url.split('?').next().unwrap(), "image/png", PNG).await, 403);
    let files = url.replace("/upload/incoming/", "/upload/files/");
    assert_eq!(put(&files, "image/png", PNG).await, 403, "the kept files cannot be written");
}

#[tokio::test]
async fn browsers_on_hotel_pages_may_call_across_origins() {
    let (stack, _) = local_stack(&[]).await;
    let preflight = [
        ("Origin", "https://hotel.example"),
        ("Access-Control-Request-Method", "POST"),
        ("Access-Control-Request-Headers", "authorization,content-type"),
    ];
    let (status, response) = http(&stack.http_base(), "OPTIONS", "/chat/upload-url", &preflight, "").await;
    assert_eq!(status, 200, "{response}");
    assert!(response.to_ascii_lowercase().contains("access-control-allow-origin: *"), "{response}");
    assert!(response.to_ascii_lowercase().contains("authorization"), "{response}");

    let (_, token, _) = guest(&stack).await;
    let (_, answer) = upload_url(&stack, Some(&token), "a.png", "image/png", PNG.len()).await;
    let url = answer["uploadUrl"].as_str().unwrap();
    let preflight = [
        ("Origin", "https://hotel.example"),
        ("Access-Control-Request-Method", "PUT"),
        ("Access-Control-Request-Headers", "content-type"),
    ];
    let (status, response) = request("OPTIONS", url, &preflight, b"").await;
    assert_eq!(status, 200, "{response}");
    assert!(response.to_ascii_lowercase().contains("access-control-allow-methods: put"), "{response}");
}

#[tokio::test]
async fn widgets_are_told_what_may_be_uploaded() {
    let (stack, _) = local_stack(&[("UPLOAD_ALLOWED_TYPES", "image/png,image/heic")]).await;
    // The edge asks upload when it starts; wait for the answer to reach new connections.
    let told = async {
        loop {
            let mut guest = Guest::open(&stack.ws_url("demo_hotel")).await;
            let connected = guest.next().await;
            if !connected["limits"]["allowedFileTypes"].is_null() {
                return connected;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let connected = tokio::time::timeout(WAIT, told).await.expect("the edge learns upload's limits");
    assert_eq!(connected["limits"]["allowedFileTypes"], json!(["image/png", "image/heic"]));
    assert_eq!(connected["limits"]["maxFileSize"], 5_242_880);
}

#[tokio::test]
async fn an_upload_that_stops_sending_is_refused_with_408() {
    let (stack, files) = local_stack(&[("UPLOAD_BODY_TIMEOUT_MS", "300")]).await;
    let (_guest, token, _) = guest(&stack).await;
    let (_, answer) = upload_url(&stack, Some(&token), "a.png", "image/png", PNG.len()).await;
    let url = answer["uploadUrl"].as_str().unwrap();
    // Half the declared bytes, then nothing: the connection is not held open waiting.
    let declared = PNG.len().to_string();
    let (status, _) =
        request("PUT", url, &[("Content-Type", "image/png"), ("Content-Length", &declared)], &PNG[..PNG.len() / 2])
            .await;
    assert_eq!(status, 408);
    assert!(
        files.all().iter().all(|f| !f.starts_with("incoming") && !f.starts_with("tmp")),
        "nothing is kept: {:?}",
        files.all()
    );
}

#[tokio::test]
async fn a_download_nobody_reads_is_dropped_and_frees_its_place() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let (stack, _files) = local_stack(&[("UPLOAD_MAX_DOWNLOADS", "1"), ("UPLOAD_WRITE_TIMEOUT_MS", "500")]).await;
    let (mut guest, token, _) = guest(&stack).await;
    let mut pdf = b"%PDF-1.7\n".to_vec();
    pdf.resize(5 << 20, b'.');
    let (_, answer) = upload_url(&stack, Some(&token), "big.pdf", "application/pdf", pdf.len()).await;
    assert_eq!(put(answer["uploadUrl"].as_str().unwrap(), "application/pdf", &pdf).await, 200);
    let id = answer["attachmentId"].as_str().unwrap().to_owned();
    assert_eq!(send_with(&mut guest, "pdf", &[&id]).await["type"], "message_ack");
    let (_, urls) = attachment_urls(&stack, &token, &[&id]).await;
    let url = urls["downloads"][0]["url"].as_str().unwrap().to_owned();
    let path = &url[url.find("/files/").unwrap()..];

    // A GET that reads nothing past the status line holds the only place...
    let addr = stack.stack.upload_http_addr();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(16 * 1024).unwrap();
    let mut stalled = socket.connect(addr).await.unwrap();
    stalled.write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes()).await.unwrap();
    let mut head = [0u8; 12];
    stalled.read_exact(&mut head).await.unwrap();
    assert_eq!(&head[9..12], b"200");
    let (status, head, _) = fetch(&url).await;
    assert_eq!(status, 503, "{head}");
    assert!(head.to_ascii_lowercase().contains("retry-after: 1"), "{head}");
    // ...until its stalled write times out: the place comes back with the socket still open.
    let fetched = tokio::time::timeout(WAIT, async {
        loop {
            let (status, _, body) = fetch(&url).await;
            if status == 200 {
                return body;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("the stalled download is dropped");
    assert!(fetched == pdf);
    drop(stalled);
}

#[tokio::test]
async fn what_waits_to_be_sent_is_bounded_per_guest_and_per_hotel() {
    let limits = [
        ("UPLOAD_MAX_PENDING_FILES", "3"),
        ("UPLOAD_MAX_PENDING_BYTES", "1000"),
        ("UPLOAD_MAX_PENDING_BYTES_PER_HOTEL", "1500"),
    ];
    let (stack, _files) = local_stack(&limits).await;
    let (mut first, token, _) = guest(&stack).await;
    let mut asked = Vec::new();
    for _ in 0..3 {
        let (status, answer) = upload_url(&stack, Some(&token), "a.png", "image/png", PNG.len()).await;
        assert_eq!(status, 200, "{answer}");
        asked.push(answer);
    }
    let (status, answer) = upload_url(&stack, Some(&token), "a.png", "image/png", PNG.len()).await;
    assert_eq!((status, answer["error"].as_str()), (429, Some("QUOTA_EXCEEDED")), "{answer}");
    // A file sent in a message no longer waits: its place is free.
    assert_eq!(put(asked[0]["uploadUrl"].as_str().unwrap(), "image/png", PNG).await, 200);
    assert_eq!(
        send_with(&mut first, "sent", &[asked[0]["attachmentId"].as_str().unwrap()]).await["type"],
        "message_ack"
    );
    assert_eq!(upload_url(&stack, Some(&token), "a.png", "image/png", PNG.len()).await.0, 200);

    // Bytes per guest.
    let (_second, token, _) = guest(&stack).await;
    assert_eq!(upload_url(&stack, Some(&token), "b.png", "image/png", 600).await.0, 200);
    assert_eq!(upload_url(&stack, Some(&token), "c.png", "image/png", 600).await.0, 429);
    // Bytes per hotel: this guest has room, the hotel does not.
    let (_third, token, _) = guest(&stack).await;
    assert_eq!(upload_url(&stack, Some(&token), "d.png", "image/png", 600).await.0, 200);
    let (status, answer) = upload_url(&stack, Some(&token), "e.png", "image/png", 300).await;
    assert_eq!((status, answer["error"].as_str()), (429, Some("QUOTA_EXCEEDED")), "{answer}");
}

#[tokio::test]
async fn an_upload_url_takes_one_upload_at_a_time() {
    use tokio::io::AsyncWriteExt as _;
    let (stack, files) = local_stack(&[]).await;
    let (_guest, token, _) = guest(&stack).await;
    let (_, answer) = upload_url(&stack, Some(&token), "a.png", "image/png", PNG.len()).await;
    let url = answer["uploadUrl"].as_str().unwrap().to_owned();
    let (addr, path) = url.trim_start_matches("http://").split_once('/').unwrap();
    // The first upload sends half the file and pauses.
    let mut first = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "PUT /{path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: image/png\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        PNG.len()
    );
    first.write_all(head.as_bytes()).await.unwrap();
    first.write_all(&PNG[..PNG.len() / 2]).await.unwrap();
    let receiving = tokio::time::timeout(WAIT, async {
        while !files.all().iter().any(|f| f.starts_with("tmp/")) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(receiving.is_ok(), "the first upload is being received");
    // Meanwhile the same URL takes no second upload.
    assert_eq!(put(&url, "image/png", PNG).await, 409);
    // The first one finishes.
    first.write_all(&PNG[PNG.len() / 2..]).await.unwrap();
    let mut answer = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut first, &mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

#[tokio::test]
async fn characters_that_reorder_a_filename_are_dropped() {
    let (stack, _files) = local_stack(&[]).await;
    let (mut guest, token, _) = guest(&stack).await;
    let mut pdf = b"%PDF-1.7\n".to_vec();
    pdf.resize(100, b'.');
    // Shown as it is, the name reads "invoicefdp.exe": the override reverses what follows it.
    let (status, answer) =
        upload_url(&stack, Some(&token), "invoice\u{202E}exe.pdf", "application/pdf", pdf.len()).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(put(answer["uploadUrl"].as_str().unwrap(), "application/pdf", &pdf).await, 200);
    let id = answer["attachmentId"].as_str().unwrap().to_owned();
    assert_eq!(send_with(&mut guest, "pdf", &[&id]).await["type"], "message_ack");
    let (_, urls) = attachment_urls(&stack, &token, &[&id]).await;
    assert_eq!(urls["downloads"][0]["filename"], "invoiceexe.pdf");
}

#[tokio::test]
async fn an_upload_must_end_by_the_time_its_url_expires() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let (stack, files) = local_stack(&[("UPLOAD_URL_TTL", "1"), ("UPLOAD_BODY_TIMEOUT_MS", "400")]).await;
    let (_guest, token, _) = guest(&stack).await;
    let (_, answer) = upload_url(&stack, Some(&token), "a.pdf", "application/pdf", 1000).await;
    let url = answer["uploadUrl"].as_str().unwrap().to_owned();
    let (addr, path) = url.trim_start_matches("http://").split_once('/').unwrap();
    let mut socket = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "PUT /{path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/pdf\r\nContent-Length: 1000\r\nConnection: close\r\n\r\n"
    );
    socket.write_all(head.as_bytes()).await.unwrap();
    // A byte every 100 ms never idles past the body timeout, but would take 100 s.
    let trickle = async {
        for _ in 0..1000 {
            if socket.write_all(b"%").await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(3), trickle).await;
    let mut answer = String::new();
    let _ = tokio::time::timeout(WAIT, socket.read_to_string(&mut answer)).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
    assert!(files.all().iter().all(|f| !f.starts_with("incoming")), "{:?}", files.all());
}

#[tokio::test]
async fn what_waits_to_be_sent_is_bounded_per_address_too() {
    let (stack, _files) = local_stack(&[("UPLOAD_MAX_PENDING_BYTES_PER_ADDRESS", "1000")]).await;
    // Two guests behind one address.
    let (_first, token, _) = guest(&stack).await;
    assert_eq!(upload_url(&stack, Some(&token), "a.png", "image/png", 600).await.0, 200);
    let (_second, token, _) = guest(&stack).await;
    let (status, answer) = upload_url(&stack, Some(&token), "b.png", "image/png", 600).await;
    assert_eq!((status, answer["error"].as_str()), (429, Some("QUOTA_EXCEEDED")), "{answer}");
    assert_eq!(upload_url(&stack, Some(&token), "c.png", "image/png", 300).await.0, 200);
}

#[tokio::test]
async fn one_address_holds_only_so_many_connections_to_the_file_listener() {
    use tokio::io::AsyncReadExt as _;
    let (stack, _files) = local_stack(&[("UPLOAD_MAX_CONNECTIONS_PER_IP", "2")]).await;
    let addr = stack.stack.upload_http_addr();
    let _held =
        [tokio::net::TcpStream::connect(addr).await.unwrap(), tokio::net::TcpStream::connect(addr).await.unwrap()];
    let mut over = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(WAIT, over.read_to_end(&mut answer)).await.expect("answered and closed at once").unwrap();
    assert!(answer.starts_with(b"HTTP/1.1 429"), "{}", String::from_utf8_lossy(&answer));
}
