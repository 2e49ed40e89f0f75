//! Renders the book to `book/build/` with the mdBook library, so that no separate tool has to
//! be installed: `cargo run -p isolab-tests --bin build-book`.

use std::process::ExitCode;

fn main() -> ExitCode {
    let root = isolab_tests::workspace_root().join("book");
    let result = mdbook_driver::MDBook::load(&root).and_then(|book| book.build());
    match result {
        Ok(()) => {
            println!("book rendered: {}", root.join("build/index.html").display());
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("build-book: error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
