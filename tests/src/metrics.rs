//! Reading Prometheus text exposition in tests.

/// The sum of the samples of metric `name` (exact name, any labels) whose line contains every
/// fragment of `labels` (e.g. `pool="default/llm"`). 0 when there is none.
pub fn sum(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.split(['{', ' ']).next() == Some(name))
        .filter(|l| labels.iter().all(|f| l.contains(f)))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::sum;

    #[test]
    fn sums_matching_series_of_the_exact_name() {
        let text = "# HELP x_total help\n# TYPE x_total counter\n\
                    x_total{pool=\"a\",code=\"200\"} 3\nx_total{pool=\"b\",code=\"200\"} 4\n\
                    x_total_other 100\nx 7\n";
        assert_eq!(sum(text, "x_total", &[]), 7.0);
        assert_eq!(sum(text, "x_total", &["pool=\"a\""]), 3.0);
        assert_eq!(sum(text, "x", &[]), 7.0);
        assert_eq!(sum(text, "missing", &[]), 0.0);
    }
}
