//! `hull-shim DIR ID`: supervises one hulld container (see `runtime::shim`).

use std::process::ExitCode;

fn main() -> ExitCode {
    runtime::private_files();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [dir, id] = args.as_slice() else {
        eprintln!("usage: hull-shim CONTAINER_DIR CONTAINER_ID (started by hulld)");
        return ExitCode::from(2);
    };
    let container = runtime::container::ContainerDir {
        id: id.clone(),
        path: dir.into(),
    };
    match runtime::shim::supervise(&container) {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hull-shim: {e}");
            ExitCode::FAILURE
        }
    }
}
