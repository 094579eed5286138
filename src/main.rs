//! The `amirun` binary: hands the command line to the CLI front end.

fn main() -> std::process::ExitCode {
    amirun::cli::main()
}
