//! `ec_dump_config [--config FILE]`: prints the effective configuration,
//! defaults included, in ecelerity.conf syntax (the embedded default when no
//! file is given).

use clap::Parser;

#[derive(Parser)]
#[command(
    version,
    about = "Print ecelerity's effective configuration, defaults included"
)]
struct Args {
    /// Configuration file (default: the embedded default configuration).
    #[arg(short, long)]
    config: Option<std::path::PathBuf>,
    /// The same, as a positional argument.
    file: Option<std::path::PathBuf>,
}

fn main() {
    let args = Args::parse();
    let path = args.config.or(args.file);
    let config = ecelerity_cli::load_config_or_exit(path.as_deref());
    print!("{}", config.dump());
}
