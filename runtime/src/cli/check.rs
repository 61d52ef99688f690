//! `microvm check`: can this host run microVMs, and how well (as `kata-runtime check`).
//! Exit status 0 only when microVMs will run at hardware speed.

use clap::Args;

use crate::host::HostReport;

/// Check whether this host can run microVMs at hardware speed
#[derive(Args)]
pub struct CheckArgs {
    /// Print only the verdict
    #[arg(long, short)]
    quiet: bool,
}

pub fn run(args: CheckArgs) -> anyhow::Result<u8> {
    let r = HostReport::gather();
    if !args.quiet {
        let kvm = match (&r.kvm_error, r.missing_caps.is_empty()) {
            (Some(e), _) => format!("unusable: {e}"),
            (None, true) => "usable, every required capability present".into(),
            (None, false) => format!("usable, but lacks {}", r.missing_caps.join(", ")),
        };
        println!("/dev/kvm:            {kvm}");
        println!("KVM module:          {}", r.kvm_module.unwrap_or("unknown"));
        println!("CPU virtualization:  {}", r.hw_virt.unwrap_or("none (no vmx/svm flag)"));
        match &r.hypervisor {
            Some(v) => println!("host is a guest:     yes, under {v} (nested virtualization)"),
            None => println!("host is a guest:     no (bare metal)"),
        }
        if let Some(n) = r.nested_param {
            println!("nesting allowed:     {}", if n { "yes" } else { "no" });
        }
        let items = [
            ("guest kernel:", &r.kernel),
            ("guest agent:", &r.agent),
            ("image cache:", &r.cache),
            ("virtiofsd (volumes):", &r.virtiofsd),
        ];
        for (what, found) in items {
            match found {
                Ok(f) => println!("{what:<21}{} ({})", f.path.display(), f.from),
                Err(e) => println!("{what:<21}{e}"),
            }
        }
        println!("network (run):       {}", crate::user_net::availability());
    }
    match r.verdict() {
        Ok(()) => {
            println!("verdict:             microVMs run here at hardware speed");
            Ok(0)
        }
        Err(why) => {
            println!("verdict:             not at hardware speed: {why}");
            Ok(1)
        }
    }
}
