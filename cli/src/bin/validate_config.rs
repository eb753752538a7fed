//! `validate_config FILE...`: checks ecelerity.conf files without touching
//! anything else. Prints `FILE: ok`, or `file:line: what is wrong` and exits 1.
//! The `scriptlet` stanza's Lua scripts are loaded too (a script that
//! does not load is `path.lua:line: what`).

use clap::Parser;
use ecelerity_engine::config::Config;

#[derive(Parser)]
#[command(version, about = "Check ecelerity.conf files")]
struct Args {
    /// Configuration files to check.
    #[arg(required = true)]
    files: Vec<std::path::PathBuf>,
}

fn main() {
    let args = Args::parse();
    let mut failed = false;
    let no_datasources = ecelerity_engine::datasource::DatasourceSet::open(&[])
        .expect("an empty set of datasources opens");
    for file in &args.files {
        match Config::load(file) {
            // No datasource is opened here (nothing is touched): the
            // scripts see an `msys.db` with no datasources behind it.
            Ok(config) => match ecelerity_engine::scriptlet::check(&config, &no_datasources) {
                Ok(()) => println!("{}: ok", file.display()),
                Err(e) => {
                    eprintln!("{e}");
                    failed = true;
                }
            },
            Err(e) => {
                eprintln!("{e}");
                failed = true;
            }
        }
    }
    std::process::exit(if failed {
        ecelerity_cli::EXIT_BAD_INPUT
    } else {
        0
    });
}
