//! `ec_passwd USER`: prints a line for an `auth_password_file`,
//! `USER:$argon2id$...`, for the password read from stdin (one line; on a
//! terminal it is asked for without echo). Append it to the file:
//! `ec_passwd alice >> /etc/ecelerity/passwd`.

use std::io::{BufRead, IsTerminal, Write};

use clap::Parser;
use ecelerity_engine::auth::hash_password;

#[derive(Parser)]
#[command(version, about = "Make a password file line for SMTP AUTH")]
struct Args {
    /// The user name (no `:`).
    user: String,
}

fn main() {
    let args = Args::parse();
    if args.user.is_empty() || args.user.contains(':') || args.user.chars().any(char::is_control) {
        eprintln!("ec_passwd: the user name must be non-empty, without `:` or control characters");
        std::process::exit(ecelerity_cli::EXIT_BAD_INPUT);
    }
    let password = match read_password() {
        Ok(p) if !p.is_empty() => p,
        Ok(_) => {
            eprintln!("ec_passwd: empty password");
            std::process::exit(ecelerity_cli::EXIT_BAD_INPUT);
        }
        Err(e) => {
            eprintln!("ec_passwd: cannot read the password: {e}");
            std::process::exit(ecelerity_cli::EXIT_BAD_INPUT);
        }
    };
    match hash_password(&password) {
        Ok(hash) => println!("{}:{hash}", args.user),
        Err(e) => {
            eprintln!("ec_passwd: {e}");
            std::process::exit(1);
        }
    }
}

/// One line from stdin, without its line end; without echo on a terminal.
fn read_password() -> std::io::Result<String> {
    let stdin = std::io::stdin();
    let terminal = stdin.is_terminal();
    let saved = if terminal { echo_off() } else { None };
    if terminal {
        eprint!("Password: ");
        let _ = std::io::stderr().flush();
    }
    let mut line = String::new();
    let read = stdin.lock().read_line(&mut line);
    if let Some(saved) = saved {
        // SAFETY: restores the attributes read from the same descriptor.
        unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &saved) };
        eprintln!();
    }
    read?;
    Ok(line.trim_end_matches(['\r', '\n']).to_string())
}

/// Turns terminal echo off; returns the attributes to restore.
fn echo_off() -> Option<libc::termios> {
    // SAFETY: termios is plain data; tcgetattr fills it or fails.
    unsafe {
        let mut attributes: libc::termios = std::mem::zeroed();
        if libc::tcgetattr(libc::STDIN_FILENO, &mut attributes) != 0 {
            return None;
        }
        let saved = attributes;
        attributes.c_lflag &= !libc::ECHO;
        libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &attributes);
        Some(saved)
    }
}
