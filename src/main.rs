//! The `amirun` binary: hands the command line to the CLI front end.

fn main() -> std::process::ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if let [_, sub, image_id] = args.as_slice() {
        if sub == amirun::service::image_worker::WORKER_SUBCOMMAND {
            return amirun::service::image_worker::worker_main(&image_id.to_string_lossy());
        }
    }
    amirun::cli::main()
}
