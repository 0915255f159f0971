//! Starts and stops the local parts the tests and the dev stack need: a
//! throwaway PostgreSQL cluster and a moto server. Everything started is
//! registered for cleanup, which runs on drop and on Ctrl-C.

use std::{
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::Mutex,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

type Cleanup = Box<dyn FnOnce() + Send>;
static CLEANUPS: Mutex<Vec<Cleanup>> = Mutex::new(Vec::new());
/// Log files of what this process started, for `cargo xtask dev` to print.
static LOGS: Mutex<Vec<(&'static str, PathBuf)>> = Mutex::new(Vec::new());

fn note_log(component: &'static str, path: PathBuf) {
    if let Ok(mut logs) = LOGS.lock() {
        logs.push((component, path));
    }
}

/// The log file of each component started so far.
pub fn logs() -> Vec<(&'static str, PathBuf)> {
    LOGS.lock().map(|l| l.clone()).unwrap_or_default()
}

/// Runs every registered cleanup, newest first. Safe to call more than once.
pub fn cleanup_all() {
    let fs: Vec<Cleanup> = std::mem::take(&mut *CLEANUPS.lock().unwrap_or_else(|e| e.into_inner()));
    for f in fs.into_iter().rev() {
        f();
    }
}

fn register(f: impl FnOnce() + Send + 'static) {
    CLEANUPS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(Box::new(f));
}

/// Installs the Ctrl-C / SIGTERM handler that stops what we started.
pub fn install_signal_handler() {
    let _ = ctrlc::set_handler(|| {
        eprintln!("\nxtask: stopping everything that was started…");
        cleanup_all();
        std::process::exit(130);
    });
}

pub fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").context("bind a free port")?;
    Ok(l.local_addr()?.port())
}

/// `port` when it is free, a free one when it is 0; a port in use is an
/// error, since a fixed port is one that a file (`.env.example`) names.
pub fn port_or_free(port: u16, what: &str) -> Result<u16> {
    if port == 0 {
        return free_port();
    }
    if TcpListener::bind(("127.0.0.1", port)).is_err() {
        bail!("port {port} for {what} is already in use; stop what holds it");
    }
    Ok(port)
}

pub fn wait_for_port(port: u16, what: &str, timeout: Duration) -> Result<()> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("{what} did not start listening on port {port} within {timeout:?}")
}

pub fn which(bin: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(bin))
            .find(|p| p.is_file())
    })
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// Spawns a child in its own process group, so Ctrl-C in the terminal reaches
/// only us and we stop the group in order.
pub fn spawn_group(cmd: &mut Command) -> std::io::Result<Child> {
    use std::os::unix::process::CommandExt;
    cmd.process_group(0).spawn()
}

/// Registers the child's whole process group for termination at cleanup.
pub fn kill_group_on_cleanup(child: Child, name: &'static str) {
    let pid = child.id();
    let child = Mutex::new(child);
    register(move || {
        let _ = Command::new("kill")
            .args(["-TERM", "--", &format!("-{pid}")])
            .status();
        let mut child = child.lock().unwrap_or_else(|e| e.into_inner());
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match child.try_wait() {
                Ok(Some(_)) => break,
                _ if Instant::now() > deadline => {
                    let _ = Command::new("kill")
                        .args(["-KILL", "--", &format!("-{pid}")])
                        .status();
                    let _ = child.wait();
                    break;
                }
                _ => std::thread::sleep(Duration::from_millis(50)),
            }
        }
        eprintln!("xtask: stopped {name}");
    });
}

fn pg_bin_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("PG_BIN_DIR") {
        return Ok(PathBuf::from(dir));
    }
    let mut candidates: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|p| p.join("initdb").is_file())
        .collect();
    candidates.sort_by_key(|p| {
        p.parent()
            .and_then(|v| v.file_name())
            .and_then(|v| v.to_str())
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0)
    });
    if let Some(dir) = candidates.pop() {
        return Ok(dir);
    }
    if let Some(initdb) = which("initdb") {
        return Ok(initdb.parent().unwrap_or(Path::new("/")).to_path_buf());
    }
    bail!(
        "PostgreSQL server binaries (initdb, pg_ctl) were not found.\n\
         Install them, for example: sudo apt-get install -y postgresql\n\
         or set PG_BIN_DIR to their folder, or set DATABASE_URL to an existing server's admin URL."
    )
}

/// A running PostgreSQL; `admin_url` connects as the superuser.
pub struct Postgres {
    pub admin_url: String,
}

/// Uses `DATABASE_URL` when set; otherwise starts a throwaway cluster.
pub fn postgres(workdir: &Path) -> Result<Postgres> {
    postgres_on(workdir, 0)
}

/// [`postgres`] on `port` (0: any free port).
pub fn postgres_on(workdir: &Path, port: u16) -> Result<Postgres> {
    if let Ok(url) = std::env::var("DATABASE_URL") {
        eprintln!("xtask: using the PostgreSQL at DATABASE_URL");
        return Ok(Postgres { admin_url: url });
    }
    let bin = pg_bin_dir()?;
    let port = port_or_free(port, "PostgreSQL")?;
    let dir = workdir.join(format!("pg-{}-{port}", std::process::id()));
    let data = dir.join("data");
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    let root = is_root();
    if root {
        hand_to_postgres_user(&dir)?;
    }
    initdb(&bin, &data, root)?;
    start_cluster(&bin, &dir, port, root)?;
    eprintln!("xtask: PostgreSQL started on 127.0.0.1:{port}");
    Ok(Postgres {
        admin_url: format!("postgres://postgres@127.0.0.1:{port}/postgres"),
    })
}

/// `program` run as the `postgres` user when we are root: initdb refuses to
/// run as root, so the cluster belongs to `postgres`.
fn pg_command(program: &Path, root: bool) -> Command {
    if root {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

/// Gives `dir` to the `postgres` user and makes its parents traversable.
fn hand_to_postgres_user(dir: &Path) -> Result<()> {
    let ok = Command::new("chown")
        .args(["-R", "postgres"])
        .arg(dir)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        bail!(
            "running as root, but the `postgres` user cannot own {}. Create the user \
             (useradd --system postgres) or set DATABASE_URL.",
            dir.display()
        );
    }
    let mut p = dir.parent();
    while let Some(d) = p {
        if d == Path::new("/") {
            break;
        }
        let _ = Command::new("chmod").arg("o+x").arg(d).status();
        p = d.parent();
    }
    Ok(())
}

fn initdb(bin: &Path, data: &Path, root: bool) -> Result<()> {
    let out = pg_command(&bin.join("initdb"), root)
        .args([
            "-A",
            "trust",
            "-U",
            "postgres",
            "-E",
            "UTF8",
            "--no-sync",
            "-D",
        ])
        .arg(data)
        .output()
        .context("run initdb")?;
    if !out.status.success() {
        bail!(
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Starts the cluster in `dir` on `port` and registers its stop (which also
/// removes `dir`), even when the start fails half way.
fn start_cluster(bin: &Path, dir: &Path, port: u16, root: bool) -> Result<()> {
    let data = dir.join("data");
    require_passwords_of_group(&data)?;
    let opts = format!(
        "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off \
         -c full_page_writes=off -c max_connections=400 -c shared_buffers=256MB",
        dir.display()
    );
    let log = dir.join("postgres.log");
    let pg_ctl = bin.join("pg_ctl");
    let out = pg_command(&pg_ctl, root)
        .arg("-D")
        .arg(&data)
        .args(["-o", &opts, "-l"])
        .arg(&log)
        .args(["-w", "-t", "60", "start"])
        .stdout(Stdio::null())
        .output()
        .context("run pg_ctl start")?;
    let dir_c = dir.to_path_buf();
    register(move || {
        let _ = pg_command(&pg_ctl, root)
            .arg("-D")
            .arg(&data)
            .args(["-m", "immediate", "-w", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&dir_c);
        eprintln!("xtask: stopped PostgreSQL");
    });
    if !out.status.success() {
        let tail = std::fs::read_to_string(&log).unwrap_or_default();
        bail!(
            "PostgreSQL did not start: {}\n{}",
            String::from_utf8_lossy(&out.stderr).trim(),
            tail
        );
    }
    note_log("PostgreSQL", log);
    Ok(())
}

/// Makes sure a Python tool is installed, installing `package` with pip if not.
pub fn ensure_pip_tool(bin: &str, package: &str) -> Result<PathBuf> {
    if let Some(p) = which(bin) {
        return Ok(p);
    }
    eprintln!("xtask: `{bin}` is missing; installing `{package}` with pip…");
    let python = which("python3").context(
        "python3 is not installed. Install Python 3 (for example: sudo apt-get install -y python3 python3-pip)",
    )?;
    let status = Command::new(&python)
        .args(["-m", "pip", "install", "--quiet", package])
        .status()
        .context("run pip")?;
    if !status.success() {
        bail!("`pip install {package}` failed; install it yourself and retry");
    }
    // On PATH, else the interpreter's scripts directory (a pyenv shim
    // appears only after `pyenv rehash`) or ~/.local/bin (`pip --user`).
    let scripts = Command::new(&python)
        .args([
            "-c",
            "import sysconfig; print(sysconfig.get_path('scripts'))",
        ])
        .output()
        .ok()
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    let home = std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/bin"));
    which(bin)
        .or_else(|| {
            [scripts, home]
                .into_iter()
                .flatten()
                .map(|d| d.join(bin))
                .find(|p| p.is_file())
        })
        .with_context(|| format!("installed `{package}` but `{bin}` is not on PATH"))
}

/// The cluster trusts every local connection, except members of
/// `password_checked`: the password-rotation test needs a server that
/// refuses a wrong password. pg_hba.conf is read top down, so these go first.
fn require_passwords_of_group(data: &Path) -> Result<()> {
    let hba = data.join("pg_hba.conf");
    let rest = std::fs::read_to_string(&hba).with_context(|| format!("read {}", hba.display()))?;
    let first = "# Members of password_checked must give their password (the rotation test).\n\
                 host all +password_checked 127.0.0.1/32 scram-sha-256\n\
                 host all +password_checked ::1/128 scram-sha-256\n";
    std::fs::write(&hba, format!("{first}{rest}"))
        .with_context(|| format!("write {}", hba.display()))
}

/// Starts moto_server on a free port and returns its endpoint URL.
pub fn moto(workdir: &Path) -> Result<String> {
    moto_on(workdir, 0)
}

/// [`moto`] on `port` (0: any free port).
pub fn moto_on(workdir: &Path, port: u16) -> Result<String> {
    let bin = ensure_pip_tool("moto_server", "moto[server]")?;
    let port = port_or_free(port, "moto_server")?;
    let log_path = workdir.join(format!("moto-{port}.log"));
    note_log("moto_server", log_path.clone());
    let log = std::fs::File::create(&log_path)?;
    let child = spawn_group(
        Command::new(bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log),
    )
    .context("start moto_server")?;
    kill_group_on_cleanup(child, "moto_server");
    wait_for_port(port, "moto_server", Duration::from_secs(30))?;
    eprintln!("xtask: moto_server started on 127.0.0.1:{port}");
    Ok(format!("http://127.0.0.1:{port}"))
}

/// Environment that points the SDK at moto with dummy credentials.
pub fn aws_env(endpoint: &str) -> Vec<(String, String)> {
    vec![
        ("AWS_ENDPOINT_URL".into(), endpoint.into()),
        ("AWS_REGION".into(), "us-east-1".into()),
        ("AWS_DEFAULT_REGION".into(), "us-east-1".into()),
        ("AWS_ACCESS_KEY_ID".into(), "test".into()),
        ("AWS_SECRET_ACCESS_KEY".into(), "test".into()),
        ("AWS_EC2_METADATA_DISABLED".into(), "true".into()),
    ]
}
