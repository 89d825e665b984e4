//! `jack-loadgen`: the command line of the load scenarios (see the library docs).

use clap::{Parser, Subcommand};
use jack_loadgen::scenario;

#[derive(Parser)]
#[command(name = "jack-loadgen", about = "Load scenarios for Jack web chat")]
struct Cli {
    /// Print one JSON object instead of a table.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Hold N identified guests; memory per connection of the process under test.
    Idle(scenario::idle::IdleArgs),
    /// Guests send at a total rate (open loop); ack latency, throughput, exactly-once check.
    Chat(scenario::chat::ChatArgs),
    /// A responder sends through ConversationService; send→received latency, exactly once.
    Outbound(scenario::outbound::OutboundArgs),
    /// Like outbound, and every guest drops and resumes with lastSeq midway.
    Reconnect(scenario::outbound::OutboundArgs),
    /// The chat client against a bare tokio-tungstenite echo server: the transport ceiling
    /// (with --durable, the ceiling for messages synced to disk before their ack).
    Echo(scenario::echo::EchoArgs),
    /// (internal) the echo server of `echo`.
    #[command(hide = true)]
    EchoServer {
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: String,
        /// Keep acknowledged messages in this file, synced before each ack.
        #[arg(long)]
        log: Option<std::path::PathBuf>,
    },
    /// (internal) one process of `idle`.
    #[command(hide = true)]
    IdleWorker(scenario::idle::WorkerArgs),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let report = match &cli.command {
        Command::Idle(args) => scenario::idle::run(args).await?,
        Command::Chat(args) => scenario::chat::run(args, "chat").await?,
        Command::Outbound(args) => scenario::outbound::run(args, false).await?,
        Command::Reconnect(args) => scenario::outbound::run(args, true).await?,
        Command::Echo(args) => scenario::echo::run(args).await?,
        Command::EchoServer { listen, log } => return scenario::echo::serve(listen, log.as_deref()).await,
        Command::IdleWorker(args) => return scenario::idle::worker(args).await,
    };
    report.print(cli.json);
    Ok(())
}
