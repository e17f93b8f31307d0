//! `corelog inspect`: opens a log directory as a node would (recovery included: a torn tail is
//! cut, corruption is reported) and prints what it holds.

use std::path::PathBuf;
use std::process::ExitCode;

use crate::log::{HardStateFile, Log, LogConfig};

/// Arguments of `corelog inspect`.
#[derive(Debug, Clone, clap::Args)]
pub struct InspectArgs {
    /// The log directory of one group.
    pub dir: PathBuf,
    /// The group the log belongs to.
    #[arg(long, default_value_t = 1)]
    pub group: u64,
    /// Segment size the log was written with.
    #[arg(long, default_value_t = 64 << 20)]
    pub segment_bytes: u64,
    /// Print every frame's index range and term.
    #[arg(long)]
    pub frames: bool,
}

/// Runs the inspector.
pub fn run(args: &InspectArgs) -> ExitCode {
    let args = args.clone();
    let r = crate::rt::Executor::new("inspect").run(move || async move {
        let cfg = LogConfig { segment_bytes: args.segment_bytes, ..LogConfig::new(args.group) };
        let (log, report) = Log::open(&args.dir, cfg).await.map_err(|e| e.to_string())?;
        println!("dir            {}", args.dir.display());
        println!("group          {}", args.group);
        println!("segments       {}", report.segments);
        println!("frames         {}", report.frames);
        println!("entries        {}..={}", log.first_index(), log.last_index());
        println!("last term      {}", log.last_term());
        println!("tail           {}", report.tail);
        println!("torn bytes cut {}", report.torn_bytes_cut);
        if args.frames {
            let mut next = log.first_index();
            while next <= log.last_index() {
                let frames =
                    log.read(next, log.last_index(), 1 << 20).await.map_err(|e| e.to_string())?;
                for f in &frames {
                    let fr = f.frame();
                    println!("  frame {}..={} term {} bytes {}", f.lo, f.hi, fr.term(), fr.len());
                    next = f.hi + 1;
                }
            }
        }
        log.close().await.map_err(|e| e.to_string())?;
        let (hs, state) =
            HardStateFile::open(&args.dir, args.group).await.map_err(|e| e.to_string())?;
        match state {
            Some(s) => println!(
                "hard state     term {} vote {} commit {} blob {} B",
                s.term,
                s.vote,
                s.commit,
                s.blob.len()
            ),
            None => println!("hard state     none"),
        }
        hs.close().await.map_err(|e| e.to_string())?;
        Ok::<(), String>(())
    });
    match r {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(e)) | Err(e) => {
            eprintln!("corelog inspect: {e}");
            ExitCode::FAILURE
        }
    }
}
