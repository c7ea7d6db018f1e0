//! `cargo xtask docs [--open|--serve]`: the mdBook in `docs/` and the workspace's API
//! docs as one site, `<target>/site` (the book at the root, rustdoc under `api/`).
//!
//! Before building, every `{{#include}}` of the book is checked (the file exists, a
//! named anchor has both its `ANCHOR:` and `ANCHOR_END:` lines, included Rust is a
//! compiled file) because mdBook only warns about them. After building, every
//! relative `href`/`src` of every page must name a file of the site, and a `#anchor`
//! an `id` in it. The latest benchmark report, if there is one, is copied into the
//! book's Benchmarks chapter.

use std::collections::HashMap;
use std::fs;
use std::path::{Component, Path, PathBuf};
use std::process::Command;

use crate::{USAGE, cargo, metadata, root, run_cmd, target_dir};

/// The mdBook release `cargo xtask docs` installs when `mdbook` is missing: the 0.5
/// line builds with the workspace's toolchain. Only the `search` feature: no
/// `mdbook serve` (`--serve` uses `berth serve`), which saves most of the compile.
const MDBOOK_VERSION: &str = "0.5.4";

pub(crate) fn run(args: &[String]) -> Result<(), String> {
    let (mut open, mut serve) = (false, false);
    for a in args {
        match a.as_str() {
            "--open" => open = true,
            "--serve" => serve = true,
            _ => return Err(USAGE.into()),
        }
    }
    let root = root();
    let book = root.join("docs");
    let target = target_dir()?;
    let site = target.join("site");

    eprintln!("xtask: [1/5] the benchmark report into the book");
    copy_bench_report(&target.join("bench-report"), &book.join("src/generated"))?;

    eprintln!("xtask: [2/5] the book's includes and code blocks");
    let mut problems = check_includes(&book.join("src"))?;
    problems.extend(check_code_blocks(&book.join("src"))?);
    if !problems.is_empty() {
        return Err(format!("broken includes or uncompiled code in the book:\n  {}", problems.join("\n  ")));
    }

    eprintln!("xtask: [3/5] mdbook build");
    let mdbook = ensure_mdbook()?;
    if site.exists() {
        fs::remove_dir_all(&site).map_err(|e| format!("{}: {e}", site.display()))?;
    }
    run_cmd(Command::new(&mdbook).arg("build").arg(&book).arg("--dest-dir").arg(&site))?;

    eprintln!("xtask: [4/5] cargo doc --workspace --no-deps");
    run_cmd(cargo().args(["doc", "--workspace", "--no-deps"]))?;
    copy_api_docs(&target.join("doc"), &site.join("api"), &workspace_target_names()?)?;

    eprintln!("xtask: [5/5] link check");
    let (pages, broken) = check_links(&site)?;
    if !broken.is_empty() {
        let list = target.join("site-broken-links.txt");
        fs::write(&list, broken.join("\n") + "\n").map_err(|e| format!("{}: {e}", list.display()))?;
        return Err(format!(
            "{} broken internal links in {} (all of them in {}):\n  {}",
            broken.len(),
            site.display(),
            list.display(),
            broken.iter().take(20).map(String::as_str).collect::<Vec<_>>().join("\n  ")
        ));
    }
    println!("site: {} ({pages} pages, every internal link resolves)", site.join("index.html").display());

    if open {
        let index = site.join("index.html");
        if Command::new("xdg-open").arg(&index).status().map(|s| s.success()).unwrap_or(false) {
            return Ok(());
        }
        println!("open {} in a browser (xdg-open is not available)", index.display());
    }
    if serve {
        // The project's own static file server serves the site.
        run_cmd(
            cargo()
                .args(["run", "--release", "-p", "berth-cli", "--", "serve"])
                .arg(&site)
                .args(["--addr", "127.0.0.1:3000"]),
        )?;
    }
    Ok(())
}

/// The rustdoc folder names of the workspace's libraries and binaries (`berth_buf`, ...).
fn workspace_target_names() -> Result<Vec<String>, String> {
    let v = metadata()?;
    let mut names = Vec::new();
    for package in v["packages"].as_array().into_iter().flatten() {
        for t in package["targets"].as_array().into_iter().flatten() {
            let documented = t["kind"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|k| matches!(k.as_str(), Some("lib" | "rlib" | "proc-macro" | "bin")));
            if let (true, Some(name)) = (documented, t["name"].as_str()) {
                names.push(name.replace('-', "_"));
            }
        }
    }
    Ok(names)
}

/// `mdbook` on the PATH (or in cargo's bin folder), installed with
/// `cargo install --locked` when it is missing.
fn ensure_mdbook() -> Result<PathBuf, String> {
    let cargo_bin = env_home().map(|h| h.join(".cargo/bin/mdbook"));
    let candidates = [Some(PathBuf::from("mdbook")), cargo_bin];
    for c in candidates.iter().flatten() {
        if Command::new(c).arg("--version").output().map(|o| o.status.success()).unwrap_or(false) {
            return Ok(c.clone());
        }
    }
    eprintln!("xtask: mdbook is missing: installing mdbook {MDBOOK_VERSION} (a few minutes, once)");
    run_cmd(cargo().args([
        "install",
        "--locked",
        "mdbook",
        "--version",
        MDBOOK_VERSION,
        "--no-default-features",
        "--features",
        "search",
    ]))?;
    let cargo_home = std::env::var_os("CARGO_HOME").map(PathBuf::from).or_else(|| env_home().map(|h| h.join(".cargo")));
    let installed = cargo_home.map(|h| h.join("bin/mdbook")).ok_or("no CARGO_HOME or HOME to find mdbook in")?;
    if installed.exists() { Ok(installed) } else { Err(format!("mdbook not found at {}", installed.display())) }
}

fn env_home() -> Option<PathBuf> {
    std::env::var_os("HOME").map(PathBuf::from)
}

/// Puts the latest `cargo xtask bench` report into `docs/src/generated/` (ignored by
/// git), where the Benchmarks chapter includes it; without a report, a line saying how
/// to make one.
fn copy_bench_report(report_dir: &Path, generated: &Path) -> Result<(), String> {
    if generated.exists() {
        fs::remove_dir_all(generated).map_err(|e| format!("{}: {e}", generated.display()))?;
    }
    fs::create_dir_all(generated).map_err(|e| format!("{}: {e}", generated.display()))?;
    let md = match fs::read_to_string(report_dir.join("report.md")) {
        Ok(text) => {
            for entry in fs::read_dir(report_dir).map_err(|e| e.to_string())? {
                let path = entry.map_err(|e| e.to_string())?.path();
                if path.extension().is_some_and(|x| x == "svg") {
                    let to = generated.join(path.file_name().unwrap_or_default());
                    fs::copy(&path, &to).map_err(|e| format!("{}: {e}", path.display()))?;
                }
            }
            book_report(&text, "generated/")
        }
        Err(_) => "No report on this machine yet: run `cargo xtask bench --quick`, then \
                   `cargo xtask docs`, and it appears here.\n"
            .to_string(),
    };
    fs::write(generated.join("bench-report.md"), md).map_err(|e| e.to_string())
}

/// `report.md` as a section of the Benchmarks chapter: without its title, headings one
/// level down, charts linked from `prefix`.
fn book_report(report: &str, prefix: &str) -> String {
    let mut out = String::new();
    for line in report.lines() {
        if line.starts_with("# ") {
            continue;
        }
        let line = if line.starts_with("## ") { format!("#{line}") } else { line.to_string() };
        let line = match (line.starts_with("!["), line.find("](")) {
            (true, Some(at)) if !line[at + 2..].contains("://") => {
                format!("{}]({prefix}{}", &line[..at], &line[at + 2..])
            }
            _ => line,
        };
        out.push_str(&line);
        out.push('\n');
    }
    out
}

/// Every `{{#include path}}` / `{{#include path:anchor}}` (and `rustdoc_include`) under
/// `src`: the file must exist, a named anchor must be opened and closed in it, and
/// included Rust must be a file cargo compiles (a crate's `src/`, `examples/`,
/// `tests/` or `benches/`).
pub(crate) fn check_includes(src: &Path) -> Result<Vec<String>, String> {
    let mut problems = Vec::new();
    for md in files_with_ext(src, "md")? {
        let text = fs::read_to_string(&md).map_err(|e| format!("{}: {e}", md.display()))?;
        let dir = md.parent().unwrap_or(src);
        for (spec, line) in include_specs(&text) {
            let at = format!("{}:{line}", md.display());
            let mut parts = spec.splitn(2, ':');
            let file = parts.next().unwrap_or_default();
            let anchor = parts.next();
            let path = dir.join(file);
            let Ok(body) = fs::read_to_string(&path) else {
                problems.push(format!("{at}: {file}: no such file"));
                continue;
            };
            if file.ends_with(".rs")
                && !["src", "examples", "tests", "benches"].iter().any(|d| file.contains(&format!("/{d}/")))
            {
                problems.push(format!("{at}: {file}: not a compiled file (src/, examples/, tests/, benches/)"));
            }
            if let Some(anchor) = anchor.filter(|a| !a.is_empty() && !a.starts_with(|c: char| c.is_ascii_digit())) {
                let opens = body.lines().any(|l| anchor_name(l, "ANCHOR:") == Some(anchor));
                let closes = body.lines().any(|l| anchor_name(l, "ANCHOR_END:") == Some(anchor));
                if !(opens && closes) {
                    problems.push(format!("{at}: {file}: anchor `{anchor}` is not opened and closed there"));
                }
            }
        }
    }
    Ok(problems)
}

/// The book's `mdbook test`: every Rust code block must be made of `{{#include}}`s
/// (which [`check_includes`] holds to files cargo compiles, and the examples among
/// them run as tests), so no pasted code can rot. A block of inline code that is not
/// meant to compile says so with another language (`text`, `sh`, `toml`, ...). A
/// fence without a language counts as Rust, as it does for rustdoc and `mdbook test`.
pub(crate) fn check_code_blocks(src: &Path) -> Result<Vec<String>, String> {
    let mut problems = Vec::new();
    for md in files_with_ext(src, "md")? {
        let text = fs::read_to_string(&md).map_err(|e| format!("{}: {e}", md.display()))?;
        for block in code_blocks(&text) {
            let lang = block.info.split([',', ' ']).next().unwrap_or_default();
            if lang != "rust" && !lang.is_empty() {
                continue;
            }
            let inline = block.body.iter().find(|l| {
                let l = l.trim();
                !l.is_empty()
                    && !((l.starts_with("{{#include ") || l.starts_with("{{#rustdoc_include ")) && l.ends_with("}}"))
            });
            if let Some(line) = inline {
                let at = format!("{}:{}", md.display(), block.line);
                problems.push(if lang.is_empty() {
                    format!("{at}: a code block without a language is Rust to rustdoc: include Rust from a compiled file, or name the language (`text`, `sh`, ...)")
                } else {
                    format!("{at}: inline Rust (`{}`): include it by anchor from a compiled, tested file (an example), or mark the block `text` if it is not code to compile", line.trim())
                });
            }
        }
    }
    Ok(problems)
}

/// A fenced code block of a markdown text: its info string, its lines, and the line
/// number of its opening fence.
struct CodeBlock<'a> {
    info: &'a str,
    body: Vec<&'a str>,
    line: usize,
}

/// The fenced (```` ``` ```` or `~~~`) code blocks of a markdown text, at any indentation.
fn code_blocks(text: &str) -> Vec<CodeBlock<'_>> {
    let mut out = Vec::new();
    let mut open: Option<(&str, CodeBlock<'_>)> = None;
    for (n, line) in text.lines().enumerate() {
        let t = line.trim_start();
        let fence_len = |c: char| t.chars().take_while(|&x| x == c).count();
        match &mut open {
            Some((fence, block)) => {
                if t.starts_with(*fence) && t.trim_end().chars().all(|c| c == fence.chars().next().unwrap_or('`')) {
                    out.push(open.take().map(|(_, b)| b).expect("open block"));
                } else {
                    block.body.push(line);
                }
            }
            None => {
                for c in ['`', '~'] {
                    let len = fence_len(c);
                    if len >= 3 {
                        let (fence, info) = t.split_at(len);
                        open = Some((fence, CodeBlock { info: info.trim(), body: Vec::new(), line: n + 1 }));
                        break;
                    }
                }
            }
        }
    }
    out.extend(open.map(|(_, b)| b));
    out
}

/// The anchor a line opens or closes (`// ANCHOR: name`).
fn anchor_name<'a>(line: &'a str, marker: &str) -> Option<&'a str> {
    let at = line.find(marker)?;
    line[at + marker.len()..].split_whitespace().next()
}

/// `(spec, line number)` of each include directive in a markdown text.
fn include_specs(text: &str) -> Vec<(String, usize)> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let mut rest = line;
        while let Some(at) = rest.find("{{#") {
            let escaped = rest[..at].ends_with('\\');
            let after = &rest[at + 3..];
            let Some(end) = after.find("}}") else { break };
            if escaped {
                // `\{{#include ...}}`: mdBook shows it as written.
                rest = &after[end + 2..];
                continue;
            }
            let directive = after[..end].trim();
            for kw in ["include ", "rustdoc_include "] {
                if let Some(spec) = directive.strip_prefix(kw) {
                    out.push((spec.trim().to_string(), n + 1));
                }
            }
            rest = &after[end + 2..];
        }
    }
    out
}

/// Copies the workspace's rustdoc output into the site: its crates' folders, their
/// sources and rustdoc's shared files, not documentation of dependencies that an
/// earlier `cargo doc` may have left in the same folder.
fn copy_api_docs(doc: &Path, api: &Path, crates: &[String]) -> Result<(), String> {
    fs::create_dir_all(api).map_err(|e| e.to_string())?;
    for entry in fs::read_dir(doc).map_err(|e| format!("{}: {e}", doc.display()))? {
        let entry = entry.map_err(|e| e.to_string())?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        if path.is_file() {
            fs::copy(&path, api.join(&name)).map_err(|e| format!("{}: {e}", path.display()))?;
        } else if name == "src" {
            for c in crates {
                let from = path.join(c);
                if from.is_dir() {
                    copy_dir(&from, &api.join("src").join(c))?;
                }
            }
        } else if crates.contains(&name)
            || ["static.files", "trait.impl", "type.impl", "search.index"].contains(&name.as_str())
        {
            copy_dir(&path, &api.join(&name))?;
        }
    }
    // rustdoc's help and settings pages link to `./index.html`, which `cargo doc`
    // leaves to the user: a list of the crates, and the way back to the book.
    let mut items = String::new();
    for c in crates.iter().filter(|c| api.join(c).join("index.html").is_file()) {
        items.push_str(&format!("<li><a href=\"{c}/index.html\">{c}</a></li>\n"));
    }
    let index = format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>berth API reference</title></head>\n\
         <body><h1>berth API reference</h1>\n<p><a href=\"../index.html\">The berth book</a></p>\n<ul>\n{items}</ul>\n</body></html>\n"
    );
    fs::write(api.join("index.html"), index).map_err(|e| e.to_string())
}

fn copy_dir(from: &Path, to: &Path) -> Result<(), String> {
    fs::create_dir_all(to).map_err(|e| format!("{}: {e}", to.display()))?;
    for entry in fs::read_dir(from).map_err(|e| format!("{}: {e}", from.display()))? {
        let entry = entry.map_err(|e| e.to_string())?;
        let (path, dest) = (entry.path(), to.join(entry.file_name()));
        if path.is_dir() {
            copy_dir(&path, &dest)?;
        } else {
            fs::copy(&path, &dest).map_err(|e| format!("{}: {e}", path.display()))?;
        }
    }
    Ok(())
}

fn files_with_ext(dir: &Path, ext: &str) -> Result<Vec<PathBuf>, String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).map_err(|e| format!("{}: {e}", d.display()))? {
            let path = entry.map_err(|e| e.to_string())?.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|x| x == ext) {
                out.push(path);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Checks every relative `href="..."` and `src="..."` of every `.html` file under
/// `site`: the file it names must exist (a folder stands for its `index.html`), and a
/// `#fragment` must be an `id` (or `name`) in it. Links with a scheme and links to a
/// fragment of the same page are not checked, nor rustdoc's source-line fragments
/// (`#10-20`, resolved by script). Returns the pages checked and the broken links.
pub(crate) fn check_links(site: &Path) -> Result<(usize, Vec<String>), String> {
    let pages = files_with_ext(site, "html")?;
    let mut ids: HashMap<PathBuf, Vec<String>> = HashMap::new();
    let mut broken = Vec::new();
    let mut names = 0;
    let in_api = |page: &Path| page.strip_prefix(site).is_ok_and(|p| p.starts_with("api"));
    for page in &pages {
        let html = fs::read_to_string(page).map_err(|e| format!("{}: {e}", page.display()))?;
        let dir = page.parent().unwrap_or(site);
        for link in links(&html) {
            if link.is_empty()
                || link.starts_with('#')
                || link.contains("://")
                || link.starts_with("//")
                || link.starts_with("mailto:")
                || link.starts_with("javascript:")
                || link.starts_with("data:")
                || link.contains("{{")
            {
                continue;
            }
            let (path_part, fragment) = match link.split_once('#') {
                Some((p, f)) => (p, Some(f)),
                None => (link, None),
            };
            let path_part = path_part.split('?').next().unwrap_or_default();
            // rustdoc copies the docs of a dependency's trait methods into our pages
            // with their intra-doc links unresolved (`super::Subscriber`,
            // `Buf::remaining`): names, not files. Our own crates' unresolved links are
            // errors of `RUSTDOCFLAGS="-D warnings" cargo doc` already.
            let last = path_part.rsplit('/').next().unwrap_or_default();
            let names_no_file = path_part.contains("::") || (!last.is_empty() && !last.contains('.'));
            if in_api(page) && names_no_file && !dir.join(path_part).is_dir() {
                names += 1;
                continue;
            }
            let target = if let Some(abs) = path_part.strip_prefix('/') { site.join(abs) } else { dir.join(path_part) };
            let mut target = normalize(&target);
            if target.is_dir() {
                target = target.join("index.html");
            }
            let shown = || format!("{}: {link}", page.strip_prefix(site).unwrap_or(page).display());
            if !target.starts_with(site) || !target.is_file() {
                broken.push(shown());
                continue;
            }
            let Some(fragment) = fragment.filter(|f| !f.is_empty()) else { continue };
            if fragment.chars().all(|c| c.is_ascii_digit() || c == '-')
                || target.extension().is_none_or(|x| x != "html")
            {
                continue;
            }
            let known = ids.entry(target.clone()).or_insert_with(|| page_ids(&target));
            if !known.iter().any(|id| id == fragment) {
                broken.push(shown());
            }
        }
    }
    if names > 0 {
        eprintln!("xtask: not checked: {names} unresolved intra-doc names in dependencies' docs copied by rustdoc");
    }
    Ok((pages.len(), broken))
}

/// The ids of a page; a rustdoc redirect page (`<meta http-equiv="refresh">`, left
/// where a re-exported item's private path was) stands for the page it leads to.
fn page_ids(page: &Path) -> Vec<String> {
    let text = fs::read_to_string(page).unwrap_or_default();
    let redirect = text.find("http-equiv=\"refresh\"").and_then(|_| {
        let at = text.find("URL=")?;
        let rest = &text[at + 4..];
        Some(&rest[..rest.find('"')?])
    });
    match redirect {
        Some(to) => {
            let target = normalize(&page.parent().unwrap_or(Path::new(".")).join(to));
            element_ids(&fs::read_to_string(target).unwrap_or_default())
        }
        None => element_ids(&text),
    }
}

/// The values of `href="..."` and `src="..."` attributes of the tags of a page. Only
/// text inside `<...>` counts: a `<` in text is `&lt;`, so source listings and examples
/// that quote HTML are not mistaken for links; inline script bodies are skipped.
fn links(html: &str) -> Vec<&str> {
    let mut out = Vec::new();
    for chunk in without_scripts(html) {
        let mut rest = chunk;
        while let Some(open) = rest.find('<') {
            let tag = &rest[open..];
            let end = tag.find('>').unwrap_or(tag.len());
            let mut attrs = &tag[..end];
            rest = &tag[end..];
            while let Some(at) =
                [" href=\"", " src=\""].iter().filter_map(|a| attrs.find(a).map(|i| (i, a.len()))).min()
            {
                let value = &attrs[at.0 + at.1..];
                let Some(close) = value.find('"') else { break };
                out.push(&value[..close]);
                attrs = &value[close..];
            }
        }
    }
    out
}

/// The page split around inline `<script>` bodies, which may hold attribute-like text.
fn without_scripts(html: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = html;
    while let Some(open) = rest.find("<script") {
        let Some(tag_end) = rest[open..].find('>') else { break };
        // Keep the opening tag itself (its src="..." is a link).
        out.push(&rest[..open + tag_end + 1]);
        let body = &rest[open + tag_end + 1..];
        match body.find("</script>") {
            Some(close) => rest = &body[close..],
            None => return out,
        }
    }
    out.push(rest);
    out
}

/// The `id="..."` and `name="..."` values of a page.
fn element_ids(html: &str) -> Vec<String> {
    let mut out = Vec::new();
    for attr in [" id=\"", " name=\""] {
        let mut rest = html;
        while let Some(at) = rest.find(attr) {
            let value = &rest[at + attr.len()..];
            let Some(end) = value.find('"') else { break };
            out.push(value[..end].to_string());
            rest = &value[end..];
        }
    }
    out
}

/// `a/b/../c` → `a/c`, without touching the file system.
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("xtask-docs-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn link_check_finds_missing_files_and_anchors() {
        let site = temp("links");
        fs::create_dir_all(site.join("api/berth_buf")).unwrap();
        fs::write(site.join("api/berth_buf/index.html"), r#"<h2 id="structs">Structs</h2>"#).unwrap();
        fs::write(
            site.join("index.html"),
            r##"<a href="api/berth_buf/index.html#structs">ok</a> <a href="api/berth_buf/">dir</a>
               <a href="https://example.com/x">external</a> <a href="#top">same page</a>
               <img src="missing.svg"> <a href="api/berth_buf/index.html#nope">bad anchor</a>
               <script>var s = ' href="ignored.html"';</script>"##,
        )
        .unwrap();
        let (pages, broken) = check_links(&site).unwrap();
        assert_eq!(pages, 2);
        assert_eq!(broken, ["index.html: missing.svg", "index.html: api/berth_buf/index.html#nope"]);
        let _ = fs::remove_dir_all(&site);
    }

    #[test]
    fn include_check_finds_missing_files_and_anchors() {
        let dir = temp("includes");
        fs::create_dir_all(dir.join("src")).unwrap();
        fs::create_dir_all(dir.join("crate/examples")).unwrap();
        fs::write(
            dir.join("crate/examples/a.rs"),
            "// ANCHOR: good\nfn main() {}\n// ANCHOR_END: good\n// ANCHOR: open\n",
        )
        .unwrap();
        fs::write(
            dir.join("src/page.md"),
            "{{#include ../crate/examples/a.rs:good}}\n{{#include ../crate/examples/a.rs:open}}\n\
             {{#include ../crate/examples/b.rs}}\n{{#include ../crate/examples/a.rs:1:2}}\n\
             `\\{{#include ../crate/examples/shown_not_included.rs}}`\n",
        )
        .unwrap();
        let problems = check_includes(&dir.join("src")).unwrap();
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(
            problems[0].ends_with("page.md:2: ../crate/examples/a.rs: anchor `open` is not opened and closed there")
        );
        assert!(problems[1].ends_with("page.md:3: ../crate/examples/b.rs: no such file"));
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_book_includes_resolve() {
        let problems = check_includes(&root().join("docs/src")).unwrap();
        // The generated report is only there after `cargo xtask docs` has run.
        let problems: Vec<_> = problems.iter().filter(|p| !p.contains("generated/")).collect();
        assert!(problems.is_empty(), "{problems:#?}");
    }

    #[test]
    fn code_block_check_refuses_inline_rust() {
        let dir = temp("blocks");
        fs::write(
            dir.join("page.md"),
            "```rust,ignore\n{{#include ../x/examples/a.rs:anchor}}\n\n```\n\
             ```sh\ncargo xtask docs\n```\n\
             ```text\nlet x = 1; // not compiled, on purpose\n```\n\
             - in a list:\n\n  ```rust\n  fn pasted() {}\n  ```\n\
             ````\nunlabelled\n````\n",
        )
        .unwrap();
        let problems = check_code_blocks(&dir).unwrap();
        assert_eq!(problems.len(), 2, "{problems:#?}");
        assert!(problems[0].contains("page.md:13: inline Rust (`fn pasted() {}`)"), "{}", problems[0]);
        assert!(problems[1].contains("page.md:16: a code block without a language"), "{}", problems[1]);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_book_has_no_inline_rust() {
        let problems = check_code_blocks(&root().join("docs/src")).unwrap();
        assert!(problems.is_empty(), "{problems:#?}");
    }

    #[test]
    fn report_becomes_a_section_of_the_chapter() {
        let md = "# berth benchmark report\n\n## buf\n\n![buf: x](buf.svg)\n| a |\n";
        assert_eq!(book_report(md, "generated/"), "\n### buf\n\n![buf: x](generated/buf.svg)\n| a |\n");
    }
}
