//! Open-model load generator (being written).

/// Options of `paygate loadgen`.
#[derive(clap::Args, Debug, Clone)]
pub struct LoadgenArgs {
    /// Gateway base URL.
    #[arg(long, default_value = "http://127.0.0.1:9999")]
    pub url: String,
}

pub async fn run(args: LoadgenArgs) -> Result<(), String> {
    Err(format!("loadgen against {} is not built yet", args.url))
}
