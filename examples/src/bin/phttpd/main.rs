//! `phttpd`: the PASTE RPC and WAL server on segstack (see `hicamp_examples::phttpd::cli`).
#![forbid(unsafe_code)]

fn main() {
    hicamp_examples::phttpd::cli::main()
}
