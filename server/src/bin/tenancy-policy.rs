//! `tenancy-policy`: check the Cedar policies and print the permission
//! matrix they decide, for reviewers.
//!
//! ```text
//! tenancy-policy check  [DIR]   # parse and validate (strict) tenancy.cedar against tenancy.cedarschema
//! tenancy-policy matrix [DIR]   # role-by-action table, as in policies/README.md
//! ```

use std::path::PathBuf;
use std::process::ExitCode;

use tenancy_server::domain::authz::Authz;

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let command = args.next().unwrap_or_default();
    let dir = PathBuf::from(args.next().unwrap_or_else(|| "policies".to_owned()));
    let authz = match Authz::load(&dir) {
        Ok(authz) => authz,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    match command.as_str() {
        "check" => {
            println!("{}: policies parse and validate (strict)", dir.display());
            ExitCode::SUCCESS
        }
        "matrix" => {
            print!("{}", authz.permission_matrix_markdown());
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!("usage: tenancy-policy check|matrix [DIR]");
            ExitCode::from(2)
        }
    }
}
