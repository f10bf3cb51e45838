//! Plain-text tables in the style of `kubectl get`: upper-case headers, columns separated by
//! at least two spaces and as wide as their widest cell (so IPv6 prefixes line up too).

/// Placeholder for an absent value.
pub const NONE: &str = "-";

/// A table being built.
#[derive(Debug, Clone)]
pub struct Table {
    headers: Vec<&'static str>,
    rows: Vec<Vec<String>>,
    /// Columns dropped when every cell in them is [`NONE`].
    optional: Vec<bool>,
}

impl Table {
    /// A table with these column headers.
    pub fn new(headers: &[&'static str]) -> Table {
        Table {
            headers: headers.to_vec(),
            rows: Vec::new(),
            optional: vec![false; headers.len()],
        }
    }

    /// Marks the column `header` as optional: left out when no row has a value in it.
    pub fn optional(mut self, header: &str) -> Table {
        if let Some(i) = self.headers.iter().position(|h| *h == header) {
            self.optional[i] = true;
        }
        self
    }

    /// Appends a row; missing cells render as [`NONE`], extra cells are ignored.
    pub fn row(&mut self, cells: Vec<String>) {
        let mut cells = cells;
        cells.resize(self.headers.len(), NONE.to_owned());
        self.rows.push(cells);
    }

    /// Whether no rows were added.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The rendered table, one line per row after the header line, each ending in `\n`.
    pub fn render(&self) -> String {
        let shown: Vec<usize> = (0..self.headers.len())
            .filter(|&c| !self.optional[c] || self.rows.iter().any(|r| r[c] != NONE))
            .collect();
        let width = |c: usize| {
            self.rows
                .iter()
                .map(|r| r[c].chars().count())
                .chain([self.headers[c].len()])
                .max()
                .unwrap_or(0)
        };
        let widths: Vec<usize> = shown.iter().map(|&c| width(c)).collect();
        let mut out = String::new();
        let header: Vec<&str> = shown.iter().map(|&c| self.headers[c]).collect();
        push_line(&mut out, &header, &widths);
        for row in &self.rows {
            let cells: Vec<&str> = shown.iter().map(|&c| row[c].as_str()).collect();
            push_line(&mut out, &cells, &widths);
        }
        out
    }
}

fn push_line(out: &mut String, cells: &[&str], widths: &[usize]) {
    let mut line = String::new();
    for (i, (cell, width)) in cells.iter().zip(widths).enumerate() {
        if i + 1 == cells.len() {
            line.push_str(cell);
        } else {
            line.push_str(cell);
            let pad = width.saturating_sub(cell.chars().count()) + 2;
            line.extend(std::iter::repeat_n(' ', pad));
        }
    }
    out.push_str(line.trim_end());
    out.push('\n');
}

/// Key/value lines with the keys padded to a common width.
pub fn pairs(items: &[(&str, String)]) -> String {
    let width = items.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    items
        .iter()
        .map(|(k, v)| format!("{k:<width$}  {v}\n"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align_to_the_widest_cell() {
        let mut t = Table::new(&["CIDR", "SOURCE", "REASON"]);
        t.row(vec![
            "192.0.2.0/24".into(),
            "operator".into(),
            "scanner".into(),
        ]);
        t.row(vec![
            "2001:db8:1234:5678::/64".into(),
            "feed:/etc/relay/level1.netset".into(),
            NONE.into(),
        ]);
        assert_eq!(
            t.render(),
            "\
CIDR                     SOURCE                         REASON
192.0.2.0/24             operator                       scanner
2001:db8:1234:5678::/64  feed:/etc/relay/level1.netset  -
"
        );
    }

    #[test]
    fn optional_columns_without_values_are_left_out() {
        let mut t = Table::new(&["CIDR", "EXPIRES", "SOURCE"]).optional("EXPIRES");
        t.row(vec!["10.0.0.0/8".into(), NONE.into(), "config".into()]);
        assert_eq!(t.render(), "CIDR        SOURCE\n10.0.0.0/8  config\n");
        t.row(vec!["::1/128".into(), "2h".into(), "operator".into()]);
        assert_eq!(
            t.render(),
            "CIDR        EXPIRES  SOURCE\n10.0.0.0/8  -        config\n::1/128     2h       operator\n"
        );
    }

    #[test]
    fn short_rows_are_padded_and_no_trailing_spaces() {
        let mut t = Table::new(&["A", "B", "C"]);
        assert!(t.is_empty());
        t.row(vec!["x".into()]);
        t.row(vec!["long".into(), String::new(), String::new()]);
        assert_eq!(t.render(), "A     B  C\nx     -  -\nlong\n");
    }

    #[test]
    fn pairs_pad_keys() {
        assert_eq!(
            pairs(&[("name", "alice".into()), ("enabled", "yes".into())]),
            "name     alice\nenabled  yes\n"
        );
    }
}
