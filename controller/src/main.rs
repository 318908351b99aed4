//! ferrolb-controller: assigns addresses to LoadBalancer Services.

use std::io::Read;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

mod check_config;
mod engine;
mod service;

#[derive(Parser)]
#[command(
    name = "ferrolb-controller",
    version,
    about = "Assigns addresses from ferrolb's pools to LoadBalancer Services"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Validate a config offline: a ConfigMap manifest or the bare document
    /// stored under its key `config`. Prints every problem; exits 0 only when valid.
    CheckConfig {
        /// The file to check; `-` reads standard input.
        file: String,
        /// `json` prints the parsed pools, or the errors, as JSON.
        #[arg(long, value_enum, default_value = "text")]
        output: check_config::Output,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig { file, output } => match read_input(&file) {
            Ok(input) => {
                let (text, valid) = check_config::check(&input, output);
                print!("{text}");
                if valid {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::from(1)
                }
            }
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::from(2)
            }
        },
    }
}

fn read_input(file: &str) -> anyhow::Result<String> {
    if file == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("reading standard input")?;
        Ok(s)
    } else {
        std::fs::read_to_string(file).with_context(|| format!("reading {file}"))
    }
}
