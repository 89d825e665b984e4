//! `jack up`: the whole product on the embedded default, in one process.

use std::path::PathBuf;

use jack::{Service, Stack, concierge};
use jack_runtime::settings::Env;
use jack_runtime::{shutdown, telemetry};

const USAGE: &str = "usage: jack up [--data DIR]
       jack concierge [--data DIR]
       jack credentials [--data DIR]
       jack run guest|conversation|delivery|upload|edge
       jack health URL [SERVICE]

jack up         runs every Jack web chat service in this process (each on its own gRPC
                port), with SQLite files under DIR (default ./data, or JACK_DATA_DIR), and
                a demo concierge that answers guests (JACK_CONCIERGE=off leaves it out).
jack concierge  runs only the demo concierge, against JACK_CONVERSATION_URL (one or
                more URLs; default http://127.0.0.1:50052); its cursor is kept in DIR.
jack credentials  makes a gRPC token for each role in DIR/credentials/<role>.token (kept
                if there) and the callers file the services check them against,
                DIR/credentials/callers.json (GRPC_CALLERS_FILE), as `jack up` does.
jack run S      runs one service alone, configured by its own variables (the same as
                its own binary, e.g. jack-edge).
jack health URL [SERVICE]  asks the gRPC health service at URL whether SERVICE (default:
                the empty name, liveness) is serving: exit 0 if so, 1 if not (a container
                healthcheck). A service's own name is its readiness, e.g.
                jack.guest.v1.GuestService. https URLs use GRPC_TLS_CA_FILE.
Every service's own variables apply; see README.md.";

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if args.first().is_some_and(|c| c == "up")
        && let Some(workers) = jack::stack::backend_workers()
    {
        runtime.worker_threads(workers);
    }
    runtime.enable_all().build()?.block_on(run(args))
}

async fn run(args: Vec<String>) -> anyhow::Result<()> {
    let env = Env::from_process();
    let mut data_dir = PathBuf::from(env.string("JACK_DATA_DIR", "data"));
    let command = args.first().cloned().unwrap_or_default();
    match command.as_str() {
        "up" | "concierge" | "credentials" => {}
        "run" => {
            let service = match args.get(1).map(String::as_str) {
                Some("guest") => Service::Guest,
                Some("conversation") => Service::Conversation,
                Some("delivery") => Service::Delivery,
                Some("upload") => Service::Upload,
                Some("edge") => Service::Edge,
                _ => exit_with(format!("jack run needs a service name\n{USAGE}")),
            };
            let _telemetry = telemetry::init("jack")?;
            let result = jack::stack::run_one(service, &env, shutdown::on_signal()).await;
            if let Err(err) = result {
                exit_with(format!("{err:#}"));
            }
            return Ok(());
        }
        "health" => {
            let Some(url) = args.get(1) else { exit_with(format!("jack health needs a URL\n{USAGE}")) };
            let service = args.get(2).cloned().unwrap_or_default();
            match jack::stack::health(&env, url, &service).await {
                Ok(()) => return Ok(()),
                Err(err) => {
                    eprintln!("jack: {err:#}");
                    std::process::exit(1)
                }
            }
        }
        "help" | "--help" | "-h" | "" => {
            println!("{USAGE}");
            return Ok(());
        }
        other => exit_with(format!("unknown command {other:?}\n{USAGE}")),
    }
    let mut rest = args[1..].iter();
    while let Some(arg) = rest.next() {
        match (arg.as_str(), rest.next()) {
            ("--data", Some(dir)) => data_dir = PathBuf::from(dir),
            _ => exit_with(format!("unexpected argument {arg:?}\n{USAGE}")),
        }
    }
    if command == "credentials" {
        let dir = jack::stack::credentials(&data_dir).unwrap_or_else(|e| exit_with(format!("{e:#}")));
        println!("{}", dir.display());
        return Ok(());
    }
    let _telemetry = telemetry::init("jack")?;
    let concierge_on = env.string("JACK_CONCIERGE", "on") != "off";
    let shutdown = shutdown::on_signal();
    if command == "concierge" {
        let url =
            env.urls("JACK_CONVERSATION_URL", "http://127.0.0.1:50052").unwrap_or_else(|e| exit_with(e.to_string()));
        std::fs::create_dir_all(&data_dir)
            .unwrap_or_else(|e| exit_with(format!("cannot create {}: {e}", data_dir.display())));
        let off = env.get("GRPC_AUTH") == Some("off");
        let credentials = jack_runtime::callers::credentials(&env, "JACK_CONCIERGE_TOKEN", off)
            .unwrap_or_else(|e| exit_with(e.to_string()));
        concierge::run(url, credentials, data_dir.join("concierge.cursor"), shutdown).await;
        return Ok(());
    }
    let stack = Stack::start(env, &data_dir, shutdown.clone()).await.unwrap_or_else(|e| exit_with(format!("{e:#}")));
    // The concierge is a responder like any other: it presents the token `jack up` made for
    // that role (or JACK_CONCIERGE_TOKEN / _FILE, with callers of the operator's own).
    let concierge_credentials = match concierge_on {
        true => Some(
            jack_runtime::callers::credentials(
                stack.env(),
                "JACK_CONCIERGE_TOKEN",
                stack.env().get("GRPC_AUTH") == Some("off"),
            )
            .unwrap_or_else(|e| exit_with(e.to_string())),
        ),
        false => None,
    };
    let edge = stack.addr(Service::Edge);
    let host = if edge.ip().is_unspecified() { "127.0.0.1".to_owned() } else { edge.ip().to_string() };
    println!("Jack web chat is up (data in {}).", data_dir.display());
    println!("  demo hotel page   http://{host}:{}/", edge.port());
    println!("  guest WebSocket   ws://{host}:{}/ws/chat?hotelId=demo_hotel", edge.port());
    println!("  health            http://{host}:{}/health/websocket", edge.port());
    if let Some(metrics) = stack.edge_metrics_addr() {
        println!("  metrics           http://{metrics}/metrics (Prometheus)");
    }
    println!("  file uploads      http://{}/ (signed URLs only)", stack.upload_http_addr());
    println!("  ConversationService (for AI responders)  {}", stack.url(Service::Conversation));
    println!("  DeliveryService (staff subscriptions)    {}", stack.url(Service::Delivery));
    if let Some(dir) = stack.credentials_dir() {
        println!(
            "  gRPC tokens       {}/ (responder.token for AI responders, dashboard.token for staff tools)",
            dir.display()
        );
    }
    if let Some(credentials) = concierge_credentials {
        let cursor_file = data_dir.join("concierge.cursor");
        tokio::spawn(concierge::run(
            vec![stack.url(Service::Conversation)],
            credentials,
            cursor_file,
            shutdown.clone(),
        ));
        println!("  demo concierge answering through ConversationService");
    }
    stack.wait().await
}

fn exit_with(message: String) -> ! {
    eprintln!("jack: {message}");
    std::process::exit(2)
}
