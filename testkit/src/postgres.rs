//! `Postgres`: a PostgreSQL server of the test's own for the engine's
//! unit tests (datasources, the API store) and the end-to-end tests:
//! initdb into a temp dir, pg_ctl listening only on a Unix socket there
//! (tests/install-deps installs PostgreSQL); stopped and removed on drop.

use std::path::PathBuf;

/// A PostgreSQL server of the test's own: initdb into a temp dir, started
/// with pg_ctl listening only on a Unix socket in that dir; stopped on drop.
pub struct Postgres {
    dir: PathBuf,
    bin: PathBuf,
}

impl Postgres {
    fn bin_dir() -> PathBuf {
        let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL is not installed (tests/install-deps installs it)")
            .filter_map(|e| e.ok())
            .map(|e| e.path().join("bin"))
            .filter(|p| p.join("pg_ctl").exists())
            .collect();
        found.sort();
        found.pop().expect("no /usr/lib/postgresql/*/bin/pg_ctl")
    }

    fn run(&self, program: &str, args: &[&str]) -> String {
        let program = self.bin.join(program);
        let as_root = unsafe { libc::geteuid() } == 0;
        let mut cmd = if as_root {
            let mut c = std::process::Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&program);
            c
        } else {
            std::process::Command::new(&program)
        };
        let out = cmd.args(args).output().expect("run a PostgreSQL tool");
        assert!(
            out.status.success(),
            "{program:?} {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn start() -> Postgres {
        let dir = std::env::temp_dir().join(format!(
            "ec-pg-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        if unsafe { libc::geteuid() } == 0 {
            let status = std::process::Command::new("chown")
                .args(["-R", "postgres:"])
                .arg(&dir)
                .status()
                .unwrap();
            assert!(status.success());
        }
        let pg = Postgres {
            dir,
            bin: Postgres::bin_dir(),
        };
        let data = pg.dir.join("data");
        let data = data.to_str().unwrap();
        let _ = pg.run(
            "initdb",
            &[
                "-D",
                data,
                "-U",
                "postgres",
                "--auth=trust",
                "--no-sync",
                "-E",
                "UTF8",
            ],
        );
        let options = format!(
            "-c listen_addresses='' -c unix_socket_directories='{}' -c fsync=off",
            pg.dir.display()
        );
        let log = pg.dir.join("log");
        let _ = pg.run(
            "pg_ctl",
            &[
                "-D",
                data,
                "-l",
                log.to_str().unwrap(),
                "-o",
                &options,
                "-w",
                "start",
            ],
        );
        pg
    }

    /// The directory of its Unix socket (libpq's `host`).
    pub fn socket_dir(&self) -> &std::path::Path {
        &self.dir
    }

    /// One query through psql: its rows, `|`-separated, one per line.
    pub fn psql(&self, sql: &str) -> String {
        let host = self.dir.to_str().expect("a UTF-8 temp dir").to_string();
        self.run(
            "psql",
            &[
                "-h", &host, "-U", "postgres", "-d", "postgres", "-At", "-c", sql,
            ],
        )
    }

    /// The datasource `uri` of this server.
    pub fn uri(&self) -> String {
        format!(
            "pgsql:host={};dbname=postgres;user=postgres",
            self.dir.display()
        )
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let data = self.dir.join("data");
        let _ = self.run(
            "pg_ctl",
            &["-D", data.to_str().unwrap(), "-m", "immediate", "stop"],
        );
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
