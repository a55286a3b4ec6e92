//! The `confab` command: `serve` runs the server, `token` mints a JWT for a user.
//! Configuration errors exit with code 2 and a message naming the key.

use std::path::PathBuf;
use std::process::ExitCode;

use confab::{Config, ServerHandle};

const SERVE_USAGE: &str = "  confab serve [--config PATH]
      Run the server. Without --config the documented defaults of config/confab.toml
      apply; CONFAB_<SECTION>_<KEY> environment variables override any key.";
const TOKEN_USAGE: &str =
    "  confab token --sub ID [--name NAME] [--admin] [--ttl-s SECONDS] [--config PATH]
      Print a JWT signed with the server's key: auth.jwt_secret, the key files, or the
      secret the server generated in its data dir (store.data_dir, from the same
      --config and CONFAB_* variables as the server). A secret is never created here.";

fn usage() -> String {
    format!("usage:\n{SERVE_USAGE}\n{TOKEN_USAGE}\n  confab --version\n  confab --help")
}

struct Args {
    cmd: String,
    config: Option<PathBuf>,
    sub: Option<String>,
    name: Option<String>,
    admin: bool,
    ttl_s: Option<u64>,
    help: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut it = std::env::args().skip(1);
    let cmd = it.next().ok_or("missing command")?;
    let mut a = Args {
        cmd,
        config: None,
        sub: None,
        name: None,
        admin: false,
        ttl_s: None,
        help: false,
    };
    while let Some(flag) = it.next() {
        let mut value = |name: &str| it.next().ok_or(format!("{name} needs a value"));
        match flag.as_str() {
            "--config" | "-c" => a.config = Some(PathBuf::from(value("--config")?)),
            "--sub" => a.sub = Some(value("--sub")?),
            "--name" => a.name = Some(value("--name")?),
            "--admin" => a.admin = true,
            "--help" | "-h" => a.help = true,
            "--ttl-s" => {
                a.ttl_s = Some(
                    value("--ttl-s")?
                        .parse()
                        .map_err(|_| "--ttl-s takes whole seconds")?,
                )
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(a)
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("confab: {e}\n{}", usage());
            return ExitCode::from(2);
        }
    };
    if args.help {
        match args.cmd.as_str() {
            "serve" => println!("usage:\n{SERVE_USAGE}"),
            "token" => println!("usage:\n{TOKEN_USAGE}"),
            _ => println!("{}", usage()),
        }
        return ExitCode::SUCCESS;
    }
    match args.cmd.as_str() {
        "--version" | "-V" | "version" => {
            println!("confab {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        "--help" | "-h" | "help" => {
            println!("{}", usage());
            ExitCode::SUCCESS
        }
        "serve" => serve(&args),
        "token" => token(&args),
        other => {
            eprintln!("confab: unknown command {other:?}\n{}", usage());
            ExitCode::from(2)
        }
    }
}

fn load_config(args: &Args) -> Result<Config, ExitCode> {
    Config::load(args.config.as_deref()).map_err(|e| {
        eprintln!("confab: {e}");
        ExitCode::from(2)
    })
}

fn token(args: &Args) -> ExitCode {
    let cfg = match load_config(args) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let Some(sub) = args.sub.as_deref().filter(|s| !s.is_empty()) else {
        eprintln!("confab token: --sub is required\nusage:\n{TOKEN_USAGE}");
        return ExitCode::from(2);
    };
    // Minting with a secret the server does not have is worse than failing: the token
    // would be refused with no hint why. So the generated secret must already exist.
    let hmac = cfg
        .auth
        .algorithms
        .iter()
        .any(|a| confab::auth::is_hmac(*a));
    let secret_file = cfg.store.data_dir.join("jwt_secret");
    if hmac && cfg.auth.jwt_secret.is_none() && !secret_file.exists() {
        eprintln!(
            "confab token: no JWT secret at {}: this is not the data dir of a server that has \
             run. Pass the server's --config, or set CONFAB_STORE_DATA_DIR (or \
             auth.jwt_secret) to what the server uses.",
            secret_file.display()
        );
        return ExitCode::from(2);
    }
    let auth = match confab::auth::Authenticator::from_config(&cfg.auth, &cfg.store.data_dir) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("confab: {e}");
            return ExitCode::from(2);
        }
    };
    match auth.sign(
        sub,
        args.name.as_deref(),
        args.admin,
        args.ttl_s.unwrap_or(cfg.auth.token_ttl_s),
    ) {
        Ok(t) => {
            println!("{t}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("confab: {e}");
            ExitCode::from(2)
        }
    }
}

/// Block SIGINT and SIGTERM in every thread (threads inherit the mask), so that the main
/// thread alone receives them through `sigwait`.
#[allow(unsafe_code)] // libc signal masks have no safe wrapper in std
fn block_signals() -> libc::sigset_t {
    // SAFETY: plain libc calls on a local, zero-initialised sigset_t.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

#[allow(unsafe_code)] // sigwait has no safe wrapper in std
fn wait_for_signal(set: &libc::sigset_t) -> i32 {
    let mut sig: libc::c_int = 0;
    // SAFETY: `set` is a valid, initialised signal set; `sig` is a valid out pointer.
    unsafe { libc::sigwait(set, &mut sig) };
    sig
}

/// glibc hands freed memory back with madvise as soon as a heap's top grows past 128 KiB;
/// each call is a syscall plus a TLB shootdown on every core, and the store writer and
/// shards free and reallocate batches all the time (perf: ~9% of the writer). Keep up to
/// 64 MiB per arena instead; RSS at rest is unchanged (freed memory is reused).
#[allow(unsafe_code)] // mallopt has no safe wrapper
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; called before the server's threads start.
    unsafe {
        libc::mallopt(libc::M_TRIM_THRESHOLD, 64 << 20);
    }
}

fn serve(args: &Args) -> ExitCode {
    let cfg = match load_config(args) {
        Ok(c) => c,
        Err(code) => return code,
    };
    confab::logging::init(cfg.server.log_level, cfg.server.log_format);
    tune_allocator();
    let set = block_signals();
    let server = match ServerHandle::start(cfg) {
        Ok(s) => s,
        Err(e) => {
            log::error!("{e}");
            eprintln!("confab: {e}");
            return ExitCode::from(e.exit_code() as u8);
        }
    };
    let addr = server.addr;
    let scheme = if server.ctx.net.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let banner = format!(
        "serving on {scheme}://{addr}/  (WebSocket: /v1/ws, test page: /, health: /health)"
    );
    confab::logging::announce(&banner);
    let sig = wait_for_signal(&set);
    log::info!("signal {sig}: shutting down");
    server.shutdown();
    ExitCode::SUCCESS
}
