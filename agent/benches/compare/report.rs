//! The table the benchmark prints: one row per figure, a column per program, the median of
//! each cell's samples, and for each peer the ratio agent/peer.

use std::collections::BTreeMap;

use super::forwarders;

/// Column of the traffic or command without any wrapper.
pub const DIRECT: &str = "direct";
pub const AGENT: &str = "amlx-agent";
pub const TINI: &str = "tini";
/// Every column, in order: the last two are the plain forwarder chains, the floor of a
/// path of two and three processes (figures 4 to 6 only).
const COLUMNS: [&str; 8] = [
    DIRECT,
    AGENT,
    "rathole",
    "bore",
    "websocat",
    TINI,
    forwarders::TWO,
    forwarders::THREE,
];
/// The tunnel peers a row applies to unless it says otherwise.
const TUNNEL_PEERS: [&str; 3] = ["rathole", "bore", "websocat"];

/// One figure.
#[derive(Debug)]
pub struct Row {
    pub label: String,
    unit: &'static str,
    samples: BTreeMap<&'static str, Vec<f64>>,
    /// Peers this figure is taken for (a missing one says so in its cell).
    peers: Vec<&'static str>,
    /// Cells other than `direct` show their median minus direct's.
    added: bool,
    /// Shown after the label: larger values are better.
    higher_is_better: bool,
}

impl Row {
    pub fn new(label: &str, unit: &'static str) -> Row {
        Row {
            label: label.to_owned(),
            unit,
            samples: BTreeMap::new(),
            peers: TUNNEL_PEERS.to_vec(),
            added: false,
            higher_is_better: false,
        }
    }

    pub fn higher_is_better(mut self) -> Row {
        self.higher_is_better = true;
        self
    }

    pub fn added_over_direct(mut self) -> Row {
        self.added = true;
        self
    }

    /// A figure of the agent alone.
    pub fn only_agent(mut self) -> Row {
        self.peers.clear();
        self
    }

    /// A figure of the agent and one peer.
    pub fn only(mut self, peer: &'static str) -> Row {
        self.peers = if peer == AGENT {
            Vec::new()
        } else {
            vec![peer]
        };
        self
    }

    pub fn sample(&mut self, column: &'static str, value: f64) {
        self.samples.entry(column).or_default().push(value);
    }

    /// The figure shown for `column`.
    fn value(&self, column: &str) -> Option<f64> {
        let own = median(self.samples.get(column)?)?;
        if self.added && column != DIRECT {
            Some(own - median(self.samples.get(DIRECT)?)?)
        } else {
            Some(own)
        }
    }
}

/// The whole run: rows, peers that could not take part, and notes.
#[derive(Debug, Default)]
pub struct Report {
    rows: Vec<Row>,
    missing: BTreeMap<&'static str, String>,
    notes: Vec<String>,
}

impl Report {
    /// `peer` takes part in no figure, for `why`.
    pub fn missing(&mut self, peer: &'static str, why: &str) {
        self.missing.insert(peer, why.to_owned());
    }

    pub fn note(&mut self, note: String) {
        self.notes.push(note);
    }

    /// The rows of one figure, or a note saying why it has none.
    pub fn figures(&mut self, rows: anyhow::Result<Vec<Row>>, what: &str) {
        match rows {
            Ok(rows) => self.rows.extend(rows),
            Err(err) => self.notes.push(format!("figure {what} failed: {err:#}")),
        }
    }

    /// A Markdown table on stdout, then the missing peers and the notes.
    pub fn print(&self) {
        println!("| figure | unit | {} |", COLUMNS.join(" | "));
        println!("|---|---|{}", "---:|".repeat(COLUMNS.len()));
        for row in &self.rows {
            let agent = row.value(AGENT);
            let cells: Vec<String> = COLUMNS
                .iter()
                .map(|&column| self.cell(row, column, agent))
                .collect();
            let better = if row.higher_is_better {
                " (higher is better)"
            } else {
                ""
            };
            println!(
                "| {}{better} | {} | {} |",
                row.label,
                row.unit,
                cells.join(" | ")
            );
        }
        println!();
        println!("Peer cells: value (agent/peer). Medians of interleaved rounds.");
        if self.missing.is_empty() {
            println!("Peers missing: none.");
        }
        for (peer, why) in &self.missing {
            println!("Peer missing: {peer}: {why}");
        }
        for note in &self.notes {
            println!("Note: {note}");
        }
    }

    fn cell(&self, row: &Row, column: &str, agent: Option<f64>) -> String {
        let Some(value) = row.value(column) else {
            let applies = row.peers.contains(&column);
            return match self.missing.get(column) {
                Some(_) if applies => "missing".to_owned(),
                _ => String::new(),
            };
        };
        if column == DIRECT || column == AGENT {
            return number(value);
        }
        match agent {
            Some(agent) if value != 0.0 => format!("{} ({:.2}x)", number(value), agent / value),
            _ => number(value),
        }
    }
}

fn median(values: &[f64]) -> Option<f64> {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted.get(sorted.len() / 2).copied()
}

/// Three significant digits, give or take.
fn number(v: f64) -> String {
    match v.abs() {
        a if a >= 100.0 => format!("{v:.0}"),
        a if a >= 10.0 => format!("{v:.1}"),
        a if a >= 1.0 => format!("{v:.2}"),
        _ => format!("{v:.3}"),
    }
}
