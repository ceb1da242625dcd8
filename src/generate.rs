//! `cartguard generate`: the man pages and shell completions, rendered from the
//! same clap definitions that parse the command line, so they cannot drift from
//! it. `main` dispatches here before parsing `Cli`, which does not contain this
//! command, so it stays out of `--help`, the pages and the completions;
//! `packaging/build.sh` calls it to fill the .deb and the tarball. It only
//! writes what it is asked to: stdout, or files in `--out`.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use clap_complete::Shell;

/// Man pages and shell completions from cartguard's own clap definitions (for packaging).
#[derive(Parser)]
#[command(name = "generate", bin_name = "cartguard generate")]
struct Args {
    #[command(subcommand)]
    what: What,
}

#[derive(Subcommand)]
enum What {
    /// Man pages: cartguard.1, and cartguard-SUBCOMMAND.1 for each subcommand with --out.
    Man {
        /// Write the pages into this directory (created if missing); default: cartguard.1 to stdout.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// A completion script for one shell.
    Completions {
        shell: Shell,
        /// Write the script into this directory under the shell's usual file name
        /// (cartguard.bash, _cartguard, cartguard.fish, ...); default: stdout.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

/// Files, signals and exit status: what the clap definitions cannot say.
const EXTRA_SECTIONS: &str = r#".SH FILES
.TP
\fI/etc/cartguard/cartguard.yaml\fR
The configuration read by \fBrun\fR, \fBcheck\fR and \fBexplain\fR unless \fB\-\-config\fR says otherwise.
Relative paths in it resolve against its directory.
.TP
\fI/var/log/cartguard/\fR
Where the packaged service may write a file access log (\fBlog.path\fR); the default is stdout (the journal).
.TP
\fI/var/lib/cartguard/\fR
State kept across restarts, e.g. the ACME account and certificates.
.SH SIGNALS
.TP
\fBSIGHUP\fR
Re\-read the configuration, htpasswd and certificate files; an invalid new configuration is refused and the old one keeps serving. \fBcartguard reload\fR checks the file first, sends it, and reports the result.
.TP
\fBSIGUSR1\fR
Reopen the access log file (after logrotate renamed it).
.TP
\fBSIGTERM\fR, \fBSIGINT\fR
Stop accepting, drain open requests, exit.
.SH EXIT STATUS
0 on success; 1 when a configuration is invalid or a command fails.
"#;

/// `cmd` is the public command line (`Cli::command()`).
pub fn main(cmd: clap::Command) -> ExitCode {
    let args = Args::parse_from(std::env::args_os().skip(1));
    let result = match args.what {
        What::Man { out: None } => man_page(cmd, &mut io::stdout().lock()),
        What::Man { out: Some(dir) } => man_pages(cmd, &dir),
        What::Completions { shell, out: None } => {
            let mut cmd = cmd;
            clap_complete::generate(shell, &mut cmd, "cartguard", &mut io::stdout().lock());
            Ok(())
        }
        What::Completions { shell, out: Some(dir) } => completions_to(cmd, shell, &dir),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

/// The top-level page, with the sections clap knows nothing about.
fn man_page(cmd: clap::Command, w: &mut dyn Write) -> io::Result<()> {
    // The pages document our commands only; `help` is clap's own.
    let man = clap_mangen::Man::new(cmd.disable_help_subcommand(true));
    let mut page = Vec::new();
    man.render_title(&mut page)?;
    man.render_name_section(&mut page)?;
    man.render_synopsis_section(&mut page)?;
    man.render_description_section(&mut page)?;
    man.render_options_section(&mut page)?;
    man.render_subcommands_section(&mut page)?;
    page.extend_from_slice(EXTRA_SECTIONS.as_bytes());
    man.render_version_section(&mut page)?;
    // Each section renders its own two-line preamble; the page needs it once.
    let page = String::from_utf8_lossy(&page);
    let mut seen = std::collections::HashSet::new();
    for line in page.lines() {
        let preamble = line.starts_with(".ie \\n(.g") || line.starts_with(".el .ds Aq");
        if preamble && !seen.insert(line) {
            continue;
        }
        writeln!(w, "{line}")?;
    }
    Ok(())
}

fn man_pages(cmd: clap::Command, dir: &Path) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    let mut cmd = cmd.disable_help_subcommand(true);
    cmd.build();
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        // One page per subcommand and nested subcommand (cartguard-alert-test.1).
        clap_mangen::generate_to(sub.clone(), dir)?;
    }
    let path = dir.join("cartguard.1");
    let mut file = fs::File::create(&path)?;
    man_page(cmd, &mut file)?;
    file.flush()?;
    println!("{}", path.display());
    Ok(())
}

fn completions_to(mut cmd: clap::Command, shell: Shell, dir: &Path) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    let path = clap_complete::generate_to(shell, &mut cmd, "cartguard", dir)?;
    println!("{}", path.display());
    Ok(())
}
