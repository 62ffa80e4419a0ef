//! The `deploy-agent` binary: parse arguments, run, map errors to exit codes.

fn main() -> std::process::ExitCode {
    deploy_agent::cli::main()
}
