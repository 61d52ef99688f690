//! How errors read: one line, each cause once (the runtime's callers, podman, docker,
//! containerd and scripts, show the last line of stderr or the `--log` message alone).

/// The error and its causes on one line, each cause once: our error types name their source
/// in their own message (so they read well alone), and anyhow's `{:#}` would repeat it.
pub fn one_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !line.contains(&text) {
            if !line.is_empty() {
                line.push_str(": ");
            }
            line.push_str(&text);
        }
    }
    line
}

#[cfg(test)]
mod tests {
    use super::one_line;

    #[test]
    fn a_cause_already_in_the_message_is_not_repeated() {
        let io = std::io::Error::from_raw_os_error(30);
        let outer = anyhow::Error::new(io).context(format!(
            "image cache /c: {}",
            std::io::Error::from_raw_os_error(30)
        ));
        assert_eq!(
            one_line(&outer),
            "image cache /c: Read-only file system (os error 30)"
        );
        let plain = anyhow::anyhow!("disk full").context("write /x");
        assert_eq!(one_line(&plain), "write /x: disk full");
    }
}
