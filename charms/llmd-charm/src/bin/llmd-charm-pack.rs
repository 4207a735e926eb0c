//! `llmd-charm-pack CHARMCRAFT_YAML DISPATCH LLMD OUT`: writes a `.charm` file in the layout
//! charmcraft produces (used by `tests/run charms`).

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [yaml, dispatch, llmd, out] = args.as_slice() else {
        eprintln!("usage: llmd-charm-pack CHARMCRAFT_YAML DISPATCH LLMD OUT");
        return std::process::ExitCode::from(2);
    };
    // charmcraft records when packing started; seconds since the epoch are enough here.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let started = iso8601(now);
    match llmd_charm::pack::pack(
        std::path::Path::new(yaml),
        std::path::Path::new(dispatch),
        std::path::Path::new(llmd),
        std::path::Path::new(out),
        &started,
    ) {
        Ok(()) => {
            println!("{out}");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// `YYYY-MM-DDTHH:MM:SS.000000` (UTC) from Unix seconds.
fn iso8601(secs: u64) -> String {
    let days = secs / 86_400;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.000000",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn iso8601_dates() {
        assert_eq!(super::iso8601(0), "1970-01-01T00:00:00.000000");
        assert_eq!(super::iso8601(1_795_588_605), "2026-11-25T06:36:45.000000");
        // A leap day.
        assert_eq!(super::iso8601(951_782_400), "2000-02-29T00:00:00.000000");
    }
}
