//! Ollama model names, compared the way Ollama compares them.
//!
//! A name is `[host/][namespace/]model[:tag][@digest]`, with the defaults
//! `registry.ollama.ai`, `library` and `latest`. `llama3.2`, `llama3.2:latest`,
//! `library/llama3.2` and `LLAMA3.2` all name one model. Route, de-duplicate and
//! compare on [`key`]; show [`display`].

const DEFAULT_HOST: &str = "registry.ollama.ai";
const DEFAULT_NAMESPACE: &str = "library";
const DEFAULT_TAG: &str = "latest";

/// The shortest display form Ollama uses in listings: default host and
/// namespace dropped, tag always present (`llama3.2` → `llama3.2:latest`).
pub fn display(name: &str) -> String {
    let name = name.trim();
    let name = name.split_once('@').map_or(name, |(n, _)| n);
    let (prefix, last) = name.rsplit_once('/').unwrap_or(("", name));
    let (model, tag) = match last.rsplit_once(':') {
        Some((m, t)) if !t.is_empty() => (m, t),
        _ => (last.trim_end_matches(':'), DEFAULT_TAG),
    };
    let (host, namespace) = match prefix.split_once('/') {
        Some((host, ns)) => (host, ns),
        None if prefix.is_empty() => (DEFAULT_HOST, DEFAULT_NAMESPACE),
        None => (DEFAULT_HOST, prefix),
    };
    if !host.eq_ignore_ascii_case(DEFAULT_HOST) {
        format!("{host}/{namespace}/{model}:{tag}")
    } else if namespace.eq_ignore_ascii_case(DEFAULT_NAMESPACE) {
        format!("{model}:{tag}")
    } else {
        format!("{namespace}/{model}:{tag}")
    }
}

/// The comparison key: the display form, lower-cased. Two names with the same
/// key name the same model.
pub fn key(name: &str) -> String {
    display(name).to_ascii_lowercase()
}

/// Whether two names name the same model.
pub fn same(a: &str, b: &str) -> bool {
    key(a) == key(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_forms() {
        assert_eq!(display("llama3.2"), "llama3.2:latest");
        assert_eq!(display("llama3.2:latest"), "llama3.2:latest");
        assert_eq!(display("library/llama3.2"), "llama3.2:latest");
        assert_eq!(
            display("registry.ollama.ai/library/llama3.2:latest"),
            "llama3.2:latest"
        );
        assert_eq!(display("qwen2.5:14b"), "qwen2.5:14b");
        assert_eq!(display("user/model:tag"), "user/model:tag");
        assert_eq!(display("hf.co/org/repo:Q4_K_M"), "hf.co/org/repo:Q4_K_M");
        assert_eq!(display("myreg:5000/ns/m"), "myreg:5000/ns/m:latest");
        assert_eq!(display("llama3.2@sha256:abc"), "llama3.2:latest");
    }

    #[test]
    fn same_model_many_spellings() {
        for n in [
            "llama3.2",
            "LLAMA3.2",
            "library/llama3.2",
            "registry.ollama.ai/library/llama3.2:latest",
        ] {
            assert!(same(n, "llama3.2:latest"), "{n}");
        }
        assert!(!same("llama3.2", "llama3.2:1b"));
        assert!(!same("llama3.2", "user/llama3.2"));
    }
}
