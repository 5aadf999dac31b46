//! `pipe`: the command line; everything lives in the library (`ropelens::cli`).

fn main() -> std::process::ExitCode {
    ropelens::device::keep_freed_memory();
    ropelens::cli::run()
}
