//! Cost of the consensus core per proposal, no I/O: a leader and two followers in one
//! thread; each iteration proposes a batch, replicates it, reports every write durable at
//! once and delivers the acknowledgements until the batch is committed and replied to. The
//! time is the CPU of all three replicas' cores together (what the protocol itself costs);
//! divide by the batch size (criterion's "elements") for nanoseconds per proposal.
//!
//! Run: `cargo bench --bench consensus`. Entries are 64-byte slices of one shared buffer.

use std::hint::black_box;

use bytes::Bytes;
use corelog::consensus::{Config, Membership, Message, Node, Ready, Role};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

struct Trio {
    nodes: Vec<Node>,
    net: Vec<Message>,
    replies: usize,
}

impl Trio {
    fn new() -> Self {
        let cfg = Config {
            election_tick: 1_000_000,
            heartbeat_tick: 1,
            max_pending_proposals: 1 << 20,
            ..Config::default()
        };
        let m = Membership::with_voters(&[(1, 1), (2, 1), (3, 1)]);
        let mut t = Self {
            nodes: (1..=3).map(|i| Node::new(i, cfg.clone(), m.clone(), 1)).collect(),
            net: Vec::new(),
            replies: 0,
        };
        t.nodes[0].campaign();
        t.settle();
        assert_eq!(t.nodes[0].role(), Role::Leader);
        t
    }

    fn execute(node: &mut Node, rd: Ready, net: &mut Vec<Message>) -> usize {
        net.extend(rd.messages);
        if let Some(hs) = rd.hard_state {
            node.on_hard_state_durable(hs);
        }
        if let Some(w) = &rd.entries {
            let last = w.entries.last().expect("non-empty");
            node.on_entries_durable(last.index, last.term);
        }
        rd.replies.len()
    }

    fn settle(&mut self) {
        loop {
            let mut idle = true;
            for n in &mut self.nodes {
                let rd = n.take_ready();
                idle &= rd.is_empty();
                self.replies += Self::execute(n, rd, &mut self.net);
            }
            if idle && self.net.is_empty() {
                return;
            }
            for m in std::mem::take(&mut self.net) {
                let to = m.to as usize - 1;
                self.nodes[to].step(m);
            }
        }
    }
}

fn bench(c: &mut Criterion) {
    let buf = Bytes::from(vec![7u8; 64 * 256]);
    let mut g = c.benchmark_group("consensus/propose_replicate_commit");
    for batch in [1usize, 16, 256] {
        g.throughput(Throughput::Elements(batch as u64));
        g.bench_with_input(BenchmarkId::from_parameter(batch), &batch, |b, &batch| {
            let mut t = Trio::new();
            let mut seq = 0u64;
            b.iter(|| {
                for i in 0..batch {
                    seq += 1;
                    let data = buf.slice(i * 64..(i + 1) * 64);
                    black_box(t.nodes[0].propose(1 + (seq & 1023), seq, data).expect("accepted"));
                }
                t.settle();
                // Keep memory flat: trim what every replica has committed.
                if seq % 4096 < batch as u64 {
                    for n in &mut t.nodes {
                        let c = n.commit_index();
                        n.trim(c, Bytes::new());
                    }
                }
            });
            assert!(t.replies > 0);
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
