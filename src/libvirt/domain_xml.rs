//! libvirt domain XML: enrollment edits and the hook's decision.
//!
//! Edits splice the document at the byte spans quick-xml reports, so
//! everything xftrace does not touch stays byte-for-byte as it was. What
//! enrollment changes, and `unenroll` puts back:
//! - `<memoryBacking>` gets `<source type='file'/>`, `<access mode='shared'/>`
//!   and `<allocation mode='immediate'/>` (and loses `<discard/>`, which
//!   would punch holes in the file), keeping other children;
//! - `<memballoon model='none'/>`: a balloon returns pages to the host by
//!   punching holes in the RAM file;
//! - `<metadata>` gets an `xftrace:enrollment` element recording the guest
//!   kernel's System.map and the previous memory backing and balloon.

use quick_xml::events::Event;
use quick_xml::Reader;

/// Namespace of xftrace's domain metadata.
pub const NAMESPACE: &str = "http://xftrace.invalid/ns/enrollment/1";
pub const PREFIX: &str = "xftrace";

#[derive(Clone, Debug)]
struct Node {
    /// Qualified names from the root, this element last.
    path: Vec<String>,
    attrs: Vec<(String, String)>,
    start: usize,
    end: usize,
    /// Byte span of the content, for non-empty elements.
    inner: Option<(usize, usize)>,
}

impl Node {
    fn attr(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
    fn name(&self) -> &str {
        self.path.last().map_or("", String::as_str)
    }
    fn is(&self, path: &[&str]) -> bool {
        self.path.len() == path.len() && self.path.iter().zip(path).all(|(a, b)| a == b)
    }
}

fn index(xml: &str) -> Result<Vec<Node>, String> {
    let mut r = Reader::from_str(xml);
    r.config_mut().trim_text(false);
    let mut nodes: Vec<Node> = Vec::new();
    let mut open: Vec<usize> = Vec::new();
    let mut path: Vec<String> = Vec::new();
    loop {
        let before = r.buffer_position() as usize;
        let ev = r
            .read_event()
            .map_err(|e| format!("not well-formed XML at byte {}: {e}", r.error_position()))?;
        let after = r.buffer_position() as usize;
        // Every span is sliced later: it must fall on characters (a byte
        // order mark, say, makes quick-xml count differently).
        if !xml.is_char_boundary(before) || !xml.is_char_boundary(after) || after < before {
            return Err(format!("not well-formed XML at byte {before}"));
        }
        match ev {
            Event::Start(e) | Event::Empty(e) => {
                let empty = xml[before..after].trim_end().ends_with("/>");
                let name = String::from_utf8_lossy(e.name().as_ref()).into_owned();
                let mut attrs = Vec::new();
                for a in e.attributes() {
                    let a = a.map_err(|e| format!("bad attribute: {e}"))?;
                    let v = a
                        .unescape_value()
                        .map_err(|e| format!("bad attribute value: {e}"))?;
                    attrs.push((
                        String::from_utf8_lossy(a.key.as_ref()).into_owned(),
                        v.into_owned(),
                    ));
                }
                path.push(name);
                nodes.push(Node {
                    path: path.clone(),
                    attrs,
                    start: before,
                    end: after,
                    inner: (!empty).then_some((after, after)),
                });
                if empty {
                    path.pop();
                } else {
                    open.push(nodes.len() - 1);
                }
            }
            Event::End(_) => {
                let i = open.pop().ok_or("unbalanced end tag")?;
                path.pop();
                let n = &mut nodes[i];
                n.end = after;
                n.inner = Some((n.inner.unwrap().0, before));
            }
            Event::Eof => break,
            _ => {}
        }
    }
    if !open.is_empty() {
        return Err("unclosed element".into());
    }
    Ok(nodes)
}

/// What the domain XML says about xftrace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DomainFacts {
    pub name: String,
    pub domain_type: String,
    pub enrolled: bool,
    pub system_map: Option<String>,
    /// Functions to trace from every start (always-on monitoring), if asked.
    pub monitor: Vec<String>,
    pub file_backed: bool,
    pub shared: bool,
    pub immediate: bool,
    pub discard: bool,
    pub hugepages: bool,
    pub memfd: bool,
    pub balloon: bool,
}

impl DomainFacts {
    /// True when QEMU will keep guest RAM in a shared, preallocated file.
    pub fn backing_ok(&self) -> bool {
        self.file_backed && self.shared && self.immediate && !self.discard && !self.hugepages
    }
}

fn enrollment(nodes: &[Node]) -> Option<&Node> {
    nodes.iter().find(|n| {
        n.path.len() == 3
            && n.path[0] == "domain"
            && n.path[1] == "metadata"
            && n.name().rsplit(':').next() == Some("enrollment")
            && n.attrs
                .iter()
                .any(|(k, v)| k.starts_with("xmlns") && v == NAMESPACE)
    })
}

/// The text of `xml`'s `xftrace:enrollment` element, if it has one.
pub fn enrollment_element(xml: &str) -> Option<String> {
    let nodes = index(xml).ok()?;
    enrollment(&nodes).map(|n| xml[n.start..n.end].to_string())
}

fn child<'a>(nodes: &'a [Node], parent: &Node, local: &str) -> Option<&'a Node> {
    nodes.iter().find(|n| {
        n.start >= parent.start
            && n.end <= parent.end
            && n.path.len() == parent.path.len() + 1
            && n.name().rsplit(':').next() == Some(local)
    })
}

fn children<'a>(nodes: &'a [Node], parent: &'a Node) -> impl Iterator<Item = &'a Node> {
    nodes.iter().filter(move |n| {
        n.start >= parent.start && n.end <= parent.end && n.path.len() == parent.path.len() + 1
    })
}

pub fn facts(xml: &str) -> Result<DomainFacts, String> {
    let nodes = index(xml)?;
    let root = nodes
        .first()
        .filter(|n| n.is(&["domain"]))
        .ok_or("not a libvirt domain XML")?;
    let name = nodes
        .iter()
        .find(|n| n.is(&["domain", "name"]))
        .and_then(|n| n.inner.map(|(a, b)| xml[a..b].trim().to_string()))
        .unwrap_or_default();
    let mb = nodes.iter().find(|n| n.is(&["domain", "memoryBacking"]));
    let mb_child = |local: &str| mb.and_then(|m| child(&nodes, m, local));
    let en = enrollment(&nodes);
    Ok(DomainFacts {
        name,
        domain_type: root.attr("type").unwrap_or("").to_string(),
        enrolled: en.is_some(),
        system_map: en
            .and_then(|e| child(&nodes, e, "system-map"))
            .and_then(|n| n.attr("path"))
            .map(str::to_string),
        monitor: en
            .and_then(|e| child(&nodes, e, "monitor"))
            .and_then(|n| n.attr("functions"))
            .map(|f| f.split_whitespace().map(str::to_string).collect())
            .unwrap_or_default(),
        file_backed: mb_child("source").and_then(|n| n.attr("type")) == Some("file"),
        shared: mb_child("access").and_then(|n| n.attr("mode")) == Some("shared"),
        immediate: mb_child("allocation").and_then(|n| n.attr("mode")) == Some("immediate"),
        discard: mb_child("discard").is_some(),
        hugepages: mb_child("hugepages").is_some(),
        memfd: mb_child("source").and_then(|n| n.attr("type")) == Some("memfd"),
        balloon: nodes
            .iter()
            .find(|n| n.is(&["domain", "devices", "memballoon"]))
            .is_none_or(|n| n.attr("model") != Some("none")),
    })
}

fn escape(s: &str) -> String {
    quick_xml::escape::escape(s).into_owned()
}

/// Apply non-overlapping `(start, end, replacement)` splices.
fn splice(xml: &str, mut edits: Vec<(usize, usize, String)>) -> String {
    edits.sort_by_key(|e| std::cmp::Reverse(e.0));
    let mut out = xml.to_string();
    for (a, b, text) in edits {
        out.replace_range(a..b, &text);
    }
    out
}

/// Indentation of the line `pos` is on, for inserted siblings.
fn indent_at(xml: &str, pos: usize) -> String {
    let line = xml[..pos].rsplit('\n').next().unwrap_or("");
    line.chars().take_while(|c| c.is_whitespace()).collect()
}

/// Insert `text` as a new element after the last of `after` (top-level
/// children of `<domain>`), or as the first child of `<domain>`.
fn insert_top_level(
    xml: &str,
    nodes: &[Node],
    after: &[&str],
    text: &str,
) -> (usize, usize, String) {
    let root = &nodes[0];
    let anchor = nodes
        .iter()
        .filter(|n| n.path.len() == 2 && after.contains(&n.name()))
        .max_by_key(|n| n.end);
    match anchor {
        Some(a) => {
            let ind = indent_at(xml, a.start);
            (a.end, a.end, format!("\n{ind}{text}"))
        }
        None => {
            let at = root.inner.map_or(root.end, |(s, _)| s);
            (at, at, format!("\n  {text}"))
        }
    }
}

/// Why a domain cannot be enrolled.
pub fn refuse_reason(f: &DomainFacts) -> Option<String> {
    if f.domain_type != "kvm" && f.domain_type != "qemu" {
        return Some(format!(
            "domain {} is of type '{}'; xftrace works with QEMU domains (type 'kvm' or 'qemu')",
            f.name, f.domain_type
        ));
    }
    if f.hugepages {
        return Some(format!(
            "domain {} uses hugepage-backed memory, which QEMU keeps in an unlinked hugetlbfs file; remove <hugepages/> to enroll it",
            f.name
        ));
    }
    if f.memfd {
        return Some(format!(
            "domain {} uses a memfd memory source, which has no file xftrace can open; enrolling replaces it with a file: remove <source type='memfd'/> first if that is intended",
            f.name
        ));
    }
    None
}

/// Enroll: the edited XML (identical to `xml` if already enrolled the same
/// way). `monitor` lists functions to trace from every start.
pub fn enroll(xml: &str, system_map: &str, monitor: &[String]) -> Result<String, String> {
    for m in monitor {
        crate::abi::funcs::check_pattern(m)?;
    }
    let f = facts(xml)?;
    if let Some(why) = refuse_reason(&f) {
        return Err(why);
    }
    let already = f.enrolled && f.backing_ok() && !f.balloon;
    if already && f.system_map.as_deref() == Some(system_map) && f.monitor == monitor {
        return Ok(xml.to_string());
    }
    let nodes = index(xml)?;
    let doc = Doc { xml, nodes: &nodes };
    let mut edits = Vec::new();
    let old_backing = doc.memory_backing(&f, &mut edits);
    let old_balloon = doc.balloon(&f, &mut edits);
    doc.enrollment_metadata(system_map, monitor, old_backing, old_balloon, &mut edits);
    Ok(splice(xml, edits))
}

/// A splice: replace `[start, end)` with the text.
type Edit = (usize, usize, String);

/// A domain XML with its element index, for building edits.
struct Doc<'a> {
    xml: &'a str,
    nodes: &'a [Node],
}

impl Doc<'_> {
    fn find(&self, path: &[&str]) -> Option<&Node> {
        self.nodes.iter().find(|n| n.is(path))
    }

    fn text(&self, n: &Node) -> String {
        self.xml[n.start..n.end].to_string()
    }

    /// `<memoryBacking>` with a shared, preallocated file (other children
    /// kept); returns the element as it was.
    fn memory_backing(&self, f: &DomainFacts, edits: &mut Vec<Edit>) -> Option<String> {
        let mb = self.find(&["domain", "memoryBacking"]);
        let ours = ["source", "access", "allocation", "discard"];
        let (ind, inner_ind) = match mb {
            Some(m) => {
                let i = indent_at(self.xml, m.start);
                (i.clone(), format!("{i}  "))
            }
            None => ("  ".to_string(), "    ".to_string()),
        };
        let mut backing = String::from("<memoryBacking>\n");
        for c in mb.into_iter().flat_map(|m| children(self.nodes, m)) {
            if !ours.contains(&c.name()) {
                backing.push_str(&format!("{inner_ind}{}\n", self.text(c)));
            }
        }
        backing.push_str(&format!(
            "{inner_ind}<source type='file'/>\n{inner_ind}<access mode='shared'/>\n{inner_ind}<allocation mode='immediate'/>\n{ind}</memoryBacking>"
        ));
        match mb {
            Some(m) if !f.backing_ok() => edits.push((m.start, m.end, backing)),
            Some(_) => {}
            None => edits.push(insert_top_level(
                self.xml,
                self.nodes,
                &[
                    "memory",
                    "currentMemory",
                    "maxMemory",
                    "vcpu",
                    "name",
                    "uuid",
                ],
                &backing,
            )),
        }
        mb.map(|m| self.text(m))
    }

    /// `<memballoon model='none'/>`; returns the element as it was.
    fn balloon(&self, f: &DomainFacts, edits: &mut Vec<Edit>) -> Option<String> {
        let balloon = self.find(&["domain", "devices", "memballoon"]);
        let none = "<memballoon model='none'/>";
        match (balloon, f.balloon) {
            (Some(b), true) => edits.push((b.start, b.end, none.to_string())),
            (Some(_), false) => {}
            (None, _) => match self.find(&["domain", "devices"]) {
                Some(d) => {
                    let (_, close) = d.inner.unwrap_or((d.end, d.end));
                    let ind = indent_at(self.xml, d.start);
                    edits.push((close, close, format!("  {none}\n{ind}")));
                }
                None => {
                    let root = &self.nodes[0];
                    let close = root.inner.map_or(root.end, |(_, e)| e);
                    edits.push((
                        close,
                        close,
                        format!("  <devices>\n    {none}\n  </devices>\n"),
                    ));
                }
            },
        }
        balloon.map(|b| self.text(b))
    }

    /// The `xftrace:enrollment` metadata: the System.map, monitoring, and
    /// what an earlier enrollment saved as "previous" (kept as it was).
    fn enrollment_metadata(
        &self,
        system_map: &str,
        monitor: &[String],
        old_backing: Option<String>,
        old_balloon: Option<String>,
        edits: &mut Vec<Edit>,
    ) {
        let en = enrollment(self.nodes);
        let prev = |local: &str, fallback: Option<String>| -> String {
            match en.and_then(|e| child(self.nodes, e, local)) {
                Some(n) => self.text(n),
                None => match fallback {
                    Some(v) => format!("<{PREFIX}:{local}>{}</{PREFIX}:{local}>", escape(&v)),
                    None => format!("<{PREFIX}:{local} absent='yes'/>"),
                },
            }
        };
        let element = format!(
            "<{PREFIX}:enrollment xmlns:{PREFIX}=\"{NAMESPACE}\"><{PREFIX}:system-map path=\"{}\"/>{}{}{}</{PREFIX}:enrollment>",
            escape(system_map),
            if monitor.is_empty() {
                String::new()
            } else {
                format!("<{PREFIX}:monitor functions=\"{}\"/>", escape(&monitor.join(" ")))
            },
            prev("previous-memory-backing", old_backing),
            prev("previous-memballoon", old_balloon),
        );
        match (en, self.find(&["domain", "metadata"])) {
            (Some(e), _) => edits.push((e.start, e.end, element)),
            (None, Some(m)) => {
                let ind = indent_at(self.xml, m.start);
                match m.inner {
                    Some((_, close)) => edits.push((close, close, format!("  {element}\n{ind}"))),
                    None => edits.push((
                        m.start,
                        m.end,
                        format!("<metadata>\n{ind}  {element}\n{ind}</metadata>"),
                    )),
                }
            }
            (None, None) => edits.push(insert_top_level(
                self.xml,
                self.nodes,
                &["name", "uuid", "genid", "title", "description"],
                &format!("<metadata>\n    {element}\n  </metadata>"),
            )),
        }
    }
}

/// Undo `enroll`: restore the saved memory backing and balloon and drop the
/// enrollment. Errors if the domain is not enrolled.
pub fn unenroll(xml: &str) -> Result<String, String> {
    let nodes = index(xml)?;
    let f = facts(xml)?;
    let en = enrollment(&nodes)
        .ok_or_else(|| format!("domain {} is not enrolled in xftrace", f.name))?;
    let saved = |local: &str| -> Result<Option<String>, String> {
        let n =
            child(&nodes, en, local).ok_or_else(|| format!("enrollment metadata lacks {local}"))?;
        if n.attr("absent") == Some("yes") {
            return Ok(None);
        }
        let (a, b) = n.inner.unwrap_or((n.end, n.end));
        quick_xml::escape::unescape(&xml[a..b])
            .map(|s| Some(s.into_owned()))
            .map_err(|e| format!("bad saved XML: {e}"))
    };
    let mut edits = Vec::new();
    let restore =
        |edits: &mut Vec<(usize, usize, String)>, node: Option<&Node>, old: Option<String>| {
            if let Some(n) = node {
                match old {
                    Some(text) => edits.push((n.start, n.end, text)),
                    None => {
                        // Remove the element and the whitespace before it.
                        let ws = xml[..n.start].len() - xml[..n.start].trim_end().len();
                        edits.push((n.start - ws, n.end, String::new()));
                    }
                }
            }
        };
    restore(
        &mut edits,
        nodes.iter().find(|n| n.is(&["domain", "memoryBacking"])),
        saved("previous-memory-backing")?,
    );
    restore(
        &mut edits,
        nodes
            .iter()
            .find(|n| n.is(&["domain", "devices", "memballoon"])),
        saved("previous-memballoon")?,
    );
    // Drop the <metadata> wrapper too if the enrollment was all it held.
    let meta = nodes.iter().find(|n| n.is(&["domain", "metadata"]));
    let only_ours = meta.is_some_and(|m| children(&nodes, m).count() == 1);
    restore(&mut edits, if only_ours { meta } else { Some(en) }, None);
    Ok(splice(xml, edits))
}

/// What the `prepare begin` hook does with a domain about to start.
#[derive(Debug, PartialEq, Eq)]
pub enum HookDecision {
    Allow,
    Refuse(String),
}

pub fn prepare_decision(xml: &str) -> HookDecision {
    let f = match facts(xml) {
        Ok(f) => f,
        // Not ours to judge: libvirt validated the XML already.
        Err(_) => return HookDecision::Allow,
    };
    if !f.enrolled || f.backing_ok() {
        return HookDecision::Allow;
    }
    HookDecision::Refuse(format!(
        "xftrace: domain {} is enrolled for tracing but its memory is not a shared, preallocated file \
         (<memoryBacking> needs <source type='file'/>, <access mode='shared'/>, <allocation mode='immediate'/>, \
         no <discard/> or <hugepages/>); run `xftrace enroll {}` to restore it, or `xftrace unenroll {}` to stop tracing it",
        f.name, f.name, f.name
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PLAIN: &str = r#"<domain type='kvm' id='3'>
  <name>web01</name>
  <uuid>0b0e0a57-1c1b-4b0e-9a0f-7e2b6f0e3a11</uuid>
  <memory unit='KiB'>2097152</memory>
  <currentMemory unit='KiB'>2097152</currentMemory>
  <vcpu placement='static'>2</vcpu>
  <os>
    <type arch='x86_64' machine='pc-q35-7.2'>hvm</type>
  </os>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'><!-- keep me -->
      <source file='/var/lib/libvirt/images/web01.qcow2'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <memballoon model='virtio'>
      <address type='pci' domain='0x0000' bus='0x05' slot='0x00' function='0x0'/>
    </memballoon>
  </devices>
</domain>
"#;

    #[test]
    fn enroll_adds_backing_balloon_and_metadata_and_keeps_the_rest() {
        let out = enroll(PLAIN, "/var/lib/xftrace/kernels/6.1/System.map", &[]).unwrap();
        let f = facts(&out).unwrap();
        assert!(f.enrolled && f.backing_ok() && !f.balloon, "{out}");
        assert_eq!(
            f.system_map.as_deref(),
            Some("/var/lib/xftrace/kernels/6.1/System.map")
        );
        // Untouched parts survive byte for byte.
        for keep in [
            "<disk type='file' device='disk'><!-- keep me -->",
            "<uuid>0b0e0a57-1c1b-4b0e-9a0f-7e2b6f0e3a11</uuid>",
            "<type arch='x86_64' machine='pc-q35-7.2'>hvm</type>",
        ] {
            assert!(out.contains(keep), "{out}");
        }
        assert!(out.contains("<memballoon model='none'/>"));
        assert!(!out.contains("<memballoon model='virtio'>\n"));
        assert!(out.contains("<memoryBacking>"));
    }

    #[test]
    fn enroll_is_idempotent_and_unenroll_restores() {
        let once = enroll(PLAIN, "/k/System.map", &[]).unwrap();
        let twice = enroll(&once, "/k/System.map", &[]).unwrap();
        assert_eq!(once, twice);
        let back = unenroll(&twice).unwrap();
        assert_eq!(back, PLAIN, "{back}");
        let f = facts(&back).unwrap();
        assert!(!f.enrolled && f.balloon && !f.file_backed);
        // Always-on monitoring is recorded, and changing it is a change.
        let mon = enroll(
            &once,
            "/k/System.map",
            &["sys_read".into(), "sys_openat".into()],
        )
        .unwrap();
        assert_eq!(facts(&mon).unwrap().monitor, vec!["sys_read", "sys_openat"]);
        assert_eq!(unenroll(&mon).unwrap(), PLAIN);
        // A new System.map updates the enrollment but keeps what it saved.
        let other = enroll(&once, "/k2/System.map", &[]).unwrap();
        assert_eq!(
            facts(&other).unwrap().system_map.as_deref(),
            Some("/k2/System.map")
        );
        assert!(facts(&unenroll(&other).unwrap()).unwrap().balloon);
    }

    #[test]
    fn existing_backing_children_are_kept_and_restored() {
        let xml = PLAIN.replace(
            "  <vcpu",
            "  <memoryBacking>\n    <nosharepages/>\n    <discard/>\n  </memoryBacking>\n  <vcpu",
        );
        let out = enroll(&xml, "/k/System.map", &[]).unwrap();
        assert!(out.contains("<nosharepages/>"), "{out}");
        assert!(!out.contains("<discard/>\n"), "{out}");
        assert!(facts(&out).unwrap().backing_ok());
        let back = unenroll(&out).unwrap();
        assert!(
            back.contains(
                "<memoryBacking>\n    <nosharepages/>\n    <discard/>\n  </memoryBacking>"
            ),
            "{back}"
        );
    }

    #[test]
    fn enroll_monitor_takes_function_names_only() {
        let e = enroll(
            PLAIN,
            "/k/System.map",
            &["sys_read --state-dir=/etc".into()],
        )
        .unwrap_err();
        assert!(e.contains("not a function name"), "{e}");
        assert!(enroll(PLAIN, "/k/System.map", &["__x64_sys_*".into()]).is_ok());
    }

    #[test]
    fn refuses_what_cannot_work() {
        let xen = PLAIN.replace("type='kvm'", "type='xen'");
        assert!(enroll(&xen, "/m", &[]).unwrap_err().contains("type 'xen'"));
        let huge = PLAIN.replace(
            "  <vcpu",
            "  <memoryBacking><hugepages/></memoryBacking>\n  <vcpu",
        );
        assert!(enroll(&huge, "/m", &[]).unwrap_err().contains("hugepage"));
        let memfd = PLAIN.replace(
            "  <vcpu",
            "  <memoryBacking><source type='memfd'/></memoryBacking>\n  <vcpu",
        );
        assert!(enroll(&memfd, "/m", &[]).unwrap_err().contains("memfd"));
        assert!(unenroll(PLAIN).unwrap_err().contains("not enrolled"));
        assert!(enroll("<domain", "/m", &[]).is_err());
    }

    #[test]
    fn hook_allows_plain_and_enrolled_domains_and_refuses_broken_ones() {
        assert_eq!(prepare_decision(PLAIN), HookDecision::Allow);
        let enrolled = enroll(PLAIN, "/k/System.map", &[]).unwrap();
        assert_eq!(prepare_decision(&enrolled), HookDecision::Allow);
        // Someone edited the backing away but left the enrollment.
        let broken = enrolled.replace("<access mode='shared'/>", "<access mode='private'/>");
        match prepare_decision(&broken) {
            HookDecision::Refuse(m) => assert!(m.contains("xftrace enroll web01"), "{m}"),
            d => panic!("{d:?}"),
        }
        assert_eq!(prepare_decision("garbage"), HookDecision::Allow);
    }

    #[test]
    fn metadata_of_others_is_left_alone() {
        let xml = PLAIN.replace(
            "  <memory",
            "  <metadata>\n    <app:info xmlns:app=\"http://example.org/app\">x</app:info>\n  </metadata>\n  <memory",
        );
        let out = enroll(&xml, "/k/System.map", &[]).unwrap();
        assert!(out.contains("<app:info xmlns:app=\"http://example.org/app\">x</app:info>"));
        let back = unenroll(&out).unwrap();
        assert!(back.contains("<app:info"));
        assert!(!facts(&back).unwrap().enrolled);
    }
}
