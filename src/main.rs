//! `pipe`: the command line; everything lives in the library (`ropelens::cli`).

fn main() -> std::process::ExitCode {
    ropelens::cli::run()
}
