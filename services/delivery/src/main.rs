use jack_runtime::{settings::Env, shutdown, telemetry};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _telemetry = telemetry::init("jack-delivery")?;
    let settings = jack_delivery::Settings::from_env(&Env::from_process()).unwrap_or_else(|e| exit_with(e));
    let server = jack_delivery::DeliveryServer::build(settings).await.unwrap_or_else(|e| exit_with(e));
    server.run(shutdown::on_signal()).await
}

fn exit_with(err: impl std::fmt::Display) -> ! {
    eprintln!("jack-delivery: {err:#}");
    std::process::exit(2)
}
