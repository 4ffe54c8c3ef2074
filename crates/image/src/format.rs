//! Docker-style text output: the `husk images` table.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::progress::human_size;
use crate::store::ImageSummary;

/// Seconds since the epoch of an RFC 3339 time (`2024-01-02T03:04:05.123Z`,
/// `…+02:00`). `None` if malformed.
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> { s.get(r)?.parse().ok() };
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, se) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 60 {
        return None;
    }
    let mut rest = &s[19..];
    if let Some(r) = rest.strip_prefix('.') {
        let n = r.bytes().take_while(u8::is_ascii_digit).count();
        rest = &r[n..];
    }
    let offset = match rest {
        "Z" | "z" => 0,
        _ if rest.len() == 6 && (rest.starts_with('+') || rest.starts_with('-')) => {
            let sign = if rest.starts_with('-') { -1 } else { 1 };
            let oh: i64 = rest.get(1..3)?.parse().ok()?;
            let om: i64 = rest.get(4..6)?.parse().ok()?;
            sign * (oh * 3600 + om * 60)
        }
        _ => return None,
    };
    // Days from civil (proleptic Gregorian).
    let y = if mo <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + h * 3600 + mi * 60 + se - offset)
}

/// Docker's "… ago" wording for an age in seconds.
pub fn human_age(secs: i64) -> String {
    let s = secs.max(0);
    let (m, h, d) = (s / 60, s / 3600, s / 86_400);
    match () {
        _ if s < 1 => "Less than a second ago".into(),
        _ if s < 60 => format!("{s} seconds ago"),
        _ if m == 1 => "About a minute ago".into(),
        _ if m < 60 => format!("{m} minutes ago"),
        _ if h == 1 => "About an hour ago".into(),
        _ if h < 48 => format!("{h} hours ago"),
        _ if d < 14 => format!("{d} days ago"),
        _ if d < 60 => format!("{} weeks ago", d / 7),
        _ if d < 730 => format!("{} months ago", d / 30),
        _ => format!("{} years ago", d / 365),
    }
}

/// The `husk images` table (REPOSITORY, TAG, IMAGE ID, CREATED, SIZE), as Docker prints it.
pub fn images_table(rows: &[ImageSummary], now: SystemTime) -> String {
    let now = now
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let mut table = vec![[
        "REPOSITORY".to_string(),
        "TAG".to_string(),
        "IMAGE ID".to_string(),
        "CREATED".to_string(),
        "SIZE".to_string(),
    ]];
    for r in rows {
        let created = r
            .created
            .as_deref()
            .and_then(parse_rfc3339)
            .map(|t| human_age(now - t))
            .unwrap_or_else(|| "N/A".into());
        table.push([
            r.repository.clone(),
            r.tag.clone(),
            r.id.short().to_string(),
            created,
            human_size(r.size),
        ]);
    }
    columns(&table)
}

/// Rows as Docker prints its tables: each column as wide as its widest
/// cell, three spaces between columns, no trailing spaces.
pub fn columns<const N: usize>(rows: &[[String; N]]) -> String {
    layout(rows.iter().map(|r| &r[..]), 0)
}

/// Rows as Docker's `tabwriter` (minimum cell width 10, padding 3) lays
/// out `husk history` and `husk system df`: each column but the last as wide
/// as its widest cell plus three spaces, and at least ten; no trailing spaces.
pub fn table(rows: &[Vec<String>]) -> String {
    layout(rows.iter().map(|r| &r[..]), 10)
}

/// Lays out rows of cells (rows may be short): each column but the last as
/// wide as its widest cell plus three spaces, and at least `min_width`; no
/// trailing spaces.
pub fn layout<'a>(rows: impl Iterator<Item = &'a [String]> + Clone, min_width: usize) -> String {
    let mut widths: Vec<usize> = Vec::new();
    for row in rows.clone() {
        if widths.len() < row.len() {
            widths.resize(row.len(), 0);
        }
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count() + 3).max(min_width);
        }
    }
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (i, c) in row.iter().enumerate() {
            if i + 1 == row.len() {
                line.push_str(c);
            } else {
                line.push_str(&format!("{c:<w$}", w = widths[i]));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::Digest;

    #[test]
    fn times_and_table() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339("2024-01-02T03:04:05Z"), Some(1_704_164_645));
        assert_eq!(
            parse_rfc3339("2024-01-02T05:04:05.999+02:00"),
            Some(1_704_164_645)
        );
        assert_eq!(parse_rfc3339("yesterday"), None);
        assert_eq!(human_age(30), "30 seconds ago");
        assert_eq!(human_age(3 * 86_400), "3 days ago");
        assert_eq!(human_age(800 * 86_400), "2 years ago");
        let row = ImageSummary {
            repository: "alpine".into(),
            tag: "latest".into(),
            digest: None,
            id: Digest::of(b"x"),
            created: Some("2024-01-02T03:04:05Z".into()),
            size: 3_400_000,
        };
        let now = UNIX_EPOCH + std::time::Duration::from_secs(1_704_164_645 + 7200);
        let t = images_table(&[row], now);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(
            lines[0],
            "REPOSITORY   TAG      IMAGE ID       CREATED       SIZE"
        );
        assert_eq!(
            lines[1],
            format!(
                "alpine       latest   {}   2 hours ago   3.4MB",
                Digest::of(b"x").short()
            )
        );
    }
}
