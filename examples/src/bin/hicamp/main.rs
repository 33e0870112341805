//! `hicamp`: the command-line tool of the HICAMP memory emulation (see `hicamp_examples::cli`).
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    hicamp_examples::cli::main()
}
