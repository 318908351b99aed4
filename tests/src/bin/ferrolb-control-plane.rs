//! Runs a real Kubernetes control plane (etcd, kube-apiserver,
//! kube-controller-manager, kube-scheduler) on loopback until SIGTERM or
//! Ctrl-C, for end-to-end suites run with `FERROLB_E2E_KUBECONFIG`.
//!
//! ```text
//! ferrolb-control-plane --kube-bin "$(scripts/build-kube.sh | tail -n1)" --kubeconfig-out /tmp/kc
//! ```
//! Once the control plane is ready, the admin kubeconfig is written to
//! `--kubeconfig-out` (atomically: a script can wait for the file).

use std::path::PathBuf;
use std::sync::mpsc;

use anyhow::Context as _;
use clap::Parser;
use ferrolb_tests::kube::{ControlPlane, KUBE_BIN_ENV, KubeBinaries};

#[derive(Parser)]
#[command(about = "A real Kubernetes control plane on loopback, for tests")]
struct Args {
    /// Directory with the binaries scripts/build-kube.sh built.
    #[arg(long, env = KUBE_BIN_ENV)]
    kube_bin: PathBuf,
    /// Where the work directory (data, certificates, logs) is made.
    #[arg(long, default_value_os_t = std::env::temp_dir())]
    dir: PathBuf,
    /// Write the admin kubeconfig here once the control plane is ready.
    #[arg(long)]
    kubeconfig_out: PathBuf,
    /// Keep the work directory (logs) after stopping.
    #[arg(long)]
    keep: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let (tx, rx) = mpsc::channel();
    ctrlc::set_handler(move || {
        let _ = tx.send(());
    })
    .context("installing the signal handler")?;
    let bins = KubeBinaries::at(&args.kube_bin)?;
    let started = std::time::Instant::now();
    let mut cp = ControlPlane::start(bins, &args.dir)?;
    if args.keep {
        cp.keep_dir();
    }
    let tmp = args.kubeconfig_out.with_extension("tmp");
    std::fs::copy(&cp.kubeconfig, &tmp)?;
    std::fs::rename(&tmp, &args.kubeconfig_out)?;
    eprintln!(
        "control plane ready at {} after {:.1} s; kubeconfig {}; logs in {}",
        cp.url,
        started.elapsed().as_secs_f64(),
        args.kubeconfig_out.display(),
        cp.dir.display()
    );
    let _ = rx.recv();
    eprintln!("stopping the control plane");
    cp.stop();
    let _ = std::fs::remove_file(&args.kubeconfig_out);
    Ok(())
}
