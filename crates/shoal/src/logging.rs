//! Log setup: `SHOAL_LOG` (tracing's env-filter syntax) or the given default level, to
//! standard error.

pub fn init(default: &str) {
    // openraft narrates every election at info.
    let filter = tracing_subscriber::EnvFilter::try_from_env("SHOAL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("{default},openraft=warn")));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
